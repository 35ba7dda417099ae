//! CLO's own kernels: the head-wise cache hit test, the slot bookkeeping of a miss, the
//! zero-copy gather from mapped host memory, and the few per-step updates that read the
//! cache length from device memory (so that one captured graph serves every step). The
//! selection itself is HATA's (`hash_encode_group`, `hash_score`, top-k) and the attention is
//! `flash_decode` over the slots.
//!
//! Layouts (per layer): host K/V `[B, cap, H_kv, D]` (mapped); slots `[B, budget + recent,
//! H_kv, D]` on the GPU, positions `[0, budget)` the selected rows, `[budget, budget +
//! recent)` a ring of the most recent tokens; `slot_ids`, `fetch_tok`, `fetch_pos`
//! `[B, H_kv, budget]`; `len` one u32, the tokens cached before the step.

use kiln::prelude::*;
use kiln_dsl::{device, kernel};

use crate::common::warp_sum;
use crate::hata::topk::{block_exclusive_scan, block_total};

/// Largest budget [`clo_plan`] handles (its shared lists hold this many entries).
pub const MAX_BUDGET: u32 = 4096;
/// Threads per block of [`clo_plan`] (what `block_exclusive_scan` is written for).
pub const PLAN_THREADS: u32 = 512;
/// Warps per block of [`clo_gather`].
pub const GATHER_WARPS: u32 = 8;
/// Rows each warp of [`clo_gather`] moves (its `R`).
pub const GATHER_ROWS: u32 = 4;
/// Threads per block of [`clo_append`].
pub const THREADS: u32 = 256;
/// Slot id of a slot that holds no token yet.
pub const EMPTY: u32 = u32::MAX;

/// The head-wise hit test of one GQA group per block: query head `i` hits when
/// `cos(q_t, q_c) ≥ τ_i` with `q_c` its label (a zero label, before the first step, misses).
/// **GQA rule:** the group's KV head shares one selection, so it misses when *any* of its
/// `G` query heads misses; on a miss every head of the group takes its current query as its
/// new label. Writes `miss[b·H_kv + h] ∈ {0, 1}` and adds it to `misses` (a running count the
/// host reads for the hit rate, with no synchronisation inside a step).
///
/// `q` `[B, H, D]`, `labels` `[B, H, D]` f32, `tau` `[H]`. Grid `(H_kv, B)`, `32·G` threads
/// (a warp per query head).
#[kernel(threads = 512, example(T = bf16, D = 128, G = 4), example(T = f16, D = 64, G = 2))]
pub fn clo_hit<T: Float, const D: u32, const G: u32>(
    q: &[T],
    labels: &mut [f32],
    tau: &[f32],
    miss: &mut [u32],
    misses: &mut [u32],
    kv_heads: u32,
) {
    let flags = shared::<[u32; 16]>();
    let h = block_idx().x;
    let b = block_idx().y;
    let w = warp_id();
    let lane = lane_id();
    let head = h * G + w;
    let base = (b * kv_heads * G + head) * D;
    let mut dot = 0.0f32;
    let mut nq = 0.0f32;
    let mut nc = 0.0f32;
    for j in (lane..D).step_by(32) {
        let x = q[base + j] as f32;
        let c = labels[base + j];
        dot += x * c;
        nq += x * x;
        nc += c * c;
    }
    let dot: f32 = warp_sum(dot);
    let nq: f32 = warp_sum(nq);
    let nc: f32 = warp_sum(nc);
    if lane == 0 {
        let hit = nc > 0.0 && nq > 0.0 && dot >= tau[head] * (nq * nc).sqrt();
        flags[w] = if hit { 0u32 } else { 1u32 };
    }
    sync_threads();
    let mut any = 0u32;
    for g in 0..G {
        any |= flags[g];
    }
    if any != 0 {
        for j in (lane..D).step_by(32) {
            labels[base + j] = q[base + j] as f32;
        }
    }
    if thread_idx().x == 0 {
        let row = b * kv_heads + h;
        miss[row] = any;
        misses[row] += any;
    }
}

/// The first position `j < n` with `xs[base + j] ≥ x` (`xs[base ..]` ascending), else `n`.
#[device]
pub fn lower_bound(xs: &[u32], base: u32, n: u32, x: u32) -> u32 {
    let mut lo = 0u32;
    let mut hi = n;
    while lo < hi {
        let mid = (lo + hi) / 2;
        if xs[base + mid] < x {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The slot bookkeeping of one (batch, KV head) per block, after a miss: `ids` holds the new
/// selection (`budget` distinct tokens, ascending, from top-k), `slot_ids` the token in each
/// slot. A slot whose token is still selected keeps it (not fetched again); the other slots
/// are freed, and the selected tokens not in any slot are assigned to them in order. Writes
/// the fetch list (`fetch_tok[r]` into slot `fetch_pos[r]`, `r < fetch_count`) and updates
/// `slot_ids`. A hit writes `fetch_count = 0` and leaves the slots alone.
///
/// Grid `(H_kv, B)`, 512 threads; `budget ≤ 4096`.
#[kernel(threads = 512)]
pub fn clo_plan(
    miss: &[u32],
    ids: &[u32],
    slot_ids: &mut [u32],
    fetch_tok: &mut [u32],
    fetch_pos: &mut [u32],
    fetch_count: &mut [u32],
    budget: u32,
    kv_heads: u32,
) {
    // present[j]: selected token j is in a slot; free[r]: the r-th freed slot
    let present = shared::<[u32; 4096]>();
    let free = shared::<[u32; 4096]>();
    let sums = shared::<[u32; 16]>();
    let t = thread_idx().x;
    let row = block_idx().y * kv_heads + block_idx().x;
    let base = row * budget;
    // a hit plans nothing: its loops run zero times (the condition is the block's, not a thread's)
    let n = if miss[row] != 0 { budget } else { 0 };
    for j in (t..n).step_by(512) {
        present[j] = 0;
    }
    sync_threads();
    let mut freed = 0u32;
    for start in (0..n).step_by(512) {
        let p = start + t;
        let mut is_free = 0u32;
        if p < n {
            let id = slot_ids[base + p];
            let j: u32 = lower_bound(ids, base, n, id);
            if j < n && ids[base + j] == id {
                present[j] = 1;
            } else {
                is_free = 1;
            }
        }
        let at: u32 = block_exclusive_scan(is_free, &mut sums);
        if is_free == 1 {
            free[freed + at] = p;
        }
        let total: u32 = block_total(&sums);
        freed += total;
        sync_threads();
    }
    let mut fetched = 0u32;
    for start in (0..n).step_by(512) {
        let j = start + t;
        let need = if j < n && present[j] == 0 { 1u32 } else { 0u32 };
        let at: u32 = block_exclusive_scan(need, &mut sums);
        if need == 1 {
            let r = fetched + at;
            let pos = free[r];
            let id = ids[base + j];
            fetch_tok[base + r] = id;
            fetch_pos[base + r] = pos;
            slot_ids[base + pos] = id;
        }
        let total: u32 = block_total(&sums);
        fetched += total;
        sync_threads();
    }
    if t == 0 {
        fetch_count[row] = fetched;
    }
}

/// The zero-copy gather: warp `w` of block `(x, h, b)` moves the fetch entries
/// `e = (8x + w)·R + r`, `r < R`, of (b, h) that are below `fetch_count`, from the mapped host
/// cache straight into their slots — each the key row and the value row, `D` elements each,
/// in 16-byte loads (lanes `[0, D/L)` the key, the next `D/L` the value, `L` elements per
/// vector), so a warp's reads are two contiguous runs of a host row. The `R` rows of a warp
/// are unrolled with their loads ahead of the stores (the slots do not alias the source), so
/// `R` PCIe reads per lane are in flight at once: random rows of a large cache are bound by
/// the latency of address translation, not by the link (measured on an H200: 33 GB/s at
/// `R = 1`, 40 at `R = 4`, 48 for rows within a few MiB). Nothing else crosses PCIe: a hit
/// has no entries, and a miss only the tokens its slots did not already hold.
///
/// With `STAGED` the source is a staging buffer instead (the CPU-gather baseline): entry
/// `e` reads key row `fetch_tok[e]` of `k_src` (rows of `D`) and value row `fetch_tok[e]` of
/// `v_src` at element offset `v_off`. Otherwise `k_src`, `v_src` are the host cache
/// `[B, cap, H_kv, D]` and `v_off` is 0. Grid `(⌈budget / 8R⌉, H_kv, B)`, 256 threads.
#[kernel(
    threads = 256,
    example(T = bf16, D = 128, R = 4, STAGED = false),
    example(T = bf16, D = 128, R = 4, STAGED = true),
    example(T = f16, D = 64, R = 2, STAGED = false)
)]
pub fn clo_gather<T: Float, const D: u32, const R: u32, const STAGED: bool>(
    k_src: &[T],
    v_src: &[T],
    fetch_tok: &[u32],
    fetch_pos: &[u32],
    fetch_count: &[u32],
    k_slot: &mut [T],
    v_slot: &mut [T],
    cap: u32,
    slots: u32,
    budget: u32,
    kv_heads: u32,
    v_off: u32,
) {
    let h = block_idx().y;
    let b = block_idx().z;
    let row = b * kv_heads + h;
    let count = fetch_count[row];
    let lanes = 16 / size_of::<T>();
    let vecs = D / lanes;
    for r in 0..R {
        let e = (block_idx().x * 8 + warp_id()) * R + r;
        if e < count {
            let tok = fetch_tok[row * budget + e];
            let pos = fetch_pos[row * budget + e];
            let src = if STAGED {
                tok * D
            } else {
                ((b * cap + tok) * kv_heads + h) * D
            };
            let dst = ((b * slots + pos) * kv_heads + h) * D;
            for c in (lane_id()..2 * vecs).step_by(32) {
                if c < vecs {
                    let x = k_src.vload(src + c * lanes);
                    k_slot.vstore(dst + c * lanes, x);
                } else {
                    let x = v_src.vload(v_off + src + (c - vecs) * lanes);
                    v_slot.vstore(dst + (c - vecs) * lanes, x);
                }
            }
        }
    }
}

/// Appends a step's token at position `len[0]` (read from device memory): its key and value
/// (`[B, H_kv, D]`) into the mapped host cache and into the slots' recent ring (position
/// `budget + len mod recent`), and its hash code and norm (encoded by `hash_encode_group`
/// into `new_codes` `[B, H_kv, WORDS]`, `new_norms` `[B, H_kv]`) into the GPU's code store
/// (`codes` `[B, cap, H_kv, WORDS]`, `norms` `[B, cap, H_kv]`). Grid `(B)`, 256 threads.
#[kernel(threads = 256, example(T = bf16, D = 128, WORDS = 4), example(T = f16, D = 64, WORDS = 4))]
pub fn clo_append<T: Float, const D: u32, const WORDS: u32>(
    len: &[u32],
    k_new: &[T],
    v_new: &[T],
    new_codes: &[u32],
    new_norms: &[f32],
    k_host: &mut [T],
    v_host: &mut [T],
    k_slot: &mut [T],
    v_slot: &mut [T],
    codes: &mut [u32],
    norms: &mut [f32],
    cap: u32,
    slots: u32,
    budget: u32,
    recent: u32,
    kv_heads: u32,
) {
    let b = block_idx().x;
    let t = thread_idx().x;
    let pos = len[0];
    let ring = budget + pos % recent;
    let row = kv_heads * D;
    for i in (t..row).step_by(256) {
        let kx = k_new[b * row + i];
        let vx = v_new[b * row + i];
        k_host[(b * cap + pos) * row + i] = kx;
        v_host[(b * cap + pos) * row + i] = vx;
        k_slot[(b * slots + ring) * row + i] = kx;
        v_slot[(b * slots + ring) * row + i] = vx;
    }
    let slot = b * cap + pos;
    crate::hata::append::store_code::<WORDS>(
        new_codes, new_norms, codes, norms, b, slot, kv_heads, t,
    );
}

/// Ends a step: `len[0] += 1`. One thread.
#[kernel(threads = 32)]
pub fn clo_advance(len: &mut [u32]) {
    if thread_idx().x == 0 {
        len[0] += 1;
    }
}
