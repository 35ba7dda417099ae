use kiln::prelude::*;

#[device]
pub fn first(values: &[f32; 4]) -> f32 {
    values[0]
}

#[kernel]
pub fn use_first(out: &mut [f32]) {
    let x = 2.0f32;
    let v: f32 = first(&x);
    out[0] = v;
}

fn main() {}
