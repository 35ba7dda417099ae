use kiln::prelude::*;

#[kernel]
pub fn fill(out: &mut [f32]) {
    out[thread_idx().x] = 1;
}

fn main() {}
