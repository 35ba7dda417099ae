use kiln::prelude::*;

#[kernel]
pub fn tile_f32(a: &[f32], out: &mut [f32]) {
    let tile = shared::<[[f32; 16]; 16]>();
    let lane = lane_id();
    tile[lane % 16][lane / 16] = a[lane];
    sync_threads();
    let fa = ldmatrix_x4::<f32>(&tile[lane % 16][lane / 16 * 8]);
    let acc = mma(fa, ldmatrix_x2::<f32>(&tile[lane % 16][0]), frag_c_zero());
    out[lane] = acc[0];
}

fn main() {}
