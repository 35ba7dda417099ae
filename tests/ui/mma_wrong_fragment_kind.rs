use kiln::prelude::*;

#[kernel]
pub fn swapped(a: &[bf16], out: &mut [f32]) {
    let tile = shared::<[[bf16; 16]; 16]>();
    let lane = lane_id();
    for i in (lane..256).step_by(32) {
        tile[i / 16][i % 16] = a[i];
    }
    sync_threads();
    let fa = ldmatrix_x4::<bf16>(&tile[lane % 16][lane / 16 * 8]);
    let fb = ldmatrix_x2_trans::<bf16>(&tile[lane % 16][0]);
    let acc = mma(fb, fa, frag_c_zero());
    out[lane] = acc[0];
}

fn main() {}
