use kiln::prelude::*;

#[device]
pub fn twice(a: f32) -> f32 {
    a * 2.0
}

#[kernel]
pub fn doubled(x: &[f32], out: &mut [u32]) {
    let i = thread_idx().x;
    out[i] = twice(x[i]);
}

fn main() {}
