use kiln::prelude::*;

#[kernel]
pub fn flags(x: &[u32], out: &mut [u32]) {
    let i = thread_idx().x;
    let set = x[i] as bool;
    if set {
        out[i] = 1;
    }
}

fn main() {}
