use kiln::prelude::*;

#[device]
pub fn dot(a: f32, b: f32) -> f32 {
    a * b
}

#[kernel]
pub fn products(x: &[f32], y: &[f32], out: &mut [f32]) {
    let i = thread_idx().x;
    let v = dot(x[i], y[i]);
    out[i] = v;
}

fn main() {}
