use kiln::prelude::*;

#[kernel]
pub fn stop(out: &mut [f32], n: u32) {
    if thread_idx().x >= n {
        break;
    }
    out[thread_idx().x] = 1.0;
}

fn main() {}
