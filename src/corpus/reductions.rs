//! Reductions: warp shuffles, block reductions in shared memory, row softmax, a prefix scan
//! and warp votes. Also uses device functions from this crate and from `kiln-algorithms`.

use crate::prelude::*;
use kiln_algorithms::common::{warp_max, warp_sum};

/// Sum of `x` into `out[0]`: a warp-shuffle reduction, then one atomic per warp.
#[kernel]
pub fn warp_reduce_sum(x: &[f32], out: &mut [f32], n: u32) {
    let i = block_idx().x * block_dim().x + thread_idx().x;
    let mut v = 0.0f32;
    if i < n {
        v = x[i];
    }
    let mut offset = 16u32;
    while offset > 0 {
        v += shfl_down_sync(0xffff_ffff, v, offset);
        offset /= 2;
    }
    if lane_id() == 0 {
        atomic_add(&mut out[0], v);
    }
}

/// One partial sum per block in shared memory (tree reduction with barriers in a comptime loop).
#[kernel(example(BLOCK = 256))]
pub fn block_reduce_sum<const BLOCK: u32>(x: &[f32], partial: &mut [f32], n: u32) {
    let cache = shared::<[f32; BLOCK]>();
    let t = thread_idx().x;
    let i = block_idx().x * BLOCK * 2 + t;
    let mut v = 0.0f32;
    if i < n {
        v = x[i];
    }
    if i + BLOCK < n {
        v += x[i + BLOCK];
    }
    cache[t] = v;
    sync_threads();
    let mut width = BLOCK / 2;
    while width > 0 {
        if t < width {
            cache[t] += cache[t + width];
        }
        sync_threads();
        width /= 2;
    }
    if t == 0 {
        partial[block_idx().x] = cache[0];
    }
}

/// Numerically stable softmax of each row (one warp per row), accumulating in f32.
#[kernel(example(T = f32), example(T = bf16), example(T = f16))]
pub fn row_softmax<T: Float>(x: &[T], out: &mut [T], rows: u32, cols: u32) {
    let row = block_idx().x * (block_dim().x / 32) + warp_id();
    if row < rows {
        let lane = lane_id();
        let mut m = f32::NEG_INFINITY;
        for j in (lane..cols).step_by(32) {
            m = m.max(x[row * cols + j] as f32);
        }
        m = warp_max(m);
        let mut s = 0.0f32;
        for j in (lane..cols).step_by(32) {
            s += (x[row * cols + j] as f32 - m).exp();
        }
        s = warp_sum(s);
        let inv = s.recip();
        for j in (lane..cols).step_by(32) {
            out[row * cols + j] = ((x[row * cols + j] as f32 - m).exp() * inv) as T;
        }
    }
}

/// Inclusive prefix sum of each block-sized chunk (Hillis–Steele in shared memory).
#[kernel(example(BLOCK = 256))]
pub fn block_scan<const BLOCK: u32>(x: &[u32], out: &mut [u32], n: u32) {
    let buf = shared::<[u32; BLOCK]>();
    let t = thread_idx().x;
    let i = block_idx().x * BLOCK + t;
    buf[t] = if i < n { x[i] } else { 0 };
    sync_threads();
    let mut offset = 1u32;
    while offset < BLOCK {
        let mut add = 0u32;
        if t >= offset {
            add = buf[t - offset];
        }
        sync_threads();
        buf[t] += add;
        sync_threads();
        offset *= 2;
    }
    if i < n {
        out[i] = buf[t];
    }
}

/// Per warp: how many lanes hold a non-zero flag (ballot + popcount), whether all or any do,
/// and the warp's sum of flags through a device function of `kiln-algorithms`.
#[kernel]
pub fn warp_votes(
    flags: &[u32],
    counts: &mut [u32],
    all_any: &mut [u32],
    sums: &mut [u32],
    n: u32,
) {
    let i = block_idx().x * block_dim().x + thread_idx().x;
    let flag = if i < n { flags[i] } else { 0 };
    let ballot = ballot_sync(0xffff_ffff, flag != 0);
    let all = all_sync(0xffff_ffff, flag != 0);
    let any = any_sync(0xffff_ffff, flag != 0);
    let total: u32 = kiln_algorithms::common::warp_sum_u32(flag);
    let warp = i / 32;
    if lane_id() == 0 && warp * 32 < n {
        counts[warp] = ballot.count_ones();
        all_any[warp] = (all as u32) * 2 + any as u32;
        sums[warp] = total;
    }
}

/// Mean of squares of `x` per row with a local generic device function.
#[kernel(example(T = f32), example(T = bf16))]
pub fn row_mean_square<T: Float>(x: &[T], out: &mut [f32], cols: u32) {
    let row = block_idx().x;
    let mut acc = 0.0f32;
    for j in (thread_idx().x..cols).step_by(32) {
        acc += square(x[row * cols + j] as f32);
    }
    acc = warp_sum(acc);
    if thread_idx().x == 0 {
        out[row] = acc / cols as f32;
    }
}

/// `v · v`.
#[device]
pub fn square(v: f32) -> f32 {
    v * v
}
