//! Cluster-sparse flash attention: every query cluster attends only to the keys of the
//! clusters [`super::select::cluster_select`] kept for it.

use crate::tile::*;
use kiln::prelude::*;
use kiln_dsl::kernel;

/// Query rows per block of [`cluster_attn`] (4 warps × two 16-row strips).
pub const ATTN_ROWS: u32 = 128;
/// Threads per block of [`cluster_attn`].
pub const ATTN_THREADS: u32 = 128;

/// `O = softmax(scale · Q·Kᵀ)·V` and its natural-log LSE over the selected keys only, for
/// `q`, `k`, `v` `[P, n, D]` in cluster order (copied by [`permute_rows`]), `o` `[P, n, D]`
/// and `lse` `[P, n]` in token order.
///
/// `q_order` (`[P, n]`) is the token at each sorted query position; `q_start`/`k_start`
/// (`[P, kq + 1]`, `[P, kk + 1]`) mark where each cluster's run starts; `q_blocks` (`[P, kq + 1]`) is the prefix sum of each query
/// cluster's `⌈size / 128⌉` blocks, and `sel`/`sel_n` the kept key clusters per query
/// cluster (`cap` slots each). Block `(w, p)` takes the `w`-th 128-row piece of one query
/// cluster (blocks past the last piece return at once, so the grid may be an upper bound,
/// `⌈n / 128⌉ + kq`), loads its queries and walks the kept clusters' key ranges `BK` keys
/// at a time, each a contiguous block of the sorted K and V (the next K tile loads during P·V, the
/// next V tile during Q·Kᵀ and the softmax, as in the dense kernel); a range's tail is
/// masked; a warp whose rows are all past the piece's end skips the arithmetic. Rows are
/// written back at their tokens, so the output is already un-permuted. A
/// query cluster with no kept key writes zeros and `lse = −∞`.
#[kernel(
    threads = 128,
    example(T = bf16, D = 128, BK = 32),
    example(T = f16, D = 64, BK = 64)
)]
pub fn cluster_attn<T: Float, const D: u32, const BK: u32>(
    q: &[T],
    k: &[T],
    v: &[T],
    q_order: &[u32],
    q_start: &[u32],
    q_blocks: &[u32],
    k_start: &[u32],
    sel: &[u32],
    sel_n: &[u32],
    o: &mut [T],
    lse: &mut [f32],
    n: u32,
    kq: u32,
    kk: u32,
    cap: u32,
    scale: f32,
) {
    let sq = shared::<[T; 128 * D]>();
    let sk = shared::<[T; BK * D]>();
    let sv = shared::<[T; BK * D]>();
    let t = thread_idx().x;
    let lane = lane_id();
    let row0 = warp_id() * 32;
    let piece = block_idx().x;
    let p = block_idx().y;
    let qb = p as u64 * (kq + 1) as u64;
    if piece >= q_blocks[qb + kq as u64] {
        return;
    }
    // the query cluster of this piece: the last one whose blocks start at or before it
    let mut lo = 0u32;
    let mut hi = kq;
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if q_blocks[qb + mid as u64] <= piece {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let cq = lo;
    let first = q_start[qb + cq as u64] + (piece - q_blocks[qb + cq as u64]) * 128;
    let valid = (q_start[qb + cq as u64 + 1] - first).min(128);
    let pn = p * n;
    let base = pn as u64 * D as u64;
    let ld = D as u64;
    let q_at = base + (first * D) as u64;
    load_tile_async::<T, 128, D, 128>(&mut sq, q, q_at, ld, valid, D, t);
    let sb = (p as u64 * kq as u64 + cq as u64) * cap as u64;
    let kept = sel_n[p as u64 * kq as u64 + cq as u64];
    let kb = p as u64 * (kk + 1) as u64;
    // the current key tile: kept cluster `si`, sorted keys `k0 .. kend` of its range
    let mut si = 0u32;
    let mut k0 = 0u32;
    let mut kend = 0u32;
    if kept > 0 {
        let c0 = sel[sb];
        k0 = k_start[kb + c0 as u64];
        kend = k_start[kb + c0 as u64 + 1];
    }
    let k_at = base + (k0 * D) as u64;
    load_tile_async::<T, BK, D, 128>(&mut sk, k, k_at, ld, kend - k0, D, t);
    cp_async_commit();
    load_tile_async::<T, BK, D, 128>(&mut sv, v, k_at, ld, kend - k0, D, t);
    cp_async_commit();

    let mut acc = [[frag_c_zero(); D / 8]; 2];
    let mut m = [[f32::NEG_INFINITY; 2]; 2];
    let mut l = [[0.0f32; 2]; 2];
    let c = scale * 1.442_695_f32;
    // a warp whose 32 rows are all past the cluster's end only helps load and synchronise,
    // leaving the tensor cores to the other blocks on the SM
    let busy = row0 < valid;
    while si < kept {
        // the next tile: the rest of this range, else the next kept cluster's
        let mut next_si = si;
        let mut next_k0 = k0 + BK;
        let mut next_end = kend;
        if next_k0 >= kend {
            next_si = si + 1;
            if next_si < kept {
                let cn = sel[sb + next_si as u64];
                next_k0 = k_start[kb + cn as u64];
                next_end = k_start[kb + cn as u64 + 1];
            }
        }
        let more = next_si < kept;
        let keys = (kend - k0).min(BK);
        cp_async_wait::<1>(); // K landed; V may still be in flight
        sync_threads();
        let mut pf = [[frag_a_zero::<T>(); BK / 16]; 2];
        if busy {
            let mut s = [[frag_c_zero(); BK / 8]; 2];
            for step in 0..D / 16 {
                mma_block::<T, D, D, true>(&mut s, &sq, row0, &sk, 0u32, step * 16);
            }
            for i in 0..2u32 {
                scale_strip::<{ BK / 8 }>(&mut s[i], c);
                if keys < BK {
                    mask_strip::<{ BK / 8 }>(&mut s[i], 0u32, 0u32, keys, false, 0u32);
                }
                online_softmax::<{ BK / 8 }, { D / 8 }>(
                    &mut s[i],
                    &mut m[i],
                    &mut l[i],
                    &mut acc[i],
                );
                to_a::<T, { BK / 8 }, { BK / 16 }>(&s[i], &mut pf[i]);
            }
        }
        sync_threads(); // every warp is done with this K tile
        if more {
            let rows = next_end - next_k0;
            let at = base + (next_k0 * D) as u64;
            load_tile_async::<T, BK, D, 128>(&mut sk, k, at, ld, rows, D, t);
            cp_async_commit();
            cp_async_wait::<1>(); // this V tile landed
        } else {
            cp_async_wait_all();
        }
        sync_threads();
        if busy {
            mma_ab_block::<T, D>(&mut acc, &pf, &sv, 0u32);
        }
        sync_threads(); // every warp is done with this V tile
        if more {
            let rows = next_end - next_k0;
            let at = base + (next_k0 * D) as u64;
            load_tile_async::<T, BK, D, 128>(&mut sv, v, at, ld, rows, D, t);
            cp_async_commit();
        }
        si = next_si;
        k0 = next_k0;
        kend = next_end;
    }
    for i in 0..2u32 {
        let mut total = [0.0f32; 2];
        for r in 0..2u32 {
            total[r] = quad_sum(l[i][r]);
        }
        let mut at = [0xffff_ffff_ffff_ffffu64; 2];
        for h in 0..2u32 {
            let row = row0 + i * 16 + lane / 4 + h * 8;
            if row < valid {
                let token = q_order[(pn + first + row) as u64] as u64;
                at[h] = (pn as u64 + token) * D as u64;
                if lane % 4 == 0 {
                    lse[pn as u64 + token] = (m[i][h] + total[h].log2()) * 0.693_147_2_f32;
                }
            }
        }
        store_strip_rows::<T, { D / 8 }>(&acc[i], &total, o, &at);
    }
}

/// Threads per block of [`permute_rows`].
pub const PERMUTE_THREADS: u32 = 256;

/// Copies rows into cluster order, `out[p, pos] = x[p, order[p, pos]]` (`[P, n, D]`): one
/// pass over the tensor that turns every cluster into a contiguous block, so the attention
/// loads tiles without an index lookup in its loop. Grid `(⌈n·D / 8 / 256⌉, P)`, 256
/// threads, 16 bytes each.
#[kernel(threads = 256, example(T = bf16, D = 128), example(T = f16, D = 64))]
pub fn permute_rows<T: Float, const D: u32>(x: &[T], order: &[u32], out: &mut [T], n: u32) {
    let e = block_idx().x * 256 + thread_idx().x;
    let p = block_idx().y;
    if e < n * (D / 8) {
        let pos = e / (D / 8);
        let c = e % (D / 8) * 8;
        let row = order[p * n + pos];
        let val = x.vload((p * n + row) * D + c);
        out.vstore((p * n + pos) * D + c, val);
    }
}
