//! BigMac's kernels: the gate, the slot maps of the sort by expert, the grouped GEMM every
//! projection runs on, and the gate-weighted combine. The sort itself is AdaCluster's stable
//! counting sort ([`crate::adacluster::kmeans`]: count, offsets, scatter), with experts as
//! the clusters and the `T·k` routing slots as the points.

use super::hopper::group_of;
use crate::common::{warp_max, warp_sum};
use crate::tile::*;
use kiln::prelude::*;
use kiln_dsl::{device, kernel};

/// Tokens per block of [`moe_gate`] (eight per warp, so that each gate weight read from
/// shared memory serves eight tokens).
pub const GATE_TOKENS: u32 = 64;
/// The most experts [`moe_gate`] takes (two per lane).
pub const MAX_EXPERTS: u32 = 64;
/// Rows and columns of a [`grouped_gemm`] block tile.
pub const TILE: u32 = 128;
/// Threads per block of [`grouped_gemm`].
pub const GEMM_THREADS: u32 = 256;

/// Routes every token: `logits = x·W_g` (`x` `[tokens, h]`, `w` `[h, e]`, f32 sums in the
/// order of `h`), softmax, then the `K` experts of highest `probability + bias` (the
/// auxiliary-loss-free balancing bias steers the choice only; `use_bias` off ignores it;
/// ties: the lower expert). Writes `ids` and `weights` `[tokens, K]`: the chosen experts'
/// probabilities, renormalised to sum to 1 when `normalise`. A block takes 64 tokens and
/// walks `h` in chunks of 32 rows staged in shared memory (x and `W_g`), so `W_g` is read
/// once per block, not once per token; a warp owns 8 tokens, two experts per lane
/// (`e ≤ 64`). Grid `(⌈tokens / 64⌉)`, 256 threads.
#[kernel(threads = 256, example(T = bf16, K = 8), example(T = f16, K = 2))]
pub fn moe_gate<T: Float, const K: u32>(
    x: &[T],
    w: &[T],
    bias: &[f32],
    ids: &mut [u32],
    weights: &mut [f32],
    tokens: u32,
    h: u32,
    e: u32,
    use_bias: bool,
    normalise: bool,
) {
    // xs[t·32 + r]: token t's x at row r of the chunk; ws[r·64 + c]: W_g's row r, expert c
    let xs = shared::<[f32; 64 * 32]>();
    let ws = shared::<[f32; 32 * 64]>();
    let t = thread_idx().x;
    let lane = lane_id();
    let warp = warp_id();
    let tok0 = block_idx().x * 64;
    let c0 = lane;
    let c1 = lane + 32;
    let mut l0 = [0.0f32; 8];
    let mut l1 = [0.0f32; 8];
    for i0 in (0..h).step_by(32) {
        for j in (t..64 * 32).step_by(256) {
            let tok = tok0 + j / 32;
            let i = i0 + j % 32;
            xs[j] = if tok < tokens && i < h {
                x[tok as u64 * h as u64 + i as u64] as f32
            } else {
                0.0f32
            };
            let r = i0 + j / 64;
            let c = j % 64;
            ws[j] = if r < h && c < e {
                w[r as u64 * e as u64 + c as u64] as f32
            } else {
                0.0f32
            };
        }
        sync_threads();
        for r in 0..32u32 {
            let w0 = ws[r * 64 + c0];
            let w1 = ws[r * 64 + c1];
            for u in 0..8u32 {
                let xv = xs[(warp * 8 + u) * 32 + r];
                l0[u] += xv * w0;
                l1[u] += xv * w1;
            }
        }
        sync_threads();
    }
    for u in 0..8u32 {
        let tok = tok0 + warp * 8 + u;
        if tok < tokens {
            route_token::<K>(
                l0[u], l1[u], bias, ids, weights, tok, e, use_bias, normalise,
            );
        }
    }
}

/// One token's softmax over its logits (`l0`, `l1`: experts `lane` and `lane + 32` of the
/// calling warp), its `K` experts of highest `probability + bias`, and their written ids and
/// (renormalised) weights; see [`moe_gate`].
#[device]
fn route_token<const K: u32>(
    l0: f32,
    l1: f32,
    bias: &[f32],
    ids: &mut [u32],
    weights: &mut [f32],
    tok: u32,
    e: u32,
    use_bias: bool,
    normalise: bool,
) {
    let lane = lane_id();
    let c0 = lane;
    let c1 = lane + 32;
    let l0 = if c0 < e { l0 } else { f32::NEG_INFINITY };
    let l1 = if c1 < e { l1 } else { f32::NEG_INFINITY };
    let top: f32 = warp_max(l0.max(l1));
    let p0 = if c0 < e { (l0 - top).exp() } else { 0.0f32 };
    let p1 = if c1 < e { (l1 - top).exp() } else { 0.0f32 };
    let z: f32 = warp_sum(p0 + p1);
    let p0 = p0 / z;
    let p1 = p1 / z;
    let mut s0 = p0 + if use_bias && c0 < e { bias[c0] } else { 0.0f32 };
    let mut s1 = p1 + if use_bias && c1 < e { bias[c1] } else { 0.0f32 };
    if c0 >= e {
        s0 = f32::NEG_INFINITY;
    }
    if c1 >= e {
        s1 = f32::NEG_INFINITY;
    }
    let mut chosen = [0u32; K];
    let mut prob = [0.0f32; K];
    let mut total = 0.0f32;
    for j in 0..K {
        // this lane's best (its lower expert on a tie), then the warp's
        let mut v = s0;
        let mut a = c0;
        let mut pv = p0;
        if s1 > s0 {
            v = s1;
            a = c1;
            pv = p1;
        }
        for step in 0..5u32 {
            let ov = shfl_xor_sync(0xffff_ffff, v, 1u32 << step);
            let oa = shfl_xor_sync(0xffff_ffff, a, 1u32 << step);
            let op = shfl_xor_sync(0xffff_ffff, pv, 1u32 << step);
            if ov > v || (ov == v && oa < a) {
                v = ov;
                a = oa;
                pv = op;
            }
        }
        chosen[j] = a;
        prob[j] = pv;
        total += pv;
        if a == c0 {
            s0 = f32::NEG_INFINITY;
        }
        if a == c1 {
            s1 = f32::NEG_INFINITY;
        }
    }
    if lane == 0 {
        for j in 0..K {
            let at = tok as u64 * K as u64 + j as u64;
            ids[at] = chosen[j];
            weights[at] = if normalise && total > 0.0 {
                prob[j] / total
            } else {
                prob[j]
            };
        }
    }
}

/// From the sorted order of the routing slots (`order[pos]` = slot `token·k + j`): `inv[slot]`
/// = its sorted position and `rows[pos]` = its token. Grid `(⌈slots / 256⌉)`, 256 threads.
#[kernel(threads = 256)]
pub fn slot_maps(order: &[u32], inv: &mut [u32], rows: &mut [u32], slots: u32, k: u32) {
    let pos = block_idx().x * 256 + thread_idx().x;
    if pos < slots {
        let slot = order[pos];
        inv[slot] = pos;
        rows[pos] = slot / k;
    }
}

/// `y[r] = act(a[row(r)] · W_g)` for every row `r` of every group `g` (an expert): group `g`
/// owns rows `start[g] .. start[g + 1]` of `y` (`[rows, n]`, `T`) and the weights
/// `w[g·k·n ..]` (`[k, n]` row-major); `row(r)` is `rows[r]` when `GATHER` (tokens gathered
/// from `a` `[tokens, k]` in the experts' order), else `r` (`a` already in that order). `act`
/// is SiLU when `SILU`, else none. One launch covers every group: block `(x, p)` takes
/// column tile `x` of the `p`-th 128-row piece, found in `blocks` (the prefix sums of each
/// group's `⌈size / 128⌉`, from [`crate::adacluster::kmeans::cluster_offsets`]); pieces past
/// the last return. `k` and `n` must be multiples of 32 and 8. K advances 32 at a time
/// through three `cp_async` stages, as in [`crate::gemm::gemm`]; f32 accumulation.
/// Grid `(⌈n / 128⌉, ⌈rows / 128⌉ + groups)`, 256 threads.
#[kernel(
    threads = 256,
    example(T = bf16, GATHER = true, SILU = true),
    example(T = bf16, GATHER = false, SILU = false),
    example(T = f16, GATHER = true, SILU = false)
)]
pub fn grouped_gemm<T: Float, const GATHER: bool, const SILU: bool>(
    a: &[T],
    rows: &[u32],
    w: &[T],
    start: &[u32],
    blocks: &[u32],
    y: &mut [T],
    groups: u32,
    k: u32,
    n: u32,
) {
    let sa = shared::<[[T; 128 * 32]; 3]>();
    let sb = shared::<[[T; 128 * 32]; 3]>();
    let t = thread_idx().x;
    let warp = warp_id();
    let piece = block_idx().y;
    let n0 = block_idx().x * 128;
    if piece >= blocks[groups] {
        return;
    }
    let g: u32 = group_of(piece, blocks, groups);
    let m0 = start[g] + (piece - blocks[g]) * 128;
    let valid = (start[g + 1] - m0).min(128);
    let w_base = g as u64 * k as u64 * n as u64;
    let wm = warp / 4 * 64;
    let wn = warp % 4 * 32;
    let tiles = k / 32;
    let mut acc = [[frag_c_zero(); 4]; 4];
    for st in 0..2u32 {
        if st < tiles {
            load_group_stage::<T, GATHER>(
                &mut sa[st],
                &mut sb[st],
                a,
                rows,
                w,
                w_base,
                m0,
                valid,
                n0,
                st * 32,
                k,
                n,
                t,
            );
        }
        cp_async_commit();
    }
    for kt in 0..tiles {
        cp_async_wait::<1>();
        sync_threads();
        let ahead = kt + 2;
        if ahead < tiles {
            let st = ahead % 3;
            load_group_stage::<T, GATHER>(
                &mut sa[st],
                &mut sb[st],
                a,
                rows,
                w,
                w_base,
                m0,
                valid,
                n0,
                ahead * 32,
                k,
                n,
                t,
            );
        }
        cp_async_commit();
        let st = kt % 3;
        if wm < valid {
            for kk in 0..2u32 {
                mma_block::<T, 32, 128, false>(&mut acc, &sa[st], wm, &sb[st], wn, kk * 16);
            }
        }
    }
    if wm < valid {
        store_block_as::<T, 4, 4, SILU>(&acc, y, m0 + wm, n0 + wn, n, m0 + valid, n);
    }
}

/// Starts the copies of one 32-deep stage of [`grouped_gemm`]: 128 rows of A (gathered by
/// `rows` when `GATHER`) and rows `k0 .. k0 + 32` of the group's weights, columns `n0 ..`.
#[kiln_dsl::device]
pub fn load_group_stage<T: Float, const GATHER: bool>(
    sa: &mut Shared<[T; 128 * 32]>,
    sb: &mut Shared<[T; 128 * 32]>,
    a: &[T],
    rows: &[u32],
    w: &[T],
    w_base: u64,
    m0: u32,
    valid: u32,
    n0: u32,
    k0: u32,
    k: u32,
    n: u32,
    t: u32,
) {
    if GATHER {
        gather_tile_async::<T, 128, 32, 256>(&mut sa, a, rows, m0, valid, k0 as u64, k as u64, t);
    } else {
        let at = m0 as u64 * k as u64 + k0 as u64;
        load_tile_async::<T, 128, 32, 256>(&mut sa, a, at, k as u64, valid, k - k0, t);
    }
    let at = w_base + k0 as u64 * n as u64 + n0 as u64;
    load_tile_async::<T, 32, 128, 256>(&mut sb, w, at, n as u64, k - k0, n - n0, t);
}

/// `out[t] = Σ_j weights[t·k + j] · y[inv[t·k + j]]` (`y` `[slots, n]` in the experts'
/// order, `out` `[tokens, n]`), summed in f32 in slot order. A thread per 8 columns of a
/// token; grid `(⌈tokens·n / 8 / 256⌉)`, 256 threads.
#[kernel(threads = 256, example(T = bf16), example(T = f16))]
pub fn moe_combine<T: Float>(
    y: &[T],
    inv: &[u32],
    weights: &[f32],
    out: &mut [T],
    tokens: u32,
    n: u32,
    k: u32,
) {
    let v = block_idx().x * 256 + thread_idx().x;
    if v < tokens * (n / 8) {
        let tok = v / (n / 8);
        let c = v % (n / 8) * 8;
        let mut acc = [0.0f32; 8];
        for j in 0..k {
            let slot = tok * k + j;
            let wj = weights[slot];
            let row = y.vload(inv[slot] * n + c);
            for e in 0..8u32 {
                acc[e] += wj * (row[e] as f32);
            }
        }
        let mut res = y.vload(0);
        for e in 0..8u32 {
            res[e] = acc[e] as T;
        }
        out.vstore(tok * n + c, res);
    }
}
