//! The kernels of one optimiser step of the ranking objective ([`super::rank`]), for every
//! KV head at once (grid `y` or `x` = KV head). A step is four launches:
//!
//! 1. [`hash_rank_forward`]: per pair, the soft hashes of its query and two keys on their unit
//!    directions, the pair's loss (atomics) and `dL/dz` of the three rows, with the rows'
//!    unit directions, into scratch;
//! 2. [`hash_train_gram`](super::kernels::hash_train_gram): `A = WᵀW − I` and `‖A‖²_F`;
//! 3. [`hash_rank_update`]: the gradient `Σ x̂ᵀ·dL/dz + 2λ·W·A/‖A‖_F`, weight decay and the
//!    SGD momentum update into a second copy of `W`;
//! 4. [`hash_rank_finish`]: the step's loss into the history, the accumulators zeroed.
//!
//! The pairs of KV head `h` are `offsets[h] .. offsets[h + 1]` of the pair arrays (already in
//! the epoch's order; indices into the concatenated samples); a step takes window `step` of
//! `steps` ([`window_start`]). Scratch rows are `[kv_heads, batch, 3, ·]`: the query, the
//! relevant key, the other key.

use super::kernels::{sgd_update, window_start};
use crate::common::warp_sum;
use kiln_dsl::kernel;

/// Warps per block (one pair each) of [`hash_rank_forward`].
pub const RANK_FORWARD_WARPS: u32 = 4;

/// Forward pass of one step. Warp `w` of block `(x, h)` takes pair `j = 4x + w` of head `h`'s
/// window; lane `l` owns columns `l + 32·c`. With `s = τ·√dim`, each row `x` (the pair's
/// query `queries[sample_query[positive]]`, keys `keys[sample_key[positive]]` and
/// `keys[sample_key[other]]`) gets `h(x) = tanh(s·x·W/‖x‖)` and `a_x = ‖x‖·key_scale[h]`
/// (`key_scale` = 1/ν); the scores are `f_p = a_p·h(q)·h(p)/RBIT`, `f_o` alike, and with
/// `δ = γ·(f_o − f_p)`, `c = pair_weight`, `n` the window's pairs, the pair adds
/// `c·softplus(δ)/n` to `stats[2h]` and writes, with `g = c·γ·sigmoid(δ)/n`,
/// `dz(q) = s·g·(a_o·h(o) − a_p·h(p))·(1 − h(q)²)/RBIT`,
/// `dz(p) = −s·g·a_p·h(q)·(1 − h(p)²)/RBIT`, `dz(o) = s·g·a_o·h(q)·(1 − h(o)²)/RBIT` to `dz`
/// and `x/‖x‖` to `units` (rows `3·(h·batch + j) + 0, 1, 2`).
///
/// Grid `(⌈batch / 4⌉, kv_heads)`, 128 threads.
#[kernel(threads = 128, example(RBIT = 128), example(RBIT = 256))]
pub fn hash_rank_forward<const RBIT: u32>(
    queries: &[f32],
    keys: &[f32],
    w: &[f32],
    sample_query: &[u32],
    sample_key: &[u32],
    pair_positive: &[u32],
    pair_other: &[u32],
    pair_weight: &[f32],
    offsets: &[u32],
    key_scale: &[f32],
    units: &mut [f32],
    dz: &mut [f32],
    stats: &mut [f32],
    dim: u32,
    step: u32,
    steps: u32,
    batch: u32,
    tau: f32,
    gamma: f32,
) {
    let lane = lane_id();
    let h = block_idx().y;
    let lo: u32 = window_start(offsets, h, step, steps);
    let hi: u32 = window_start(offsets, h, step + 1, steps);
    let count = hi - lo;
    let j = block_idx().x * 4 + warp_id();
    if j >= count {
        return;
    }
    let positive = pair_positive[lo + j];
    let other = pair_other[lo + j];
    let at_q = sample_query[positive] as u64 * dim as u64;
    let at_p = sample_key[positive] as u64 * dim as u64;
    let at_o = sample_key[other] as u64 * dim as u64;
    let mut zq = [0.0f32; RBIT / 32];
    let mut zp = [0.0f32; RBIT / 32];
    let mut zo = [0.0f32; RBIT / 32];
    let mut sq = 0.0f32;
    let mut sp = 0.0f32;
    let mut so = 0.0f32;
    let w_head = h * dim * RBIT;
    for d in 0..dim {
        let xq = queries[at_q + d as u64];
        let xp = keys[at_p + d as u64];
        let xo = keys[at_o + d as u64];
        sq += xq * xq;
        sp += xp * xp;
        so += xo * xo;
        for c in 0..RBIT / 32 {
            let wv = w[w_head + d * RBIT + c * 32 + lane];
            zq[c] += xq * wv;
            zp[c] += xp * wv;
            zo[c] += xo * wv;
        }
    }
    let nq = sq.sqrt();
    let np = sp.sqrt();
    let no = so.sqrt();
    let iq = if nq > 0.0 { 1.0f32 / nq } else { 0.0f32 };
    let ip = if np > 0.0 { 1.0f32 / np } else { 0.0f32 };
    let io = if no > 0.0 { 1.0f32 / no } else { 0.0f32 };
    let slope = tau * (dim as f32).sqrt();
    let mut dot_p = 0.0f32;
    let mut dot_o = 0.0f32;
    for c in 0..RBIT / 32 {
        zq[c] = (slope * zq[c] * iq).tanh();
        zp[c] = (slope * zp[c] * ip).tanh();
        zo[c] = (slope * zo[c] * io).tanh();
        dot_p += zq[c] * zp[c];
        dot_o += zq[c] * zo[c];
    }
    let tot_p: f32 = warp_sum(dot_p);
    let tot_o: f32 = warp_sum(dot_o);
    let inv_r = 1.0f32 / RBIT as f32;
    let a_p = np * key_scale[h];
    let a_o = no * key_scale[h];
    let delta = gamma * (a_o * tot_o - a_p * tot_p) * inv_r;
    let weight = pair_weight[lo + j];
    let n = count as f32;
    if lane == 0 {
        let softplus = delta.max(0.0f32) + (1.0f32 + (-delta.abs()).exp()).ln();
        atomic_add(&mut stats[h * 2], weight * softplus / n);
    }
    let g = slope * weight * gamma / (1.0f32 + (-delta).exp()) / n * inv_r;
    let row = (h * batch + j) * 3;
    for c in 0..RBIT / 32 {
        let col = c * 32 + lane;
        let hq = zq[c];
        let hp = zp[c];
        let ho = zo[c];
        dz[row * RBIT + col] = g * (a_o * ho - a_p * hp) * (1.0 - hq * hq);
        dz[(row + 1) * RBIT + col] = -g * a_p * hq * (1.0 - hp * hp);
        dz[(row + 2) * RBIT + col] = g * a_o * hq * (1.0 - ho * ho);
    }
    for d in (lane..dim).step_by(32) {
        units[row * dim + d] = queries[at_q + d as u64] * iq;
        units[(row + 1) * dim + d] = keys[at_p + d as u64] * ip;
        units[(row + 2) * dim + d] = keys[at_o + d as u64] * io;
    }
}

/// The gradient of the ranking loss for one element `(d, r)` of `W` of head `h` (thread `i`
/// of the head: `d = i / rbit`, `r = i % rbit`), and the SGD update:
/// `G = Σ_j Σ_rows units[row, d]·dz[row, r] + (2λ/‖A‖_F)·Σ_b W[d, b]·A[b, r]` (`‖A‖_F` from
/// `stats[2h + 1]`; the last term dropped when `A = 0`), then `d = G + weight_decay·W`,
/// `v = d` at the first step (`first`) else `momentum·v + d`, `W' = W − lr·v` into `w_next`.
///
/// Grid `(⌈dim·rbit / 256⌉, kv_heads)`, 256 threads.
#[kernel(threads = 256)]
pub fn hash_rank_update(
    units: &[f32],
    dz: &[f32],
    offsets: &[u32],
    a: &[f32],
    stats: &[f32],
    w: &[f32],
    w_next: &mut [f32],
    velocity: &mut [f32],
    dim: u32,
    rbit: u32,
    step: u32,
    steps: u32,
    batch: u32,
    orthogonality: f32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    first: bool,
) {
    let h = block_idx().y;
    let i = block_idx().x * 256 + thread_idx().x;
    if i >= dim * rbit {
        return;
    }
    let d = i / rbit;
    let r = i % rbit;
    let lo: u32 = window_start(offsets, h, step, steps);
    let hi: u32 = window_start(offsets, h, step + 1, steps);
    let count = hi - lo;
    let mut acc = 0.0f32;
    for row in ((h * batch) * 3)..((h * batch + count) * 3) {
        acc += units[row * dim + d] * dz[row * rbit + r];
    }
    let w_head = h * dim * rbit;
    let mut orth = 0.0f32;
    for b in 0..rbit {
        orth += w[w_head + d * rbit + b] * a[(h * rbit + b) * rbit + r];
    }
    let norm = stats[h * 2 + 1].sqrt();
    let scale = if norm > 0.0 {
        2.0f32 * orthogonality / norm
    } else {
        0.0f32
    };
    let grad = acc + scale * orth;
    sgd_update(
        w,
        w_next,
        velocity,
        w_head + i,
        grad,
        lr,
        momentum,
        weight_decay,
        first,
    );
}

/// The loss of the step for head `h` (thread `h`): `stats[2h] + λ·√stats[2h + 1]`, written
/// to `losses[record·kv_heads + h]`; then the head's `stats` are zeroed for the next step.
/// Grid `⌈kv_heads / 256⌉`, 256 threads.
#[kernel(threads = 256)]
pub fn hash_rank_finish(
    stats: &mut [f32],
    losses: &mut [f32],
    kv_heads: u32,
    orthogonality: f32,
    record: u32,
) {
    let h = block_idx().x * 256 + thread_idx().x;
    if h < kv_heads {
        losses[record * kv_heads + h] = stats[h * 2] + orthogonality * stats[h * 2 + 1].sqrt();
        stats[h * 2] = 0.0;
        stats[h * 2 + 1] = 0.0;
    }
}
