use kiln::prelude::*;

#[kernel]
pub fn k(out: &mut [f32]) {
    for j in 0..4u32 {
        if thread_idx().x < 3 {
            continue;
        }
        sync_threads();
        out[j] = 1.0;
    }
}

fn main() {}
