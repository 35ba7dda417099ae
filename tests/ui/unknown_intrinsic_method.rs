use kiln::prelude::*;

#[kernel]
pub fn apply(x: &[f32], out: &mut [f32]) {
    let i = thread_idx().x;
    out[i] = x[i].foo();
}

fn main() {}
