use kiln::prelude::*;

#[device]
pub fn first(values: &[f32; 4]) -> f32 {
    values[0]
}

#[kernel]
pub fn use_first(out: &mut [f32]) {
    let v: f32 = first(&(out[0] + 1.0));
    out[0] = v;
}

fn main() {}
