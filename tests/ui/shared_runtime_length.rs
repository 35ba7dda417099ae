use kiln::prelude::*;

#[kernel]
pub fn stage(x: &[f32], out: &mut [f32], n: u32) {
    let tile = shared::<[f32; n]>();
    tile[thread_idx().x] = x[thread_idx().x];
    sync_threads();
    out[thread_idx().x] = tile[0];
}

fn main() {}
