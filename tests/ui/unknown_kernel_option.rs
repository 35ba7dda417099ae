use kiln::prelude::*;

#[kernel(blocks = 128)]
pub fn fill(out: &mut [f32]) {
    out[thread_idx().x] = 1.0;
}

fn main() {}
