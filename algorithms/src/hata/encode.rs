//! HATA's hash encoding: bit `j` of a vector `x` is `x·W[:, j] > 0` (a learned projection
//! to `RBIT` bits), packed into `RBIT / 32` u32 words, plus the vector's L2 norm.

use kiln_dsl::kernel;

/// Vectors one warp encodes together at prefill (each `W` value it loads serves all of
/// them); a decode step, with few vectors, uses one per warp for parallelism.
pub const VECTORS_PER_WARP: u32 = 8;
/// Warps per block of [`hash_encode`].
pub const WARPS: u32 = 4;

/// Encodes `n` vectors of `D` elements: keys (prefill, or a new key) or the query heads of a
/// decode step. Vector `i` (at `x[i·D ..]`) uses the weights of KV head
/// `h = (i / group) % kv_heads` (`w` is `[kv_heads, D, RBIT]`, f32); its code goes to output
/// row `o = (i / rows_per_batch)·out_rows_per_batch + out_row0 + i % rows_per_batch` (words
/// `codes[o·RBIT/32 ..]`), its norm to `norms[o]` when `write_norms`.
///
/// Grid `(⌈n / kv_heads / (4·V)⌉, kv_heads)`, 128 threads: warp `w` of block `(x, h)` takes
/// the `V` vectors `m = V(4x + w) ..` among those of head `h` (the m-th vector of head `h` is
/// `i = ((m / group)·kv_heads + h)·group + m % group`). Lane `l` owns columns `l + 32·c`; the
/// column bits of the warp are gathered with `ballot_sync` into whole words.
#[kernel(
    threads = 128,
    example(T = bf16, D = 128, RBIT = 128, V = 8),
    example(T = bf16, D = 128, RBIT = 128, V = 1),
    example(T = f16, D = 64, RBIT = 256, V = 8)
)]
pub fn hash_encode<T: Float, const D: u32, const RBIT: u32, const V: u32>(
    x: &[T],
    w: &[f32],
    codes: &mut [u32],
    norms: &mut [f32],
    n: u32,
    kv_heads: u32,
    group: u32,
    rows_per_batch: u32,
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
    for k in 0..V {
        let m = (m0 + k).min(per_head - 1);
        rows[k] = ((m / group) * kv_heads + h) * group + m % group;
    }
    let mut acc = [[0.0f32; RBIT / 32]; V];
    let mut sq = [0.0f32; V];
    let w_head = h * D * RBIT;
    for d0 in (0..D).step_by(8) {
        for k in 0..V {
            let v = x.vload(rows[k] * D + d0);
            for e in 0..8u32 {
                let xv = v[e] as f32;
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
