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

/// Threads per block of the decoder's data-movement kernels below (one element each).
pub const MOVE_THREADS: u32 = 256;

/// Splits a QKV projection's f32 rows `qkv` `[≥ tokens, (H + 2·H_kv)·dim]` (query heads,
/// then key heads, then value heads, as the column-sharded weight is laid out) into
/// token-major `q` `[tokens, H, dim]`, `k` and `v` `[tokens, H_kv, dim]`, rounded to `T`.
/// Rows past `tokens` (the GEMM's padding to 16) are not read. Grid
/// `(⌈tokens·(H + 2·H_kv)·dim / 256⌉)`, 256 threads.
#[kernel(threads = 256, example(T = bf16), example(T = f16))]
pub fn qkv_split<T: Float>(
    qkv: &[f32],
    q: &mut [T],
    k: &mut [T],
    v: &mut [T],
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    dim: u32,
) {
    let i = block_idx().x * 256 + thread_idx().x;
    let width = (heads + 2 * kv_heads) * dim;
    if i < tokens * width {
        let t = i / width;
        let c = i % width;
        let x = qkv[i] as T;
        let qw = heads * dim;
        let kw = kv_heads * dim;
        if c < qw {
            q[t * qw + c] = x;
        } else if c < qw + kw {
            k[t * kw + c - qw] = x;
        } else {
            v[t * kw + c - qw - kw] = x;
        }
    }
}

/// Appends rows to per-sequence contiguous KV caches `k_cache`, `v_cache`
/// `[slots, cap, H_kv, dim]` (the layout flash-decoding reads): row `r` of `k_new`, `v_new`
/// (`[rows, H_kv, dim]`) goes to sequence `slot[r]` at position `pos[r]`, and the entry's
/// size `counts[(slot·cap + pos)·H_kv + h]` becomes 1, so the masked decode sees it (0 masks
/// a position out). One launch serves a decode step (one row per sequence) or a prompt (all
/// its rows, one slot). Grid `(⌈rows·H_kv·dim / 256⌉)`, 256 threads.
#[kernel(threads = 256, example(T = bf16), example(T = f16))]
pub fn kv_append<T: Float>(
    k_new: &[T],
    v_new: &[T],
    k_cache: &mut [T],
    v_cache: &mut [T],
    counts: &mut [f32],
    slot: &[u32],
    pos: &[u32],
    rows: u32,
    kv_heads: u32,
    dim: u32,
    cap: u32,
) {
    let i = block_idx().x * 256 + thread_idx().x;
    let width = kv_heads * dim;
    if i < rows * width {
        let r = i / width;
        let e = i % width;
        let entry = slot[r] as u64 * cap as u64 + pos[r] as u64;
        let at = entry * width as u64 + e as u64;
        k_cache[at] = k_new[i];
        v_cache[at] = v_new[i];
        if e % dim == 0 {
            counts[entry * kv_heads as u64 + (e / dim) as u64] = 1.0f32;
        }
    }
}

/// Continuous batching's compaction: moves sequence slot `from` of the caches
/// `[slots, cap, H_kv, dim]` to slot `to` — its first `rows` positions of keys and values,
/// and all `cap` positions of the entry sizes `counts` `[slots, cap, H_kv]` (so the zeros
/// that mask its unused positions move too). `from ≠ to`. Grid `(⌈cap·H_kv·dim / 256⌉)`,
/// 256 threads.
#[kernel(threads = 256, example(T = bf16), example(T = f16))]
pub fn kv_move<T: Float>(
    k_cache: &mut [T],
    v_cache: &mut [T],
    counts: &mut [f32],
    from: u32,
    to: u32,
    rows: u32,
    kv_heads: u32,
    dim: u32,
    cap: u32,
) {
    let i = block_idx().x * 256 + thread_idx().x;
    let width = kv_heads * dim;
    if i < cap * width {
        let p = i / width;
        let e = i % width;
        let per_slot = cap as u64 * width as u64;
        let src = from as u64 * per_slot + i as u64;
        let dst = to as u64 * per_slot + i as u64;
        if p < rows {
            k_cache[dst] = k_cache[src];
            v_cache[dst] = v_cache[src];
        }
        if e % dim == 0 {
            let h = (e / dim) as u64;
            let c_src = (from as u64 * cap as u64 + p as u64) * kv_heads as u64 + h;
            let c_dst = (to as u64 * cap as u64 + p as u64) * kv_heads as u64 + h;
            counts[c_dst] = counts[c_src];
        }
    }
}

/// Token-major `[tokens, heads, dim]` to head-major `[heads, tokens, dim]` (`to_heads`, what
/// flash prefill reads), or back (`!to_heads`: `x` head-major, `out` token-major). Grid
/// `(⌈tokens·heads·dim / 256⌉)`, 256 threads.
#[kernel(threads = 256, example(T = bf16), example(T = f16))]
pub fn transpose_heads<T: Float>(
    x: &[T],
    out: &mut [T],
    tokens: u32,
    heads: u32,
    dim: u32,
    to_heads: bool,
) {
    let i = block_idx().x * 256 + thread_idx().x;
    if i < tokens * heads * dim {
        let d = i % dim;
        if to_heads {
            let h = (i / dim) % heads;
            let t = i / (dim * heads);
            out[(h * tokens + t) * dim + d] = x[i];
        } else {
            let t = (i / dim) % tokens;
            let h = i / (dim * tokens);
            out[(t * heads + h) * dim + d] = x[i];
        }
    }
}

/// A block of columns out of row-major `src` (`src_cols` wide): `dst[r, c] =
/// src[row0 + r, col0 + c]` for `r < rows_valid`, 0 below (`dst` is `[len / cols, cols]`):
/// the pieces of a row-sharded projection's input, padded to the GEMM's 16 rows, and the
/// last prompt row for the LM head. Grid `(⌈dst.len() / 256⌉)`, 256 threads.
#[kernel(threads = 256, example(T = bf16), example(T = f16))]
pub fn take_cols<T: Float>(
    src: &[T],
    dst: &mut [T],
    rows_valid: u32,
    row0: u32,
    src_cols: u32,
    col0: u32,
    cols: u32,
) {
    let i = block_idx().x * 256 + thread_idx().x;
    if i < dst.len() {
        let r = i / cols;
        let c = i % cols;
        if r < rows_valid {
            dst[i] = src[(row0 + r) * src_cols + col0 + c];
        } else {
            dst[i] = 0.0f32 as T;
        }
    }
}

/// The sum of `n` ∈ {1, 2, 4} f32 partials in a fixed pairwise order, rounded to `T`:
/// value `j` of part `p` is `parts_p[p·stride + j]` (separate buffers: `stride` 0; one
/// gathered buffer passed as every part: `stride` = `len`), and `out[j]` is `a`, `a + b` or
/// `(a + b) + (c + d)`. Row-sharded projections are summed by this tree over a fixed number
/// of K pieces, locally over a rank's pieces and then over the gathered ranks', so every
/// tensor-parallel degree adds the same numbers in the same order (`n` = 1 is a cast).
/// Grid `(⌈len / 256⌉)`, 256 threads.
#[kernel(threads = 256, example(T = bf16), example(T = f32))]
pub fn tree_sum<T: Float>(
    p0: &[f32],
    p1: &[f32],
    p2: &[f32],
    p3: &[f32],
    out: &mut [T],
    n: u32,
    len: u32,
    stride: u32,
) {
    let j = block_idx().x * 256 + thread_idx().x;
    if j < len {
        let a = p0[j];
        let mut s = a;
        if n == 2 {
            s = a + p1[stride + j];
        } else if n == 4 {
            let ab = a + p1[stride + j];
            let cd = p2[2 * stride + j] + p3[3 * stride + j];
            s = ab + cd;
        }
        out[j] = s as T;
    }
}

/// Token embedding: `out[r] = table[ids[r]]` (rows of `hidden`) for `r < rows_valid`, 0 for
/// the padding rows after. Grid `(⌈out.len() / 256⌉)`, 256 threads.
#[kernel(threads = 256, example(T = bf16), example(T = f16))]
pub fn embed<T: Float>(table: &[T], ids: &[u32], out: &mut [T], rows_valid: u32, hidden: u32) {
    let i = block_idx().x * 256 + thread_idx().x;
    if i < out.len() {
        let r = i / hidden;
        if r < rows_valid {
            out[i] = table[ids[r] as u64 * hidden as u64 + (i % hidden) as u64];
        } else {
            out[i] = 0.0f32 as T;
        }
    }
}

/// Threads per block of [`argmax_rows`] (one row per block).
pub const ARGMAX_THREADS: u32 = 256;

/// Greedy decoding: for each of `rows` rows (block `r`) of logits laid out as `shards`
/// vocabulary shards `[shards, rows, cols]` (one LM-head shard per tensor-parallel rank,
/// gathered), the index `s·cols + j` of the largest value, ties to the lowest index, into
/// `best[r]`, and the value into `best_val[r]`. NaNs are never chosen: a row of NaNs gives
/// `u32::MAX`. Grid `(rows)`, 256 threads.
#[kernel(threads = 256)]
pub fn argmax_rows(
    logits: &[f32],
    best: &mut [u32],
    best_val: &mut [f32],
    shards: u32,
    rows: u32,
    cols: u32,
) {
    let vals = shared::<[f32; 256]>();
    let idxs = shared::<[u32; 256]>();
    let t = thread_idx().x;
    let r = block_idx().x;
    let mut bv = f32::NEG_INFINITY;
    let mut bi = u32::MAX;
    for s in 0..shards {
        for j in (t..cols).step_by(256) {
            let v = logits[(s * rows + r) * cols + j];
            let idx = s * cols + j;
            if v > bv || (v == bv && idx < bi) {
                bv = v;
                bi = idx;
            }
        }
    }
    vals[t] = bv;
    idxs[t] = bi;
    sync_threads();
    for level in 0..8u32 {
        let half = 128u32 >> level;
        if t < half {
            let v = vals[t + half];
            let idx = idxs[t + half];
            let cv = vals[t];
            if v > cv || (v == cv && idx < idxs[t]) {
                vals[t] = v;
                idxs[t] = idx;
            }
        }
        sync_threads();
    }
    if t == 0 {
        best[r] = idxs[0];
        best_val[r] = vals[0];
    }
}

/// Zeroes the entry sizes `counts` `[slots, cap, H_kv]` of sequence slot `slot`: before a
/// prompt is written into a slot another sequence used, so none of that one's positions is
/// attended. Grid `(⌈cap·H_kv / 256⌉)`, 256 threads.
#[kernel(threads = 256)]
pub fn clear_counts(counts: &mut [f32], slot: u32, cap: u32, kv_heads: u32) {
    let i = block_idx().x * 256 + thread_idx().x;
    if i < cap * kv_heads {
        counts[slot as u64 * (cap * kv_heads) as u64 + i as u64] = 0.0f32;
    }
}

/// Rows of `src` picked by a table, a block of columns each, packed: `dst[t, c] =
/// src[rows[t]·src_cols + col0 + c]` for `t < n_rows`, `c < cols`. PAT's KV migration packs
/// with it, per layer, the positions of every migrating sequence (`rows` = `slot·cap + pos`
/// of the cache `[slots·cap, H_kv·dim]`) restricted to the heads one new owner takes, so each
/// sequence's part for that owner is one contiguous window to send. Grid
/// `(⌈n_rows·cols / 256⌉)`, 256 threads.
#[kernel(threads = 256, example(T = bf16), example(T = f16))]
pub fn gather_rows<T: Float>(
    src: &[T],
    dst: &mut [T],
    rows: &[u32],
    n_rows: u32,
    src_cols: u32,
    col0: u32,
    cols: u32,
) {
    let i = block_idx().x * 256 + thread_idx().x;
    if i < n_rows * cols {
        let t = i / cols;
        let c = i % cols;
        dst[i] = src[rows[t] as u64 * src_cols as u64 + (col0 + c) as u64];
    }
}
