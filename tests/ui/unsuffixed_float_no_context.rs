use kiln::prelude::*;

#[kernel]
pub fn fill(out: &mut [f32]) {
    let half = 0.5;
    out[thread_idx().x] = half;
}

fn main() {}
