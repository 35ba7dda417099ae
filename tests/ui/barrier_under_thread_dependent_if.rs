use kiln::prelude::*;

#[kernel]
pub fn half_block(out: &mut [f32]) {
    if thread_idx().x < 16 {
        sync_threads();
    }
    out[thread_idx().x] = 1.0;
}

fn main() {}
