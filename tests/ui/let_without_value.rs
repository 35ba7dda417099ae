use kiln::prelude::*;

#[kernel]
pub fn k(out: &mut [f32]) {
    let a: f32;
    out[0] = a;
}

fn main() {}
