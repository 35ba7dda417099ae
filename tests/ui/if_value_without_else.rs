use kiln::prelude::*;

#[kernel]
pub fn clamp(x: &[f32], out: &mut [f32]) {
    let i = thread_idx().x;
    out[i] = if x[i] > 0.0 { x[i] };
}

fn main() {}
