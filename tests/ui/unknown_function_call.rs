use kiln::prelude::*;

#[kernel]
pub fn apply(x: &[f32], out: &mut [f32]) {
    let i = thread_idx().x;
    let y: f32 = frobnicate(x[i]);
    out[i] = y;
}

fn main() {}
