use kiln::prelude::*;

#[device]
pub fn dot(a: f32, b: f32) -> f32 {
    a * b
}

#[kernel]
pub fn products(x: &[f32], k: &[u32], out: &mut [f32]) {
    let i = thread_idx().x;
    let v: f32 = dot(x[i], k[i]);
    out[i] = v;
}

fn main() {}
