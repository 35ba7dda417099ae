//! The part of HATA's decode step that reads and moves the cache length in device memory, so
//! that one captured graph serves many steps ([`super::decoder::HataLayer::step`]):
//! appending the step's token at position `len[0]`. The scoring that follows reads the
//! length with the new token ([`super::score::hash_score`]).

use kiln::prelude::*;
use kiln_dsl::kernel;

/// Threads per block of [`hata_append`].
pub const THREADS: u32 = 256;

/// Appends a step's token at position `len[0]` (device memory) and moves the length on: its
/// key and value (`[B, H_kv, D]`) into the cache `k`, `v` (`[B, cap, H_kv, D]`), with `hash`
/// its hash code and norm (encoded by `hash_encode_group` into `new_codes` `[B, H_kv, WORDS]`,
/// `new_norms` `[B, H_kv]`) into `codes` `[B, cap, H_kv, WORDS]` and `norms` `[B, cap, H_kv]`
/// (a dense step leaves them for later), and marks the position filled in `sizes`
/// `[B, cap, H_kv]` (1; the dense step's `log n` bias masks the 0 entries past the cache).
/// `len[1]` is a ticket counter (0 between calls): the last block to finish sets `len[0]` to
/// the position + 1 — every block has read the position by then — so the step needs no
/// launch of its own for it. Grid `(B)`, 256 threads.
#[kernel(threads = 256, example(T = bf16, D = 128, WORDS = 4), example(T = f16, D = 64, WORDS = 8))]
pub fn hata_append<T: Float, const D: u32, const WORDS: u32>(
    len: &mut [u32],
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
    hash: bool,
) {
    let ticket = shared::<[u32; 1]>();
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
    if hash {
        store_code::<WORDS>(new_codes, new_norms, codes, norms, b, slot, kv_heads, t);
    }
    for i in (t..kv_heads).step_by(256) {
        sizes[slot * kv_heads + i] = 1.0;
    }
    thread_fence();
    sync_threads();
    if t == 0 {
        ticket[0] = atomic_add(&mut len[1], 1u32);
    }
    sync_threads();
    if t == 0 && ticket[0] == grid_dim().x - 1 {
        len[1] = 0;
        len[0] = pos + 1;
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
