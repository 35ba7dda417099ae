//! The element-wise parts of PAT's decoder (a LLaMA-style layer made of Kiln kernels; the
//! projections are grouped GEMMs of one group, attention the flash kernels): the residual
//! add fused with RMSNorm, rotary position embeddings, and the SwiGLU gate.

use kiln::prelude::*;
use kiln_dsl::kernel;

/// Threads per block of [`add_rms_norm`] (one token per block).
pub const NORM_THREADS: u32 = 256;

/// For token `t` (block `t`): with `add`, `residual[t] += x[t]` first (stored back, as `T`);
/// then `y[t] = residual[t] / √(mean(residual[t]²) + eps) · w` — the pre-norm of a LLaMA
/// layer with the residual stream updated in the same pass. Rows of `h` elements (`h` a
/// multiple of 8, at most 8192); sums in f32, in a fixed order. Grid `(tokens)`, 256 threads.
#[kernel(threads = 256, example(T = bf16), example(T = f16))]
pub fn add_rms_norm<T: Float>(
    x: &[T],
    residual: &mut [T],
    w: &[T],
    y: &mut [T],
    h: u32,
    eps: f32,
    add: bool,
) {
    let part = shared::<[f32; 8]>();
    let t = thread_idx().x;
    let row = block_idx().x * h;
    let mut vals = [[0.0f32; 8]; 4];
    let mut sq = 0.0f32;
    for r in 0..4u32 {
        let c = (t + r * 256) * 8;
        if c < h {
            let mut v = residual.vload(row + c);
            if add {
                let a = x.vload(row + c);
                for e in 0..8u32 {
                    v[e] = ((v[e] as f32) + (a[e] as f32)) as T;
                }
                residual.vstore(row + c, v);
            }
            for e in 0..8u32 {
                let f = v[e] as f32;
                vals[r][e] = f;
                sq += f * f;
            }
        }
    }
    let warp: f32 = crate::common::warp_sum(sq);
    if lane_id() == 0 {
        part[warp_id()] = warp;
    }
    sync_threads();
    let mut total = 0.0f32;
    for i in 0..8u32 {
        total += part[i];
    }
    let inv = (total / h as f32 + eps).rsqrt();
    for r in 0..4u32 {
        let c = (t + r * 256) * 8;
        if c < h {
            let g = w.vload(c);
            let mut out = g;
            for e in 0..8u32 {
                out[e] = (vals[r][e] * inv * (g[e] as f32)) as T;
            }
            y.vstore(row + c, out);
        }
    }
}

/// Rotary position embedding in place, the `rotate_half` convention of LLaMA: for each of
/// the `heads` heads of token `t` (rows `[tokens, heads, D]` of `x`) at position `pos[t]`,
/// channel pairs `(i, i + D/2)` rotate by `pos · base^(−2i/D)`. Angles in f32. Grid
/// `(⌈tokens·heads·D/2 / 256⌉)`, 256 threads, one pair each.
#[kernel(threads = 256, example(T = bf16, D = 128), example(T = f16, D = 64))]
pub fn rope<T: Float, const D: u32>(x: &mut [T], pos: &[u32], tokens: u32, heads: u32, base: f32) {
    let i = block_idx().x * 256 + thread_idx().x;
    if i < tokens * heads * (D / 2) {
        let pair = i % (D / 2);
        let row = i / (D / 2);
        let tok = row / heads;
        let angle = pos[tok] as f32 * base.powf(-2.0f32 * pair as f32 / D as f32);
        let s = angle.sin();
        let c = angle.cos();
        let at = row * D + pair;
        let a = x[at] as f32;
        let b = x[at + D / 2] as f32;
        x[at] = (a * c - b * s) as T;
        x[at + D / 2] = (a * s + b * c) as T;
    }
}

/// The SwiGLU gate: `out[t, j] = silu(gu[t, j]) · gu[t, f + j]` for rows `gu` `[tokens, 2f]`
/// (gate then up, as one projection writes them) into `out` `[tokens, f]`. Grid
/// `(⌈tokens·f / 256⌉)`, 256 threads.
#[kernel(threads = 256, example(T = bf16), example(T = f16))]
pub fn swiglu<T: Float>(gu: &[T], out: &mut [T], tokens: u32, f: u32) {
    let i = block_idx().x * 256 + thread_idx().x;
    if i < tokens * f {
        let t = i / f;
        let j = i % f;
        let g = gu[t * 2 * f + j] as f32;
        let u = gu[t * 2 * f + f + j] as f32;
        out[i] = (g / (1.0f32 + (-g).exp()) * u) as T;
    }
}
