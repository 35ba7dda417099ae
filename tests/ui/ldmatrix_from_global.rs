use kiln::prelude::*;

#[kernel]
pub fn direct_load(a: &[bf16], out: &mut [u32]) {
    let lane = lane_id();
    let fa = ldmatrix_x4::<bf16>(&a[lane * 16]);
    out[lane] = fa[0];
}

fn main() {}
