use kiln::prelude::*;

#[kernel]
pub fn float(out: &mut [f32]) {
    out[0] = 1.0;
}

fn main() {}
