use kiln::prelude::*;

#[kernel]
pub fn tiles<const TILE: u32>(out: &mut [u32]) {
    TILE = 64;
    out[thread_idx().x] = TILE;
}

fn main() {}
