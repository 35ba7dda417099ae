use kiln::prelude::*;

#[kernel]
pub fn neighbour(x: &[f32], out: &mut [u32]) {
    let i = thread_idx().x;
    let positive = x[i] > 0.0;
    let other = shfl_xor_sync(0xffff_ffff, positive, 1);
    if other {
        out[i] = 1;
    }
}

fn main() {}
