//! HATA's hash encoding: bit `j` of a vector `x` is `x·W[:, j] > 0` (a learned projection
//! to `RBIT` bits), packed into `RBIT / 32` u32 words, plus the vector's L2 norm.
//!
//! Keys may be *centred* first: `x − μ`, with `μ` the mean key of their sequence and KV head
//! ([`key_sum_partial`] + [`key_mean`] at prefill). A query's logits `q·k` and `q·(k − μ)`
//! differ by `q·μ`, the same for every key, so the ranking HATA approximates is unchanged,
//! while the component every key shares (large-magnitude channels of real K caches) no
//! longer decides most sign bits: measured on the planted-structure workload, centring
//! raises the recall of trained codes from 0.25 to 0.43 (S = 8K, D = 128, 1.6%; see
//! `hata::fidelity`).

use kiln_dsl::kernel;

use crate::common::warp_sum;
use kiln::prelude::*;
use kiln::LaunchConfig;

/// Vectors one warp of [`hash_encode`] encodes together at prefill (each `W` value it loads
/// serves all of them).
pub const VECTORS_PER_WARP: u32 = 8;
/// Warps per block of [`hash_encode`].
pub const WARPS: u32 = 4;

/// Encodes `n` vectors of `D` elements, many at a time: a prefill's keys, or the keys a
/// cache holds without codes yet. Vector `i` is read from row
/// `(i / rows_per_batch)·in_rows_per_batch + in_row0 + i % rows_per_batch` of `x` (rows of
/// `D`: `in_rows_per_batch = rows_per_batch`, `in_row0 = 0` for a packed input) and uses the
/// weights of KV head `h = (i / group) % kv_heads` (`w` is `[kv_heads, D, RBIT]`, f32); its
/// code goes to output row `o = (i / rows_per_batch)·out_rows_per_batch + out_row0 + i %
/// rows_per_batch` (words `codes[o·RBIT/32 ..]`), its norm to `norms[o]` when `write_norms`. With `center`, vector
/// `i` is encoded (and its norm taken) as `x − μ`, `μ = mu[((i / rows_per_batch)·kv_heads +
/// h)·D ..]` (`mu` is `[batch, kv_heads, D]`; unread without `center`).
///
/// Grid `(⌈n / kv_heads / (4·V)⌉, kv_heads)`, 128 threads: warp `w` of block `(x, h)` takes
/// the `V` vectors `m = V(4x + w) ..` among those of head `h` (the m-th vector of head `h` is
/// `i = ((m / group)·kv_heads + h)·group + m % group`). Lane `l` owns columns `l + 32·c`; the
/// column bits of the warp are gathered with `ballot_sync` into whole words.
#[kernel(
    threads = 128,
    example(T = bf16, D = 128, RBIT = 128, V = 8),
    example(T = f16, D = 64, RBIT = 256, V = 8)
)]
pub fn hash_encode<T: Float, const D: u32, const RBIT: u32, const V: u32>(
    x: &[T],
    w: &[f32],
    mu: &[f32],
    center: bool,
    codes: &mut [u32],
    norms: &mut [f32],
    n: u32,
    kv_heads: u32,
    group: u32,
    rows_per_batch: u32,
    in_rows_per_batch: u32,
    in_row0: u32,
    out_rows_per_batch: u32,
    out_row0: u32,
    write_norms: bool,
) {
    let lane = lane_id();
    let h = block_idx().y;
    let per_head = n / kv_heads;
    let m0 = (block_idx().x * 4 + warp_id()) * V;
    if m0 >= per_head {
        return;
    }
    // which vectors this warp encodes (a missing one repeats the first, and is not written)
    let mut rows = [0u32; V];
    // where each vector's centre starts in `mu`, and where it starts in `x`
    let mut centre = [0u32; V];
    let mut src = [0u32; V];
    for k in 0..V {
        let m = (m0 + k).min(per_head - 1);
        rows[k] = ((m / group) * kv_heads + h) * group + m % group;
        let seq = rows[k] / rows_per_batch;
        centre[k] = (seq * kv_heads + h) * D;
        src[k] = (seq * in_rows_per_batch + in_row0 + rows[k] % rows_per_batch) * D;
    }
    let mut acc = [[0.0f32; RBIT / 32]; V];
    let mut sq = [0.0f32; V];
    let w_head = h * D * RBIT;
    for d0 in (0..D).step_by(8) {
        for k in 0..V {
            let v = x.vload(src[k] + d0);
            for e in 0..8u32 {
                let mut xv = v[e] as f32;
                if center {
                    xv -= mu[centre[k] + d0 + e];
                }
                sq[k] += xv * xv;
                for c in 0..RBIT / 32 {
                    acc[k][c] += xv * w[w_head + (d0 + e) * RBIT + c * 32 + lane];
                }
            }
        }
    }
    for k in 0..V {
        if m0 + k < per_head {
            let i = rows[k];
            let o = (i / rows_per_batch) * out_rows_per_batch + out_row0 + i % rows_per_batch;
            for c in 0..RBIT / 32 {
                let word = ballot_sync(0xffff_ffff, acc[k][c] > 0.0);
                if lane == 0 {
                    codes[o * (RBIT / 32) + c] = word;
                }
            }
            if write_norms && lane == 0 {
                norms[o] = sq[k].sqrt();
            }
        }
    }
}

/// The launch shape of [`hash_encode`] over `n` vectors of `kv_heads` heads.
pub fn launch_config(n: u32, kv_heads: u32) -> LaunchConfig {
    LaunchConfig {
        grid: (
            (n / kv_heads).div_ceil(VECTORS_PER_WARP * WARPS),
            kv_heads,
            1,
        ),
        block: (WARPS * 32, 1, 1),
        dyn_shared_bytes: 0,
    }
}

/// Threads per block of [`hash_encode_group`].
pub const GROUP_THREADS: u32 = 512;
/// Code bits (projection columns) one block of [`hash_encode_group`] computes.
pub const GROUP_COLUMNS: u32 = 64;

/// The launch shape of [`hash_encode_group`] over `batch` sequences of `kv_heads` groups
/// with `rbit`-bit codes.
pub fn group_launch(kv_heads: u32, batch: u32, rbit: u32) -> LaunchConfig {
    LaunchConfig {
        grid: (kv_heads, batch, rbit / GROUP_COLUMNS),
        block: (GROUP_THREADS, 1, 1),
        dyn_shared_bytes: 0,
    }
}

/// Encodes the few vectors of a decode step: the `G` query heads of each GQA group (`G =
/// heads / kv_heads`), or the new key of each KV head (`G = 1`, with its norm). Block
/// `(h, b, z)` computes code bits `[64z, 64z + 64)` of vectors `i = (b·kv_heads + h)·G + g`,
/// `g < G` (at `x[i·D ..]`), with `W[h]` (`w` is `[kv_heads, D, RBIT]`, f32), so each weight
/// it loads serves the whole group; output rows and `write_norms` as in [`hash_encode`].
/// With `center` (new keys, `G = 1`), vector `i` is encoded as `x − μ`, `μ = mu[(b·kv_heads
/// + h)·D ..]` (`mu` as in [`hash_encode`]; unread without `center`: query heads).
///
/// A step has only `B·kv_heads` groups, so a group's `D × RBIT` projection is spread over
/// `RBIT / 64` blocks of 512 threads: thread `t` owns column `t % 64` of the block's 64 and
/// the rows `[s·D/8, (s + 1)·D/8)` of slice `s = t / 64`; the 8 slices leave their partial
/// sums in shared memory and are added in slice order (the result does not depend on
/// timing), then warps pack the signs into words with `ballot_sync`. Grid
/// `(kv_heads, B, RBIT / 64)`, 512 threads; `G ≤ 16`, `G·D ≤ 2048`.
#[kernel(
    threads = 512,
    example(T = bf16, D = 128, RBIT = 128, G = 4),
    example(T = bf16, D = 128, RBIT = 128, G = 1),
    example(T = f16, D = 64, RBIT = 256, G = 16)
)]
pub fn hash_encode_group<T: Float, const D: u32, const RBIT: u32, const G: u32>(
    x: &[T],
    w: &[f32],
    mu: &[f32],
    center: bool,
    codes: &mut [u32],
    norms: &mut [f32],
    kv_heads: u32,
    rows_per_batch: u32,
    out_rows_per_batch: u32,
    out_row0: u32,
    write_norms: bool,
) {
    let xs = shared::<[f32; G * D]>();
    // partial[s·G·64 + g·64 + c]: slice s's part of column c of vector g
    let partial = shared::<[f32; 8 * G * 64]>();
    let t = thread_idx().x;
    let h = block_idx().x;
    let z = block_idx().z;
    let i0 = (block_idx().y * kv_heads + h) * G;
    let centre = (block_idx().y * kv_heads + h) * D;
    for j in (t..G * D).step_by(512) {
        let mut xv = x[i0 * D + j] as f32;
        if center {
            xv -= mu[centre + j % D];
        }
        xs[j] = xv;
    }
    sync_threads();
    let col = t % 64;
    let slice = t / 64;
    let d0 = slice * (D / 8);
    let mut acc = [0.0f32; G];
    for r in 0..D / 8 {
        let wv = w[(h * D + d0 + r) * RBIT + z * 64 + col];
        for g in 0..G {
            acc[g] += xs[g * D + d0 + r] * wv;
        }
    }
    for g in 0..G {
        partial[(slice * G + g) * 64 + col] = acc[g];
    }
    sync_threads();
    let lane = lane_id();
    let warp = warp_id();
    // word `c` (of the block's 2) of vector `g` is warp task `2g + c`; 16 warps take them
    for task in (warp..G * 2).step_by(16) {
        let g = task / 2;
        let c = task % 2;
        let mut sum = 0.0f32;
        for s in 0..8u32 {
            sum += partial[(s * G + g) * 64 + c * 32 + lane];
        }
        let word = ballot_sync(0xffff_ffff, sum > 0.0);
        if lane == 0 {
            let i = i0 + g;
            let o = (i / rows_per_batch) * out_rows_per_batch + out_row0 + i % rows_per_batch;
            codes[o * (RBIT / 32) + z * 2 + c] = word;
        }
    }
    if write_norms && z == 0 && warp < G {
        let mut sq = 0.0f32;
        for j in (lane..D).step_by(32) {
            let v = xs[warp * D + j];
            sq += v * v;
        }
        let total: f32 = warp_sum(sq);
        if lane == 0 {
            let i = i0 + warp;
            norms[(i / rows_per_batch) * out_rows_per_batch + out_row0 + i % rows_per_batch] =
                total.sqrt();
        }
    }
}

/// Tokens one block of [`key_sum_partial`] sums.
pub const MEAN_TOKENS: u32 = 256;

/// Partial sums of a prefill's keys (`k`, `[batch, len, kv_heads, D]`) per (sequence, KV
/// head) and span of `SPAN` tokens ([`MEAN_TOKENS`]): block `(x, b·kv_heads + h)` writes the
/// sum of tokens `[SPAN·x, SPAN·(x + 1))` to `partial[((b·kv_heads + h)·grid_x + x)·D ..]`, thread `c`
/// channel `c`. Grid `(⌈len / SPAN⌉, batch·kv_heads)`, `D` threads. [`key_mean`] adds them in
/// order, so the mean does not depend on timing.
#[kernel(
    threads = 128,
    example(T = bf16, D = 128, SPAN = 256),
    example(T = f16, D = 64, SPAN = 256)
)]
pub fn key_sum_partial<T: Float, const D: u32, const SPAN: u32>(
    k: &[T],
    partial: &mut [f32],
    len: u32,
    kv_heads: u32,
) {
    let c = thread_idx().x;
    let bh = block_idx().y;
    let b = bh / kv_heads;
    let h = bh % kv_heads;
    let t0 = block_idx().x * SPAN;
    let t1 = (t0 + SPAN).min(len);
    let mut sum = 0.0f32;
    for t in t0..t1 {
        let at = ((b as u64 * len as u64 + t as u64) * kv_heads as u64 + h as u64) * D as u64;
        sum += k[at + c as u64] as f32;
    }
    partial[(bh * grid_dim().x + block_idx().x) * D + c] = sum;
}

/// The mean key per (sequence, KV head), `mu[(b·kv_heads + h)·D + c]`, from the `splits`
/// partial sums of [`key_sum_partial`] over `len` tokens. Grid `batch·kv_heads`, `D` threads.
#[kernel(threads = 128, example(D = 128), example(D = 64))]
pub fn key_mean<const D: u32>(partial: &[f32], mu: &mut [f32], splits: u32, len: u32) {
    let c = thread_idx().x;
    let bh = block_idx().x;
    let mut sum = 0.0f32;
    for i in 0..splits {
        sum += partial[(bh * splits + i) * D + c];
    }
    mu[bh * D + c] = sum / len as f32;
}

/// The launch shapes of [`key_sum_partial`] (with [`MEAN_TOKENS`]) and [`key_mean`] over a
/// prefill of `len` tokens, and the number of partial sums per (sequence, KV head).
pub fn mean_launch(
    len: u32,
    batch: u32,
    kv_heads: u32,
    dim: u32,
) -> (LaunchConfig, LaunchConfig, u32) {
    let splits = len.div_ceil(MEAN_TOKENS);
    let block = (dim, 1, 1);
    (
        LaunchConfig {
            grid: (splits, batch * kv_heads, 1),
            block,
            dyn_shared_bytes: 0,
        },
        LaunchConfig {
            grid: (batch * kv_heads, 1, 1),
            block,
            dyn_shared_bytes: 0,
        },
        splits,
    )
}

/// Copies `n` elements of `src` into `dst` by batch: element `i` goes to
/// `dst[(i / per_batch)·dst_per_batch + offset + i % per_batch]` — a prefill's keys into a
/// larger cache (`offset` 0), or a decode step's new key at position `pos`
/// (`offset = pos·H_kv·D`). Grid `⌈n / 256⌉`, 256 threads.
#[kernel(threads = 256, example(T = bf16), example(T = f16))]
pub fn scatter_rows<T: Float>(
    src: &[T],
    dst: &mut [T],
    n: u32,
    per_batch: u32,
    dst_per_batch: u64,
    offset: u64,
) {
    let i = block_idx().x * 256 + thread_idx().x;
    if i < n {
        let at = (i / per_batch) as u64 * dst_per_batch + offset + (i % per_batch) as u64;
        dst[at] = src[i];
    }
}
