//! AdaCluster's clustering kernels: one k-means iteration is [`kmeans_assign`] (every point
//! to its best centroid, on the tensor cores), then a stable counting sort of the points by
//! cluster ([`cluster_count`], [`cluster_offsets`], [`cluster_scatter`]) and the centroid
//! update over each cluster's sorted members ([`cluster_update`]). The sort is also the
//! permutation the cluster-sparse attention reads, so an iteration leaves everything the
//! attention needs.
//!
//! Every problem (one (sequence, head) pair) is independent: `x` is `[P, N, D]`, centroids
//! `[P, K, D]`, and grids carry the problem in `y` (or `x` for [`cluster_offsets`]).

use crate::common::{warp_sum, warp_sum_u32};
use crate::hata::topk::{block_exclusive_scan, block_total, warp_inclusive_scan};
use crate::tile::*;
use kiln::prelude::*;
use kiln_dsl::kernel;

/// Points per block of [`kmeans_assign`] (4 warps × two 16-row strips).
pub const ASSIGN_ROWS: u32 = 128;
/// Points per tile of the counting sort ([`cluster_count`], [`cluster_scatter`]).
pub const SORT_TILE: u32 = 1024;
/// The most clusters a problem may have: the sort's per-tile histogram is a shared array
/// of this many counters.
pub const MAX_CLUSTERS: u32 = 4096;
/// Threads per block of [`cluster_update`].
pub const UPDATE_THREADS: u32 = 128;

/// Assigns every point to the centroid of highest score `x·c + bias_c` (ties: the lower
/// centroid) and writes its distance to it.
///
/// With `SPHERICAL`, `cent` holds unit directions and `bias` is 0: the score is the cosine
/// times `‖x‖` and `dist = 1 − cos`. Otherwise `bias_c = −‖c‖²/2`, so the best score is the
/// nearest centroid (`‖x − c‖² = ‖x‖² − 2·(x·c − ‖c‖²/2)`) and `dist` is that squared
/// distance — the distance matrix is never stored. `x` `[P, n, D]`, `cent` `[P, kcap, D]`
/// and `bias` `[P, kcap]` (the first `k` of each problem's `kcap` slots are used),
/// `assign`/`dist` `[P, n]`.
///
/// Grid `(⌈n / 128⌉, P)`, 128 threads. The block's 128 points stay in shared memory while
/// the centroids stream through it 32 at a time (two stages: the next tile loads while the
/// current one is multiplied); each lane keeps a running best for its rows, and the four
/// lanes of a row agree at the end (and sum its `‖x‖²` from the shared tile). Products of `T` values are exact in f32, so scores are
/// the f32 scores up to the order of the additions.
#[kernel(
    threads = 128,
    example(T = bf16, D = 128, SPHERICAL = false),
    example(T = f16, D = 64, SPHERICAL = true)
)]
pub fn kmeans_assign<T: Float, const D: u32, const SPHERICAL: bool>(
    x: &[T],
    cent: &[T],
    bias: &[f32],
    assign: &mut [u32],
    dist: &mut [f32],
    n: u32,
    k: u32,
    kcap: u32,
) {
    let sx = shared::<[T; 128 * D]>();
    let sc = shared::<[[T; 32 * D]; 2]>();
    let t = thread_idx().x;
    let lane = lane_id();
    let p = block_idx().y;
    let r0 = block_idx().x * 128;
    let row0 = warp_id() * 32;
    let x_base = (p as u64 * n as u64 + r0 as u64) * D as u64;
    let c_base = p as u64 * kcap as u64 * D as u64;
    let b_base = p as u64 * kcap as u64;
    load_tile_async::<T, 128, D, 128>(&mut sx, x, x_base, D as u64, n - r0, D, t);
    load_tile_async::<T, 32, D, 128>(&mut sc[0], cent, c_base, D as u64, k, D, t);
    cp_async_commit();
    let tiles = k.div_ceil(32);
    let mut best = [[f32::NEG_INFINITY; 2]; 2];
    let mut arg = [[0u32; 2]; 2];
    for j in 0..tiles {
        let c0 = j * 32;
        if j + 1 < tiles {
            let next = c_base + ((c0 + 32) * D) as u64;
            load_tile_async::<T, 32, D, 128>(
                &mut sc[(j + 1) % 2],
                cent,
                next,
                D as u64,
                k - c0 - 32,
                D,
                t,
            );
        }
        cp_async_commit();
        cp_async_wait::<1>();
        sync_threads();
        // this lane's eight centroid columns: their biases (−∞ past the last centroid)
        let mut cb = [f32::NEG_INFINITY; 8];
        for jj in 0..4u32 {
            for e in 0..2u32 {
                let col = c0 + jj * 8 + lane % 4 * 2 + e;
                if col < k {
                    cb[jj * 2 + e] = bias[b_base + col as u64];
                }
            }
        }
        let mut s = [[frag_c_zero(); 4]; 2];
        for kk in 0..D / 16 {
            mma_block::<T, D, D, true>(&mut s, &sx, row0, &sc[j % 2], 0u32, kk * 16);
        }
        for i in 0..2u32 {
            for jj in 0..4u32 {
                for r in 0..4u32 {
                    let v = s[i][jj][r] + cb[jj * 2 + r % 2];
                    if v > best[i][r / 2] {
                        best[i][r / 2] = v;
                        arg[i][r / 2] = c0 + jj * 8 + lane % 4 * 2 + r % 2;
                    }
                }
            }
        }
        sync_threads(); // every warp is done with this stage before it is refilled
    }
    for i in 0..2u32 {
        for h in 0..2u32 {
            let mut v = best[i][h];
            let mut a = arg[i][h];
            for step in 0..2u32 {
                let ov = shfl_xor_sync(0xffff_ffff, v, 1u32 << step);
                let oa = shfl_xor_sync(0xffff_ffff, a, 1u32 << step);
                if ov > v || (ov == v && oa < a) {
                    v = ov;
                    a = oa;
                }
            }
            let row = row0 + i * 16 + lane / 4 + h * 8;
            // ‖x‖², a quarter of the row per lane of the quad
            let mut part = 0.0f32;
            for e in 0..D / 4 {
                let x_e = sx[swz::<D>(row, lane % 4 * (D / 4) + e)] as f32;
                part += x_e * x_e;
            }
            let sq: f32 = quad_sum(part);
            if lane % 4 == 0 && r0 + row < n {
                let at = p as u64 * n as u64 + (r0 + row) as u64;
                assign[at] = a;
                dist[at] = if SPHERICAL {
                    if sq > 0.0 {
                        1.0f32 - v * sq.rsqrt()
                    } else {
                        1.0f32
                    }
                } else {
                    (sq - 2.0f32 * v).max(0.0f32)
                };
            }
        }
    }
}

/// Counts the points of each sort tile per cluster: `counts[(p·k + c)·tiles + tile]` =
/// points of tile `tile` (points `1024·tile ..`) of problem `p` in cluster `c`. Ids past
/// `k − 1` count as `k − 1` (ids come from [`kmeans_assign`] or a checked host list).
/// Grid `(tiles, P)`, 1024 threads, `k ≤` [`MAX_CLUSTERS`].
#[kernel(threads = 1024)]
pub fn cluster_count(assign: &[u32], counts: &mut [u32], n: u32, k: u32, tiles: u32) {
    let hist = shared::<[u32; 4096]>();
    let t = thread_idx().x;
    let tile = block_idx().x;
    let p = block_idx().y;
    for c in (t..k).step_by(1024) {
        hist[c] = 0;
    }
    sync_threads();
    let i = tile * 1024 + t;
    if i < n {
        let c = assign[p as u64 * n as u64 + i as u64].min(k - 1);
        atomic_add(&mut hist[c], 1u32);
    }
    sync_threads();
    for c in (t..k).step_by(1024) {
        counts[(p as u64 * k as u64 + c as u64) * tiles as u64 + tile as u64] = hist[c];
    }
}

/// Turns the per-tile counts of [`cluster_count`] into where each (cluster, tile) run starts
/// in the sorted order (in place), and writes per problem `start[c]` (`[P, k + 1]`: cluster
/// `c` holds sorted positions `start[c] .. start[c + 1]`, `start[k] = n`) and `blocks[c]`
/// (`[P, k + 1]`: the prefix sum of `⌈size / 128⌉`, the attention's query blocks per
/// cluster). Grid `(P)`, 512 threads: each warp scans whole clusters' tile counts (coalesced),
/// the block scans the cluster sizes.
#[kernel(threads = 512)]
pub fn cluster_offsets(
    counts: &mut [u32],
    start: &mut [u32],
    blocks: &mut [u32],
    k: u32,
    tiles: u32,
) {
    let sizes = shared::<[u32; 4096]>();
    let sums = shared::<[u32; 16]>();
    let t = thread_idx().x;
    let lane = lane_id();
    let w = warp_id();
    let p = block_idx().x;
    let base = p as u64 * k as u64 * tiles as u64;
    let sb = p as u64 * (k + 1) as u64;
    for c in (w..k).step_by(16) {
        let mut s = 0u32;
        for e in (lane..tiles).step_by(32) {
            s += counts[base + (c * tiles + e) as u64];
        }
        let total: u32 = warp_sum_u32(s);
        if lane == 0 {
            sizes[c] = total;
        }
    }
    sync_threads();
    // cluster starts and query-block counts: each thread scans a contiguous run of clusters
    let per = k.div_ceil(512);
    let lo = (t * per).min(k);
    let hi = (lo + per).min(k);
    for pass in 0..2u32 {
        let mut mine = 0u32;
        for c in lo..hi {
            mine += if pass == 0 {
                sizes[c]
            } else {
                sizes[c].div_ceil(128)
            };
        }
        let mut run: u32 = block_exclusive_scan(mine, &mut sums);
        for c in lo..hi {
            if pass == 0 {
                start[sb + c as u64] = run;
                run += sizes[c];
            } else {
                blocks[sb + c as u64] = run;
                run += sizes[c].div_ceil(128);
            }
        }
        let total: u32 = block_total(&sums);
        if t == 0 {
            if pass == 0 {
                start[sb + k as u64] = total;
            } else {
                blocks[sb + k as u64] = total;
            }
        }
        sync_threads(); // `sums` is reused by the next scan
    }
    // each (cluster, tile) run starts at its cluster's start plus the earlier tiles' counts
    for c in (w..k).step_by(16) {
        let mut run = start[sb + c as u64];
        for e0 in (0..tiles).step_by(32) {
            let e = e0 + lane;
            let at = base + (c * tiles + e) as u64;
            let v = if e < tiles { counts[at] } else { 0 };
            let incl: u32 = warp_inclusive_scan(v);
            if e < tiles {
                counts[at] = run + incl - v;
            }
            run += shfl_sync(0xffff_ffff, incl, 31u32);
        }
    }
}

/// Writes the stable sorted order of the points by cluster: `order[p·n + pos]` = the point
/// at sorted position `pos`, where a point's position is its (cluster, tile) run's start from
/// [`cluster_offsets`] plus the number of earlier points of its tile in the same cluster —
/// so points of one cluster keep their original order and the result does not depend on
/// thread timing. Grid `(tiles, P)`, 1024 threads: ranks inside a warp come from shuffles,
/// the warps of a tile then take their turn at a shared per-cluster tally.
#[kernel(threads = 1024)]
pub fn cluster_scatter(
    assign: &[u32],
    offsets: &[u32],
    order: &mut [u32],
    n: u32,
    k: u32,
    tiles: u32,
) {
    let seen = shared::<[u32; 4096]>();
    let t = thread_idx().x;
    let lane = lane_id();
    let w = warp_id();
    let tile = block_idx().x;
    let p = block_idx().y;
    for c in (t..k).step_by(1024) {
        seen[c] = 0;
    }
    let i = tile * 1024 + t;
    let valid = i < n;
    let id = if valid {
        assign[p as u64 * n as u64 + i as u64].min(k - 1)
    } else {
        0xffff_ffff
    };
    let mut before = 0u32;
    let mut same = 0u32;
    for j in 0..32u32 {
        let other = shfl_sync(0xffff_ffff, id, j);
        if other == id {
            same += 1;
            if j < lane {
                before += 1;
            }
        }
    }
    sync_threads();
    let mut rank = 0u32;
    for turn in 0..32u32 {
        if w == turn && valid {
            rank = seen[id] + before;
        }
        sync_warp();
        if w == turn && valid && before + 1 == same {
            seen[id] = rank + 1;
        }
        sync_threads();
    }
    if valid {
        let run = offsets[(p as u64 * k as u64 + id as u64) * tiles as u64 + tile as u64];
        order[p as u64 * n as u64 + (run + rank) as u64] = i;
    }
}

/// Recomputes each cluster's centroid from its members in sorted order (a fixed order, so
/// the sums are deterministic): `mean = Σx / n` (f32) and the assignment's copy `cent` (`T`)
/// and `bias` — with `SPHERICAL` the unit direction `Σx / ‖Σx‖` and bias 0, else the mean
/// and `bias = −‖cent‖²/2` of the rounded copy. An empty cluster keeps its old centroid.
///
/// Centroid arrays hold `kcap` slots per problem (`mean`, `cent` `[P, kcap, D]`, `bias` and
/// `seeds` `[P, kcap]`), of which the first `k` are clusters.
/// With `seeded`, cluster `c` instead takes the single point `seeds[p·kcap + c]` (a fresh seed;
/// `u32::MAX` keeps the cluster as it is) — how centroids are initialised and how the
/// cluster-count search adds clusters. Grid `(k, P)`, 128 threads: `D / 8` lanes per point
/// with 16-byte loads, `1024 / D` points at a time, partial sums met in shared memory.
#[kernel(
    threads = 128,
    example(T = bf16, D = 128, SPHERICAL = false),
    example(T = f16, D = 64, SPHERICAL = true)
)]
pub fn cluster_update<T: Float, const D: u32, const SPHERICAL: bool>(
    x: &[T],
    order: &[u32],
    start: &[u32],
    seeds: &[u32],
    mean: &mut [f32],
    cent: &mut [T],
    bias: &mut [f32],
    n: u32,
    k: u32,
    kcap: u32,
    seeded: bool,
) {
    let part = shared::<[f32; 1024]>();
    let red = shared::<[f32; 4]>();
    let t = thread_idx().x;
    let c = block_idx().x;
    let p = block_idx().y;
    let d0 = t % (D / 8) * 8;
    let group = t / (D / 8);
    let x_base = p * n * D;
    let o_base = p as u64 * n as u64;
    let mut lo = 0u32;
    let mut hi = 0u32;
    let mut seed = 0xffff_ffffu32;
    if seeded {
        seed = seeds[p as u64 * kcap as u64 + c as u64];
        if seed != 0xffff_ffff {
            hi = 1;
        }
    } else {
        lo = start[p as u64 * (k + 1) as u64 + c as u64];
        hi = start[p as u64 * (k + 1) as u64 + c as u64 + 1];
    }
    let mut acc = [0.0f32; 8];
    let mut r = lo + group;
    while r < hi {
        let row = if seeded {
            seed
        } else {
            order[o_base + r as u64]
        };
        let v = x.vload(x_base + row * D + d0);
        for e in 0..8u32 {
            acc[e] += v[e] as f32;
        }
        r += 1024 / D;
    }
    for e in 0..8u32 {
        part[group * D + d0 + e] = acc[e];
    }
    sync_threads();
    let count = hi - lo;
    let at = (p as u64 * kcap as u64 + c as u64) * D as u64 + t as u64;
    let mut sum = 0.0f32;
    if t < D {
        for g in 0..1024 / D {
            sum += part[g * D + t];
        }
    }
    if count == 0 {
        return;
    }
    let norm2: f32 = block_sum_128(if t < D { sum * sum } else { 0.0f32 }, &mut red);
    let mut value = 0.0f32;
    if t < D {
        value = if SPHERICAL {
            if norm2 > 0.0 {
                sum * norm2.rsqrt()
            } else {
                0.0f32
            }
        } else {
            sum / count as f32
        };
    }
    let rounded = (value as T) as f32;
    let c2: f32 = block_sum_128(if t < D { rounded * rounded } else { 0.0f32 }, &mut red);
    if t < D {
        mean[at] = sum / count as f32;
        cent[at] = value as T;
    }
    if t == 0 {
        bias[p as u64 * kcap as u64 + c as u64] = if SPHERICAL { 0.0f32 } else { -0.5f32 * c2 };
    }
}

/// The sum of `v` over the 128 threads of the block, in every thread, in a fixed order.
/// Uses `red` (4 floats) and synchronises the block twice.
#[kiln_dsl::device]
pub fn block_sum_128(v: f32, red: &mut Shared<[f32; 4]>) -> f32 {
    let s: f32 = warp_sum(v);
    if lane_id() == 0 {
        red[warp_id()] = s;
    }
    sync_threads();
    let total = red[0] + red[1] + red[2] + red[3];
    sync_threads();
    total
}
