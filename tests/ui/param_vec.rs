use kiln::prelude::*;

#[kernel]
pub fn fill(out: &mut [f32], values: Vec<f32>) {
    out[0] = 1.0;
}

fn main() {}
