//! Memory-bound kernels for measuring bandwidth: a vectorised copy and a vectorised sum,
//! each thread keeping several 16-byte loads in flight.

use crate::prelude::*;

/// `out = x`, 16 bytes per access, four accesses in flight per thread; `n` must be a
/// multiple of the vector width (16 / size_of::<T>()).
#[kernel(example(T = f32), example(T = bf16))]
pub fn stream_copy<T: Float>(x: &[T], out: &mut [T], n: u32) {
    let lanes = 16 / size_of::<T>();
    let vectors = n / lanes;
    let threads = grid_dim().x * block_dim().x;
    let first = block_idx().x * block_dim().x * 4 + thread_idx().x;
    for base in (first..vectors).step_by(threads * 4) {
        let i1 = base + block_dim().x;
        let i2 = i1 + block_dim().x;
        let i3 = i2 + block_dim().x;
        if i3 < vectors {
            let v0 = x.vload(base * lanes);
            let v1 = x.vload(i1 * lanes);
            let v2 = x.vload(i2 * lanes);
            let v3 = x.vload(i3 * lanes);
            out.vstore(base * lanes, v0);
            out.vstore(i1 * lanes, v1);
            out.vstore(i2 * lanes, v2);
            out.vstore(i3 * lanes, v3);
        } else {
            for i in (base..vectors).step_by(block_dim().x) {
                out.vstore(i * lanes, x.vload(i * lanes));
            }
        }
    }
}

/// Adds every element of `x` into `total[0]` (f32 accumulation, one atomic per warp);
/// `n` must be a multiple of 4.
#[kernel]
pub fn stream_sum(x: &[f32], total: &mut [f32], n: u32) {
    let vectors = n / 4;
    let threads = grid_dim().x * block_dim().x;
    let first = block_idx().x * block_dim().x * 4 + thread_idx().x;
    let mut acc0 = 0.0f32;
    let mut acc1 = 0.0f32;
    for base in (first..vectors).step_by(threads * 4) {
        let i1 = base + block_dim().x;
        let i2 = i1 + block_dim().x;
        let i3 = i2 + block_dim().x;
        if i3 < vectors {
            let v0 = x.vload(base * 4);
            let v1 = x.vload(i1 * 4);
            let v2 = x.vload(i2 * 4);
            let v3 = x.vload(i3 * 4);
            acc0 += (v0[0] + v0[1]) + (v0[2] + v0[3]) + (v1[0] + v1[1]) + (v1[2] + v1[3]);
            acc1 += (v2[0] + v2[1]) + (v2[2] + v2[3]) + (v3[0] + v3[1]) + (v3[2] + v3[3]);
        } else {
            for i in (base..vectors).step_by(block_dim().x) {
                let v = x.vload(i * 4);
                acc0 += (v[0] + v[1]) + (v[2] + v[3]);
            }
        }
    }
    let mut acc = acc0 + acc1;
    for k in 0..5u32 {
        acc += shfl_xor_sync(0xffff_ffff, acc, 16u32 >> k);
    }
    if lane_id() == 0 {
        atomic_add(&mut total[0], acc);
    }
}
