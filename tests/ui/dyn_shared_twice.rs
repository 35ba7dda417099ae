use kiln::prelude::*;

#[kernel]
pub fn two_buffers(x: &[f32], out: &mut [f32]) {
    let a = dyn_shared::<f32>();
    let b = dyn_shared::<f32>();
    a[thread_idx().x] = x[thread_idx().x];
    b[thread_idx().x] = x[thread_idx().x];
    sync_threads();
    out[thread_idx().x] = a[0] + b[0];
}

fn main() {}
