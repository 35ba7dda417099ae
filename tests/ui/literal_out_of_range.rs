use kiln::prelude::*;

#[kernel]
pub fn fill(out: &mut [u8]) {
    out[thread_idx().x] = 300u8;
}

fn main() {}
