use kiln::prelude::*;

#[kernel]
pub fn widen(x: &[u32], out: &mut [f32]) {
    let i = thread_idx().x;
    let v: f32 = x[i];
    out[i] = v;
}

fn main() {}
