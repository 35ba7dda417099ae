use kiln::prelude::*;

#[kernel]
pub fn stage(x: &[f32], out: &mut [f32], groups: u32) {
    let tile = shared::<[f32; 256]>();
    cp_async(&mut tile[thread_idx().x * 4], &x[thread_idx().x * 4]);
    cp_async_commit();
    cp_async_wait::<groups>();
    sync_threads();
    out[thread_idx().x] = tile[thread_idx().x];
}

fn main() {}
