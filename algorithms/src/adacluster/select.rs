//! Critical-cluster selection: which key clusters each query cluster attends to.

use crate::common::{warp_max, warp_sum};
use crate::hata::topk::{block_exclusive_scan, block_total};
use kiln_dsl::{device, kernel};

/// Threads per block of [`cluster_select`].
pub const SELECT_THREADS: u32 = 512;

/// For query cluster `c` of problem `p`: scores every non-empty key cluster `j` by
/// `scale · q̄_c·k̄_j + ln n_j` (the means of [`super::kmeans::cluster_update`], `[P, q_cap,
/// D]` and `[P, k_cap, D]`; `n_j` its
/// size — a cluster stands for `n_j` keys of about that logit), takes the softmax, and keeps
/// the most probable clusters until their mass reaches `top_p`, at most `cap` of them
/// (`top_p ≥ 1` is plain top-`cap`). The kept ids go to `sel[(p·kq + c)·cap ..]` in
/// ascending order (the attention then reads key ranges in memory order), their number to
/// `sel_n` and the keys they hold to `sel_keys`. An empty query cluster keeps none.
///
/// The threshold is found by bisection on the bits of the probabilities (non-negative
/// floats order as their bits): the largest `τ` whose clusters `≥ τ` still hold `top_p` of
/// the mass, raised to the largest `τ` that keeps at least `cap`; every cluster above `τ` is
/// kept, then ties at `τ` in ascending id order while fewer than `cap` are kept. Grid `(kq, P)`, 512 threads, `kk ≤ 4096`.
#[kernel(threads = 512, example(D = 128), example(D = 64))]
pub fn cluster_select<const D: u32>(
    q_mean: &[f32],
    k_mean: &[f32],
    q_start: &[u32],
    k_start: &[u32],
    sel: &mut [u32],
    sel_n: &mut [u32],
    sel_keys: &mut [u32],
    kq: u32,
    kk: u32,
    q_cap: u32,
    k_cap: u32,
    cap: u32,
    top_p: f32,
    scale: f32,
) {
    let sq = shared::<[f32; D]>();
    let prob = shared::<[f32; 4096]>();
    let sums = shared::<[u32; 16]>();
    let red = shared::<[[f32; 16]; 2]>();
    let t = thread_idx().x;
    let lane = lane_id();
    let w = warp_id();
    let c = block_idx().x;
    let p = block_idx().y;
    let out = p as u64 * kq as u64 + c as u64;
    let qs = p as u64 * (kq + 1) as u64 + c as u64;
    let kb = p as u64 * (kk + 1) as u64;
    if q_start[qs + 1] == q_start[qs] {
        if t == 0 {
            sel_n[out] = 0;
            sel_keys[out] = 0;
        }
        return;
    }
    for d in (t..D).step_by(512) {
        sq[d] = q_mean[(p as u64 * q_cap as u64 + c as u64) * D as u64 + d as u64];
    }
    sync_threads();
    for j in (w..kk).step_by(16) {
        let mut dot = 0.0f32;
        for d in (lane..D).step_by(32) {
            let at = (p as u64 * k_cap as u64 + j as u64) * D as u64 + d as u64;
            dot += sq[d] * k_mean[at];
        }
        let total: f32 = warp_sum(dot);
        let nk = k_start[kb + j as u64 + 1] - k_start[kb + j as u64];
        if lane == 0 {
            prob[j] = if nk > 0 {
                total * scale + (nk as f32).ln()
            } else {
                f32::NEG_INFINITY
            };
        }
    }
    sync_threads();
    // each thread owns a contiguous run of clusters from here on
    let per = kk.div_ceil(512);
    let lo = (t * per).min(kk);
    let hi = (lo + per).min(kk);
    let mut mx = f32::NEG_INFINITY;
    for j in lo..hi {
        mx = mx.max(prob[j]);
    }
    let top: f32 = block_reduce_pair(mx, 0.0f32, true, &mut red);
    let mut z = 0.0f32;
    for j in lo..hi {
        let e = (prob[j] - top).exp();
        prob[j] = e;
        z += e;
    }
    let zt: f32 = block_reduce_pair(z, 0.0f32, false, &mut red);
    for j in lo..hi {
        prob[j] = prob[j] / zt;
    }
    // bisection: [lo_p, hi_p) brackets the mass threshold, [lo_k, hi_k) the count one
    let mut lo_p = 0u32;
    let mut hi_p = 0x3f80_0001u32;
    let mut lo_k = 0u32;
    let mut hi_k = 0x3f80_0001u32;
    for _ in 0..31u32 {
        let mid_p = lo_p + (hi_p - lo_p) / 2;
        let mid_k = lo_k + (hi_k - lo_k) / 2;
        let mut mass = 0.0f32;
        let mut count = 0.0f32;
        for j in lo..hi {
            let bits = prob[j].to_bits();
            if bits >= mid_p {
                mass += prob[j];
            }
            if bits >= mid_k {
                count += 1.0f32;
            }
        }
        mass = block_reduce_pair(mass, count, false, &mut red);
        count = red[1][16 - 1];
        sync_threads();
        if mass >= top_p {
            lo_p = mid_p;
        } else {
            hi_p = mid_p;
        }
        if count >= cap as f32 {
            lo_k = mid_k;
        } else {
            hi_k = mid_k;
        }
    }
    let tau = lo_p.max(lo_k);
    // every cluster above τ, then ties at τ by ascending id while slots remain (fewer than
    // `cap` are strictly above τ: τ is at least the count threshold)
    let mut above = 0u32;
    let mut ties = 0u32;
    for j in lo..hi {
        let nk = k_start[kb + j as u64 + 1] - k_start[kb + j as u64];
        let bits = prob[j].to_bits();
        if nk > 0 && bits > tau {
            above += 1;
        }
        if nk > 0 && bits == tau {
            ties += 1;
        }
    }
    let _before: u32 = block_exclusive_scan(above, &mut sums);
    let n_above: u32 = block_total(&sums);
    sync_threads();
    let tie_rank: u32 = block_exclusive_scan(ties, &mut sums);
    sync_threads();
    let room = if cap > n_above { cap - n_above } else { 0u32 };
    let mut mine = 0u32;
    let mut rank = tie_rank;
    for j in lo..hi {
        let nk = k_start[kb + j as u64 + 1] - k_start[kb + j as u64];
        let bits = prob[j].to_bits();
        if nk > 0 && (bits > tau || (bits == tau && rank < room)) {
            mine += 1;
        }
        if nk > 0 && bits == tau {
            rank += 1;
        }
    }
    let mut pos: u32 = block_exclusive_scan(mine, &mut sums);
    let mut keys = 0u32;
    rank = tie_rank;
    for j in lo..hi {
        let nk = k_start[kb + j as u64 + 1] - k_start[kb + j as u64];
        let bits = prob[j].to_bits();
        if nk > 0 && (bits > tau || (bits == tau && rank < room)) {
            if pos < cap {
                sel[out * cap as u64 + pos as u64] = j;
                keys += nk;
            }
            pos += 1;
        }
        if nk > 0 && bits == tau {
            rank += 1;
        }
    }
    let kept: u32 = block_total(&sums);
    let key_sum: f32 = block_reduce_pair(keys as f32, 0.0f32, false, &mut red);
    if t == 0 {
        sel_n[out] = kept.min(cap);
        sel_keys[out] = key_sum as u32;
    }
}

/// Reduces over the 512 threads of the block: the maximum of `a` when `max`, else the sum
/// of `a`, returned to every thread; the sum of `b` is left in `red[1][15]` (read it before
/// the next call, then synchronise). Fixed order, so the result is deterministic.
#[device]
pub fn block_reduce_pair(a: f32, b: f32, max: bool, red: &mut Shared<[[f32; 16]; 2]>) -> f32 {
    let lane = lane_id();
    let w = warp_id();
    let ra: f32 = if max { warp_max(a) } else { warp_sum(a) };
    let rb: f32 = warp_sum(b);
    if lane == 0 {
        red[0][w] = ra;
        red[1][w] = rb;
    }
    sync_threads();
    let mut total = red[0][0];
    let mut second = red[1][0];
    for i in 1..16u32 {
        total = if max {
            total.max(red[0][i])
        } else {
            total + red[0][i]
        };
        second += red[1][i];
    }
    sync_threads();
    if w == 0 && lane == 0 {
        red[1][15] = second;
    }
    sync_threads();
    total
}
