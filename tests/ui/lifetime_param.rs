use kiln::prelude::*;

#[kernel]
pub fn copy<'a>(x: &[f32], out: &mut [f32]) {
    out[thread_idx().x] = x[thread_idx().x];
}

fn main() {}
