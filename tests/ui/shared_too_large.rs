use kiln::prelude::*;

#[kernel]
pub fn stage(x: &[f32], out: &mut [f32]) {
    let tile = shared::<[f32; 16384]>();
    tile[thread_idx().x] = x[thread_idx().x];
    sync_threads();
    out[thread_idx().x] = tile[0];
}

fn main() {}
