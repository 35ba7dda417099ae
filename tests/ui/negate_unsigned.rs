use kiln::prelude::*;

#[kernel]
pub fn flip(x: &[u32], out: &mut [u32]) {
    let i = thread_idx().x;
    out[i] = -x[i];
}

fn main() {}
