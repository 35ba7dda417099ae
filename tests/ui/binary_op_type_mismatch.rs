use kiln::prelude::*;

#[kernel]
pub fn scale(x: &[f32], out: &mut [f32], n: u32) {
    let i = thread_idx().x;
    out[i] = x[i] * n;
}

fn main() {}
