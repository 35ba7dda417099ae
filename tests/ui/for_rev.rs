use kiln::prelude::*;

#[kernel]
pub fn backwards(x: &[f32], out: &mut [f32], n: u32) {
    for i in (0..n).rev() {
        out[i] = x[i];
    }
}

fn main() {}
