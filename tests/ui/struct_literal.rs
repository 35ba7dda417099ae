use kiln::prelude::*;

pub struct Pair {
    pub a: f32,
    pub b: f32,
}

#[kernel]
pub fn pair(x: &[f32], out: &mut [f32]) {
    let p = Pair { a: x[0], b: x[1] };
    out[0] = x[0];
}

fn main() {}
