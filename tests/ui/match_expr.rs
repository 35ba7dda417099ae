use kiln::prelude::*;

#[kernel]
pub fn pick(x: &[u32], out: &mut [u32]) {
    let i = thread_idx().x;
    out[i] = match x[i] {
        0 => 1,
        _ => 2,
    };
}

fn main() {}
