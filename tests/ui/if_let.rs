use kiln::prelude::*;

#[kernel]
pub fn first(x: &[u32], out: &mut [u32]) {
    if let 0 = x[0] {
        out[0] = 1;
    }
}

fn main() {}
