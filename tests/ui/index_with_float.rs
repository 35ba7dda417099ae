use kiln::prelude::*;

#[kernel]
pub fn gather(x: &[f32], pos: &[f32], out: &mut [f32]) {
    let i = thread_idx().x;
    out[i] = x[pos[i]];
}

fn main() {}
