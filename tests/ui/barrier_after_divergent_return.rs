use kiln::prelude::*;

#[kernel]
pub fn stage(x: &[f32], out: &mut [f32], n: u32) {
    let tile = shared::<[f32; 256]>();
    let i = block_idx().x * block_dim().x + thread_idx().x;
    if i >= n {
        return;
    }
    tile[thread_idx().x] = x[i];
    sync_threads();
    out[i] = tile[255 - thread_idx().x];
}

fn main() {}
