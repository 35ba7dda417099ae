use kiln::prelude::*;

#[kernel]
pub fn pair(x: &[f32], out: &mut [f32]) {
    let p = (x[0], x[1]);
    out[0] = x[0];
}

fn main() {}
