use kiln::prelude::*;

#[kernel]
pub fn sum(x: &[f32], out: &mut [f32], n: u32) {
    let acc = 0.0f32;
    for j in 0..n {
        acc = acc + x[j];
    }
    out[0] = acc;
}

fn main() {}
