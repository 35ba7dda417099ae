//! The parts of HATA's decode step that read the cache length from device memory, so that
//! one captured graph serves many steps ([`super::decoder::HataLayer::step`]): appending the
//! step's token at position `len[0]`, and masking the scores of the recent window and of the
//! columns past the cache. The length moves on with `clo_advance` right after the append
//! (enqueued in the same stream): the masking then reads the length with the new token.

use kiln::prelude::*;
use kiln_dsl::kernel;

/// Threads per block of [`hata_append`] and [`hata_tail_mask`].
pub const THREADS: u32 = 256;

/// Appends a step's token at position `len[0]` (device memory): its key and value
/// (`[B, H_kv, D]`) into the cache `k`, `v` (`[B, cap, H_kv, D]`), and its hash code and
/// norm (encoded by `hash_encode_group` into `new_codes` `[B, H_kv, WORDS]`, `new_norms`
/// `[B, H_kv]`) into `codes` `[B, cap, H_kv, WORDS]` and `norms` `[B, cap, H_kv]`, and marks
/// the position filled in `sizes` `[B, cap, H_kv]` (1; the dense step's `log n` bias masks
/// the 0 entries past the cache). Does not move the length. Grid `(B)`, 256 threads.
#[kernel(threads = 256, example(T = bf16, D = 128, WORDS = 4), example(T = f16, D = 64, WORDS = 8))]
pub fn hata_append<T: Float, const D: u32, const WORDS: u32>(
    len: &[u32],
    k_new: &[T],
    v_new: &[T],
    new_codes: &[u32],
    new_norms: &[f32],
    k: &mut [T],
    v: &mut [T],
    codes: &mut [u32],
    norms: &mut [f32],
    sizes: &mut [f32],
    cap: u32,
    kv_heads: u32,
) {
    let b = block_idx().x;
    let t = thread_idx().x;
    let pos = len[0];
    let row = kv_heads * D;
    let at = (b as u64 * cap as u64 + pos as u64) * row as u64;
    for i in (t..row).step_by(256) {
        k[at + i as u64] = k_new[b * row + i];
        v[at + i as u64] = v_new[b * row + i];
    }
    let slot = b * cap + pos;
    store_code::<WORDS>(new_codes, new_norms, codes, norms, b, slot, kv_heads, t);
    for i in (t..kv_heads).step_by(256) {
        sizes[slot * kv_heads + i] = 1.0;
    }
}

/// Copies sequence `b`'s new hash codes and norms (`new_codes` `[B, H_kv, WORDS]`,
/// `new_norms` `[B, H_kv]`) into cache position `slot` (`b·cap + pos`) of `codes`
/// `[B·cap, H_kv, WORDS]` and `norms` `[B·cap, H_kv]`; every one of 256 threads calls it with
/// its index `t`. Shared by HATA's and CLO's appends.
#[kiln_dsl::device]
pub fn store_code<const WORDS: u32>(
    new_codes: &[u32],
    new_norms: &[f32],
    codes: &mut [u32],
    norms: &mut [f32],
    b: u32,
    slot: u32,
    kv_heads: u32,
    t: u32,
) {
    for i in (t..kv_heads * WORDS).step_by(256) {
        codes[slot * kv_heads * WORDS + i] = new_codes[b * kv_heads * WORDS + i];
    }
    for i in (t..kv_heads).step_by(256) {
        norms[slot * kv_heads + i] = new_norms[b * kv_heads + i];
    }
}

/// Fixes the selection's hand in row `y` of `scores` (`cols` columns, `cols ≥ n`), with the
/// cache length `n = len[0] + ahead` read from device memory (`ahead` 0 where the length has
/// already moved past the step's token, as in HATA's step; 1 where it moves at the end of
/// the step, as in CLO's): the last `recent` tokens below `n` score `recent_score` — `+∞`
/// to always select them (HATA), `−∞` to leave them out (CLO, whose recent ring is already
/// on the GPU) — and the columns `[n, cols)` past the cache `−∞` (never selected while the
/// budget is at most `n`). Grid `(x, rows)`, 256 threads, a grid-stride loop over the
/// columns from `n − recent`.
#[kernel(threads = 256)]
pub fn hata_tail_mask(
    len: &[u32],
    scores: &mut [f32],
    cols: u32,
    recent: u32,
    ahead: u32,
    recent_score: f32,
) {
    let row = block_idx().y;
    let n = len[0] + ahead;
    let first = n - n.min(recent) + block_idx().x * 256 + thread_idx().x;
    for s in (first..cols).step_by(grid_dim().x * 256) {
        let mut x = f32::NEG_INFINITY;
        if s < n {
            x = recent_score;
        }
        scores[row * cols + s] = x;
    }
}
