//! Top-k selection in O(n) for HATA's decode step: for each row of scores (one row per
//! (batch, KV head), one score per cached token), the column indices of its `k` largest
//! scores, by radix selection on the scores' bits instead of sorting.
//!
//! # What is selected
//!
//! Scores are ordered as f32 numbers, with `-0.0 == +0.0`, `+∞` above everything finite and
//! **NaN below everything** (below `-∞`): a NaN is never chosen over a number. Among equal
//! scores the **lower index wins**, so the selected set is a pure function of the scores, never
//! of thread timing. Each row's `k` indices are written in **ascending index order** (a
//! deterministic order that also gives the sparse-attention gather ascending addresses).
//! [`reference`] is the plain-Rust definition the tests compare against.
//!
//! # How
//!
//! Each score is mapped to an order-preserving u32 key ([`sort_key`]: flip all bits of a
//! negative, set the sign bit of a positive, NaN → 0). The key's 32 bits are resolved in three
//! digits, 12 + 10 + 10 bits, each by a histogram of the elements still in play and a scan
//! from the top for the bucket that holds the k-th largest. A row is split into `chunk`-sized
//! pieces, one block each, so that even 8 rows fill the GPU; blocks count in shared memory,
//! merge with global atomics, and the **last block of a row to finish** (a ticket taken with
//! an atomic after a fence) scans the merged histogram, resets it to zero for the next call
//! and records the bucket. Four kernels, two passes over the scores:
//!
//! 1. [`topk_hist`] — pass over the scores: histogram of the top 12 key bits → digit 1.
//! 2. [`topk_filter`] — pass over the scores: every element whose digit 1 is at least the
//!    chosen one is a candidate; each block compacts its candidates (index and key, in index
//!    order) into its own region of the scratch and histograms digit 2 of those in the bucket.
//! 3. [`topk_refine`] — over the candidates only: digit 3 → the exact threshold key `T` and
//!    how many elements equal to `T` to take (`need`); the row's last block then counts, a
//!    warp per block of the row, each block's candidates above `T` and equal to it.
//! 4. [`topk_write`] — over the candidates: each block sums the counts of the blocks before it
//!    (its output offset, and how many of the `need` ties they took) and writes its selected
//!    indices with an ordered block scan: everything above `T`, and ties while slots remain.
//!
//! Only the two passes read `rows × n` scores; the candidates are the elements of the k-th
//! largest's 12-bit bucket and above (a few percent of a row for spread-out scores; up to the
//! whole row when most scores tie, which stays correct, only slower).

use kiln::{Device, DeviceBuffer, Kernel, LaunchConfig, RuntimeError, Stream};
use kiln_dsl::{device, kernel};

use crate::common::warp_sum_u32;

/// Threads per block of every top-k kernel (16 warps).
pub const THREADS: u32 = 512;
/// Scores a block of [`topk_hist`] reads per step: four coalesced 16-byte loads per thread,
/// `base + 2048j + 4t` for `j < 4`, all in flight before the first is counted
/// ([`topk_filter`], which keeps fewer registers live across its block scan, reads 2048 per
/// step). The default chunk gives each block at least this many columns.
pub const TILE: u32 = 16 * THREADS;
/// Buckets of digit 1 (the top 12 key bits).
pub const BINS1: u32 = 4096;
/// Buckets of digits 2 and 3 (10 key bits each).
pub const BINS2: u32 = 1024;
/// u32 words of per-row histogram scratch: digit 1, then digit 2, then digit 3.
pub const HIST_WORDS: u32 = BINS1 + 2 * BINS2;
/// u32 words of per-row state: `[0]` the key prefix resolved so far (after the last pass,
/// the threshold `T`), `[1]` how many elements of that prefix still have to be taken, `[4..7]`
/// the last-block tickets of the three histogram kernels.
pub const STATE_WORDS: u32 = 8;
/// u32 words of per-block counts: `[0]` candidates, `[1]` above `T`, `[2]` equal to `T`.
pub const COUNT_WORDS: u32 = 4;

/// The order-preserving key of a score (the same as [`order_key`] in the kernels): larger
/// float → larger key; `-0.0` and `+0.0` share a key; every NaN maps to 0, below `-∞`
/// (`0x007f_ffff`).
pub fn sort_key(x: f32) -> u32 {
    let mut bits = x.to_bits();
    if bits == 0x8000_0000 {
        bits = 0;
    }
    if (bits & 0x7fff_ffff) > 0x7f80_0000 {
        0
    } else if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// The plain-Rust definition of the selection: for each of the `rows` rows of `n` scores, the
/// indices of the `k` largest by [`sort_key`] (ties: lower index first), ascending. `rows × k`
/// values, row-major.
pub fn reference(scores: &[f32], rows: usize, n: usize, k: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(rows * k);
    for r in 0..rows {
        let row = &scores[r * n..(r + 1) * n];
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by(|&a, &b| {
            sort_key(row[b as usize])
                .cmp(&sort_key(row[a as usize]))
                .then(a.cmp(&b))
        });
        order.truncate(k);
        order.sort_unstable();
        out.extend_from_slice(&order);
    }
    out
}

/// The order-preserving u32 key of a score: see [`sort_key`], its host twin.
#[device]
pub fn order_key(x: f32) -> u32 {
    let mut bits = x.to_bits();
    if bits == 0x8000_0000 {
        bits = 0;
    }
    let key = if (bits & 0x8000_0000) != 0 {
        bits ^ 0xffff_ffff
    } else {
        bits | 0x8000_0000
    };
    if (bits & 0x7fff_ffff) > 0x7f80_0000 {
        0
    } else {
        key
    }
}

/// Inclusive prefix sum of `v` over the lanes of a warp (lane order).
#[device]
pub fn warp_inclusive_scan(v: u32) -> u32 {
    let lane = lane_id();
    let mut acc = v;
    for s in 0..5u32 {
        let d = 1u32 << s;
        let up = shfl_up_sync(0xffff_ffff, acc, d);
        if lane >= d {
            acc += up;
        }
    }
    acc
}

/// Exclusive prefix sum of `v` over the 512 threads of the block, in thread order. Leaves
/// each warp's total in `sums` (their sum, [`block_total`], is the block's), so the caller
/// must `sync_threads()` before `sums` is written again. Each warp then scans the 16 warp
/// totals with shuffles (one shared load per lane, not one per warp).
#[device]
pub fn block_exclusive_scan(v: u32, sums: &mut Shared<[u32; 16]>) -> u32 {
    let incl: u32 = warp_inclusive_scan(v);
    let w = warp_id();
    let lane = lane_id();
    if lane == 31 {
        sums[w] = incl;
    }
    sync_threads();
    let total_of_lane = if lane < 16 { sums[lane] } else { 0 };
    let upto: u32 = warp_inclusive_scan(total_of_lane);
    let before = shfl_sync(0xffff_ffff, upto - total_of_lane, w);
    before + incl - v
}

/// The block total of the last [`block_exclusive_scan`] (a warp sum of the 16 warp totals).
#[device]
pub fn block_total(sums: &Shared<[u32; 16]>) -> u32 {
    let lane = lane_id();
    let total_of_lane = if lane < 16 { sums[lane] } else { 0 };
    warp_sum_u32(total_of_lane)
}

/// The keys ([`order_key`]) of `scores[i .. i + 4]` into `keys`: one 16-byte load when all
/// four exist (`i` is a multiple of 4), else one load per existing score (the others keep
/// their value).
#[device]
pub fn load_keys(scores: &[f32], i: u32, keys: &mut [u32; 4]) {
    let len = scores.len();
    if i + 4 <= len {
        let v = scores.vload(i);
        for e in 0..4u32 {
            keys[e] = order_key(v[e]);
        }
    } else {
        for e in 0..4u32 {
            if i + e < len {
                keys[e] = order_key(scores[i + e]);
            }
        }
    }
}

/// The end of every histogram kernel, resolving digit `digit` (0, 1, 2: key bits 31..20,
/// 19..10, 9..0) of row `row`; run by every thread of the block once its shared histogram is
/// complete. Adds the block's `BINS` buckets (summing the `N / BINS` copies of `bins`) to the
/// row's histogram of that digit in `hist`, then takes the digit's ticket in `state` after a
/// fence. The row's last block to do so picks the bucket holding the `need`-th largest
/// ([`select_bucket`]: `res[1]` the bucket, `res[2]` what is still needed from it), records
/// `prefix` with the bucket in place (`state[row·8]`) and the need (`state[row·8 + 1]`),
/// resets the ticket for the next call and returns `true`; the others return `false`.
#[device]
pub fn merge_and_select<const BINS: u32, const N: u32>(
    bins: &Shared<[u32; N]>,
    hist: &mut [u32],
    state: &mut [u32],
    row: u32,
    digit: u32,
    prefix: u32,
    need: u32,
    sums: &mut Shared<[u32; 16]>,
    res: &mut Shared<[u32; 4]>,
) -> bool {
    let t = thread_idx().x;
    // the row's histograms: digit 0 at 0, digit 1 at 4096, digit 2 at 5120
    let base = if digit == 0 {
        0u32
    } else {
        3072 + 1024 * digit
    };
    let hb = row * (4096 + 2 * 1024) + base;
    let ticket = row * 8 + 4 + digit;
    for j in 0..BINS / 512 {
        let b = j * 512 + t;
        let mut c = 0u32;
        for copy in 0..N / BINS {
            c += bins[copy * BINS + b];
        }
        if c > 0 {
            atomic_add(&mut hist[hb + b], c);
        }
    }
    thread_fence();
    sync_threads();
    if t == 0 {
        res[0] = atomic_add(&mut state[ticket], 1u32);
    }
    sync_threads();
    let last = res[0] == grid_dim().x - 1;
    if last {
        select_bucket::<BINS>(hist, hb, need, &mut sums, &mut res);
        if t == 0 {
            state[row * 8] = prefix | (res[1] << (20 - 10 * digit));
            state[row * 8 + 1] = res[2];
            state[ticket] = 0;
        }
    }
    last
}

/// Run by every thread of the last block of a row: reads the merged histogram
/// `hist[base .. base + BINS]` (resetting it to zero for the next call), finds the bucket `b`
/// holding the `need`-th largest element (counting from the top bucket down) and leaves `b` in
/// `res[1]` and `need` minus the elements of the buckets above `b` in `res[2]`. Thread `t` owns
/// the `BINS / 512` buckets just below `BINS - t·BINS/512`; one block scan gives each thread
/// the count above its buckets, and the one thread whose buckets hold the crossing walks them.
#[device]
pub fn select_bucket<const BINS: u32>(
    hist: &mut [u32],
    base: u32,
    need: u32,
    sums: &mut Shared<[u32; 16]>,
    res: &mut Shared<[u32; 4]>,
) {
    let t = thread_idx().x;
    let top = BINS - t * (BINS / 512);
    let mut h = [0u32; BINS / 512];
    let mut local = 0u32;
    for j in 0..BINS / 512 {
        h[j] = atomic_exch(&mut hist[base + top - 1 - j], 0u32);
        local += h[j];
    }
    let above: u32 = block_exclusive_scan(local, &mut sums);
    if above < need && need <= above + local {
        let mut acc = above;
        let mut done = false;
        for j in 0..BINS / 512 {
            if !done {
                if acc + h[j] >= need {
                    res[1] = top - 1 - j;
                    res[2] = need - acc;
                    done = true;
                } else {
                    acc += h[j];
                }
            }
        }
    }
    sync_threads();
}

/// Pass 1 over the scores. Block `(x, row)` histograms the top 12 key bits of columns
/// `[x·chunk, min((x + 1)·chunk, n))` of row `row` in shared memory ([`TILE`] scores per
/// step, four coalesced 16-byte loads per thread), adds its buckets to
/// `hist[row·HIST_WORDS ..]`, and the row's last block picks digit 1: `state[row·8] = d1 << 20`,
/// `state[row·8 + 1]` = `k` minus the elements above bucket `d1`. Grid `(⌈n / chunk⌉, rows)`,
/// 512 threads.
#[kernel(threads = 512)]
pub fn topk_hist(scores: &[f32], hist: &mut [u32], state: &mut [u32], n: u32, k: u32, chunk: u32) {
    // two copies of the 4096 buckets, for the even and the odd warps: concentrated scores
    // make the atomics of a block collide on a few addresses, and a copy each halves that
    let bins = shared::<[u32; 2 * 4096]>();
    let sums = shared::<[u32; 16]>();
    let res = shared::<[u32; 4]>();
    let t = thread_idx().x;
    let row = block_idx().y;
    for j in 0..16u32 {
        bins[j * 512 + t] = 0;
    }
    sync_threads();
    let copy = (warp_id() & 1) * 4096;
    let c0 = block_idx().x * chunk;
    let g0 = row * n + c0;
    let g1 = row * n + (c0 + chunk).min(n);
    // four coalesced 16-byte loads per thread and step: scores base + 2048j + 4t, j < 4
    for i in (g0 / 4 * 4 + t * 4..g1).step_by(8192) {
        let mut keys = [[0u32; 4]; 4];
        for j in 0..4u32 {
            if i + 2048 * j < g1 {
                load_keys(scores, i + 2048 * j, &mut keys[j]);
            }
        }
        for j in 0..4u32 {
            for e in 0..4u32 {
                let at = i + 2048 * j + e;
                if at >= g0 && at < g1 {
                    atomic_add(&mut bins[copy + (keys[j][e] >> 20)], 1u32);
                }
            }
        }
    }
    sync_threads();
    let _: bool =
        merge_and_select::<4096, 8192>(&bins, hist, state, row, 0u32, 0u32, k, &mut sums, &mut res);
}

/// Pass 2 over the scores. With digit 1 `d1` from [`topk_hist`], block `(x, row)` keeps the
/// elements of its columns whose key's top 12 bits are at least `d1` (all of the top-k are
/// among them): it writes their column indices and keys, in index order, to
/// `cand_idx`/`cand_key[(row·nb + x)·chunk ..]` and their number to `counts[(row·nb + x)·4]`,
/// and histograms key bits 19..10 of those in bucket `d1`. Each step reads 2048 scores (one
/// 16-byte load per thread) and places its candidates with one block scan. The row's last
/// block picks digit 2 and updates `state` (prefix `d1 << 20 | d2 << 10`, need).
/// Grid `(nb, rows)` with `nb = ⌈n / chunk⌉`, 512 threads.
#[kernel(threads = 512)]
pub fn topk_filter(
    scores: &[f32],
    hist: &mut [u32],
    state: &mut [u32],
    cand_idx: &mut [u32],
    cand_key: &mut [u32],
    counts: &mut [u32],
    n: u32,
    chunk: u32,
) {
    let bins = shared::<[u32; 1024]>();
    let sums = shared::<[u32; 16]>();
    let res = shared::<[u32; 4]>();
    let t = thread_idx().x;
    let row = block_idx().y;
    let nb = grid_dim().x;
    for j in 0..2u32 {
        bins[j * 512 + t] = 0;
    }
    sync_threads();
    let prefix = state[row * 8];
    let need = state[row * 8 + 1];
    let d1 = prefix >> 20;
    let c0 = block_idx().x * chunk;
    let rb = row * n;
    let g0 = rb + c0;
    let g1 = rb + (c0 + chunk).min(n);
    let block = row * nb + block_idx().x;
    let region = block * chunk;
    let mut written = 0u32;
    for i in (g0 / 4 * 4..g1).step_by(2048) {
        // scores i + 4t .. i + 4t + 4: one coalesced 16-byte load per thread and step
        let j = i + t * 4;
        let mut keys = [0u32; 4];
        if j < g1 {
            load_keys(scores, j, &mut keys);
        }
        let mut mask = 0u32;
        let mut count = 0u32;
        for e in 0..4u32 {
            if j + e >= g0 && j + e < g1 {
                let d = keys[e] >> 20;
                if d >= d1 {
                    mask |= 1u32 << e;
                    count += 1;
                }
                if d == d1 {
                    atomic_add(&mut bins[(keys[e] >> 10) & 1023], 1u32);
                }
            }
        }
        let before: u32 = block_exclusive_scan(count, &mut sums);
        let total: u32 = block_total(&sums);
        sync_threads();
        let mut at = region + written + before;
        for e in 0..4u32 {
            if (mask >> e) & 1 != 0 {
                cand_idx[at] = j + e - rb;
                cand_key[at] = keys[e];
                at += 1;
            }
        }
        written += total;
    }
    if t == 0 {
        counts[block * 4] = written;
    }
    let _: bool = merge_and_select::<1024, 1024>(
        &bins, hist, state, row, 1u32, prefix, need, &mut sums, &mut res,
    );
}

/// Digit 3, over the candidates only: block `(x, row)` histograms the low 10 key bits of
/// its candidates that share the 22-bit prefix in `state`; the row's last block picks the
/// bucket, which completes the threshold key `T` (`state[row·8]`), leaves in
/// `state[row·8 + 1]` how many elements equal to `T` the top-k takes, and counts, a warp per
/// block of the row, each block's candidates above `T` (`counts[(row·nb + x)·4 + 1]`) and
/// equal to it (`+ 2`) for [`topk_write`]. Grid `(nb, rows)`, 512 threads.
#[kernel(threads = 512)]
pub fn topk_refine(
    cand_key: &[u32],
    counts: &mut [u32],
    hist: &mut [u32],
    state: &mut [u32],
    chunk: u32,
) {
    let bins = shared::<[u32; 1024]>();
    let sums = shared::<[u32; 16]>();
    let res = shared::<[u32; 4]>();
    let t = thread_idx().x;
    let row = block_idx().y;
    let nb = grid_dim().x;
    for j in 0..2u32 {
        bins[j * 512 + t] = 0;
    }
    sync_threads();
    let prefix = state[row * 8];
    let need = state[row * 8 + 1];
    let p = prefix >> 10;
    let block = row * nb + block_idx().x;
    let region = block * chunk;
    let count = counts[block * 4];
    for j in (t * 4..count).step_by(2048) {
        let v = cand_key.vload(region + j);
        for e in 0..4u32 {
            if j + e < count && (v[e] >> 10) == p {
                atomic_add(&mut bins[v[e] & 1023], 1u32);
            }
        }
    }
    sync_threads();
    let last: bool = merge_and_select::<1024, 1024>(
        &bins, hist, state, row, 2u32, prefix, need, &mut sums, &mut res,
    );
    if last {
        let thr = prefix | res[1];
        for x in (warp_id()..nb).step_by(16) {
            count_around(cand_key, counts, row * nb + x, chunk, thr);
        }
    }
}

/// Run by one warp: counts the candidates of block `block` (its region of `chunk` slots,
/// `counts[block·4]` of them) above the threshold key `thr` and equal to it, into
/// `counts[block·4 + 1]` and `counts[block·4 + 2]`.
#[device]
pub fn count_around(cand_key: &[u32], counts: &mut [u32], block: u32, chunk: u32, thr: u32) {
    let region = block * chunk;
    let count = counts[block * 4];
    let mut gt = 0u32;
    let mut eq = 0u32;
    for j in (lane_id() * 4..count).step_by(128) {
        let v = cand_key.vload(region + j);
        for e in 0..4u32 {
            if j + e < count {
                if v[e] > thr {
                    gt += 1;
                } else if v[e] == thr {
                    eq += 1;
                }
            }
        }
    }
    let gt_w: u32 = warp_sum_u32(gt);
    let eq_w: u32 = warp_sum_u32(eq);
    if lane_id() == 0 {
        counts[block * 4 + 1] = gt_w;
        counts[block * 4 + 2] = eq_w;
    }
}

/// Writes the selection. Block `(x, row)` sums, over the blocks before it in its row, the
/// candidates above `T` (`G`) and equal to `T` (`E`): they took `G + min(need, E)` output
/// slots, and `need - min(need, E)` ties are left for this block and those after it. It then
/// walks its candidates in index order (a block scan of packed above/equal counts per step)
/// and writes every one above `T`, and those equal to `T` while tie slots remain, to
/// `idx[row·k ..]`. Grid `(nb, rows)`, 512 threads.
#[kernel(threads = 512)]
pub fn topk_write(
    cand_idx: &[u32],
    cand_key: &[u32],
    counts: &[u32],
    state: &[u32],
    idx: &mut [u32],
    k: u32,
    chunk: u32,
) {
    let sums = shared::<[u32; 16]>();
    let acc = shared::<[u32; 2]>();
    let t = thread_idx().x;
    let row = block_idx().y;
    let nb = grid_dim().x;
    let x = block_idx().x;
    let block = row * nb + x;
    let region = block * chunk;
    let thr = state[row * 8];
    let need = state[row * 8 + 1];
    if t < 2 {
        acc[t] = 0;
    }
    sync_threads();
    let mut gt = 0u32;
    let mut eq = 0u32;
    for i in (t..x).step_by(512) {
        gt += counts[(row * nb + i) * 4 + 1];
        eq += counts[(row * nb + i) * 4 + 2];
    }
    let gt_w: u32 = warp_sum_u32(gt);
    let eq_w: u32 = warp_sum_u32(eq);
    if lane_id() == 0 {
        atomic_add(&mut acc[0], gt_w);
        atomic_add(&mut acc[1], eq_w);
    }
    sync_threads();
    let taken = acc[1].min(need);
    let out0 = row * k + acc[0] + taken;
    let slots = need - taken;
    let count = counts[block * 4];
    let mut run_gt = 0u32;
    let mut run_eq = 0u32;
    for base in (0..count).step_by(2048) {
        let j = base + t * 4;
        let mut keys = [0u32; 4];
        let mut ids = [0u32; 4];
        let mut packed = 0u32;
        if j < count {
            let kv = cand_key.vload(region + j);
            let iv = cand_idx.vload(region + j);
            for e in 0..4u32 {
                keys[e] = kv[e];
                ids[e] = iv[e];
                if j + e < count {
                    if kv[e] > thr {
                        packed += 1;
                    } else if kv[e] == thr {
                        packed += 1 << 16;
                    }
                }
            }
        }
        let before: u32 = block_exclusive_scan(packed, &mut sums);
        let total: u32 = block_total(&sums);
        sync_threads();
        let mut pg = run_gt + (before & 0xffff);
        let mut pe = run_eq + (before >> 16);
        for e in 0..4u32 {
            if j + e < count {
                if keys[e] > thr {
                    idx[out0 + pg + pe.min(slots)] = ids[e];
                    pg += 1;
                } else if keys[e] == thr {
                    if pe < slots {
                        idx[out0 + pg + pe] = ids[e];
                    }
                    pe += 1;
                }
            }
        }
        run_gt += total & 0xffff;
        run_eq += total >> 16;
    }
}

/// Why a top-k call was refused before launch.
#[derive(Debug, thiserror::Error)]
pub enum TopKError {
    /// The shape or the buffers do not fit together.
    #[error("top-k: {0}")]
    Shape(String),
    /// Compiling or launching failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl From<TopKError> for RuntimeError {
    fn from(e: TopKError) -> RuntimeError {
        match e {
            TopKError::Runtime(e) => e,
            TopKError::Shape(reason) => RuntimeError::InvalidInput {
                what: "top-k shape",
                reason,
            },
        }
    }
}

/// The most elements the index arithmetic of the kernels (u32) covers: scores, and the
/// candidate scratch (rows × blocks per row × chunk).
pub const MAX_ELEMENTS: u64 = 1 << 31;

/// Top-k selection per row, compiled for one device. Build once (JIT, cached), call
/// [`TopK::run`] every decode step.
pub struct TopK {
    hist: Kernel,
    filter: Kernel,
    refine: Kernel,
    write: Kernel,
    /// Columns per block (a multiple of 4); `None` picks one from the device's size with
    /// [`default_chunk`]. Smaller chunks mean more blocks per row.
    pub chunk: Option<u32>,
}

/// Blocks per multiprocessor the default chunk plans for: what fits of [`topk_filter`] (40
/// registers × 512 threads as NVRTC 13 compiles it for sm_90; [`topk_hist`], at 30, fits 4),
/// so that the two passes over the scores run in one wave, without a tail of a few blocks.
pub const BLOCKS_PER_SM: u32 = 3;

/// Columns per block without an override: `nb = ⌊BLOCKS_PER_SM · multiprocessors / rows⌋`
/// blocks per row (at least 1, at most one per [`TILE`] of columns), `⌈n / nb⌉` columns each,
/// rounded up to a multiple of 4. The candidate scratch then needs at most
/// `n + 4·⌈n / TILE⌉` slots per row.
pub fn default_chunk(rows: u32, n: u32, multiprocessors: u32) -> u32 {
    let fit = (BLOCKS_PER_SM * multiprocessors.max(1)) / rows.max(1);
    let nb = fit.min(n.div_ceil(TILE)).max(1);
    n.div_ceil(nb).div_ceil(4) * 4
}

impl TopK {
    /// Compiles the four kernels for `device`.
    pub fn new(device: &Device) -> Result<TopK, TopKError> {
        Ok(TopK {
            hist: topk_hist::spec().build(device)?,
            filter: topk_filter::spec().build(device)?,
            refine: topk_refine::spec().build(device)?,
            write: topk_write::spec().build(device)?,
            chunk: None,
        })
    }

    /// The chunk (columns per block) a call on `rows × n` scores uses.
    pub fn chunk_for(&self, rows: u32, n: u32) -> u32 {
        let sms = self.hist.device.multiprocessors();
        self.chunk
            .unwrap_or_else(|| default_chunk(rows, n, sms))
            .max(4)
            .div_ceil(4)
            * 4
    }

    /// For each of the `rows` rows of `n` scores (`scores[row·n + j]`, row-major; the buffer
    /// may be longer), writes the column indices of its `k` largest scores to
    /// `idx[row·k .. row·k + k]` (the buffer may be longer), ascending; ties go to the lower
    /// index, NaN counts as the smallest value (see the module docs). Needs `1 ≤ k ≤ n` and
    /// `rows ≤ 65535`. `scratch` grows as needed (and is left ready for the next call).
    ///
    /// Enqueues the four kernels on the device's stream and returns (asynchronous, like any
    /// launch); a refused shape returns [`TopKError::Shape`] before anything is launched.
    pub fn run(
        &self,
        scores: &DeviceBuffer<f32>,
        rows: u32,
        n: u32,
        k: u32,
        idx: &mut DeviceBuffer<u32>,
        scratch: &mut TopKScratch,
    ) -> Result<(), TopKError> {
        let stream = self.hist.device.default_stream();
        self.run_on(&stream, scores, rows, n, k, idx, scratch)
    }

    /// [`TopK::run`] on `stream` (e.g. a second stream that selects the next layer's keys
    /// while this layer attends). `scratch` must not be shared with work on other streams.
    #[allow(clippy::too_many_arguments)]
    pub fn run_on(
        &self,
        stream: &Stream,
        scores: &DeviceBuffer<f32>,
        rows: u32,
        n: u32,
        k: u32,
        idx: &mut DeviceBuffer<u32>,
        scratch: &mut TopKScratch,
    ) -> Result<(), TopKError> {
        let bad = |m: String| Err(TopKError::Shape(m));
        if rows == 0 || rows > 65_535 {
            return bad(format!("{rows} rows (1 ..= 65535)"));
        }
        if n == 0 {
            return bad("rows of 0 scores".into());
        }
        if k == 0 || k > n {
            return bad(format!("k = {k} of {n} scores per row (need 1 ≤ k ≤ n)"));
        }
        let total = rows as u64 * n as u64;
        if scores.len() < total as usize {
            return bad(format!(
                "`scores` holds {} values, {rows} rows of {n} need {total}",
                scores.len()
            ));
        }
        if idx.len() < rows as usize * k as usize {
            return bad(format!(
                "`idx` holds {} values, {rows} rows of k = {k} need {}",
                idx.len(),
                rows as u64 * k as u64
            ));
        }
        let chunk = self.chunk_for(rows, n);
        let nb = n.div_ceil(chunk);
        let padded = rows as u64 * nb as u64 * chunk as u64;
        if scores.len() as u64 > MAX_ELEMENTS || padded > MAX_ELEMENTS {
            return bad(format!(
                "{rows} rows of {n} scores (chunk {chunk}) exceed the {MAX_ELEMENTS} elements \
                 the kernels index"
            ));
        }
        if rows as u64 * k as u64 > MAX_ELEMENTS {
            return bad(format!(
                "{rows} rows of k = {k} exceed {MAX_ELEMENTS} outputs"
            ));
        }
        let device = self.hist.device.clone();
        scratch.ensure(&device, rows, padded as usize, nb)?;
        let s = scratch;
        let cfg = LaunchConfig {
            grid: (nb, rows, 1),
            block: (THREADS, 1, 1),
            dyn_shared_bytes: 0,
        };
        topk_hist::launch_on(
            &self.hist,
            stream,
            &cfg,
            scores,
            &mut s.hist,
            &mut s.state,
            n,
            k,
            chunk,
        )?;
        topk_filter::launch_on(
            &self.filter,
            stream,
            &cfg,
            scores,
            &mut s.hist,
            &mut s.state,
            &mut s.cand_idx,
            &mut s.cand_key,
            &mut s.counts,
            n,
            chunk,
        )?;
        topk_refine::launch_on(
            &self.refine,
            stream,
            &cfg,
            &s.cand_key,
            &mut s.counts,
            &mut s.hist,
            &mut s.state,
            chunk,
        )?;
        topk_write::launch_on(
            &self.write,
            stream,
            &cfg,
            &s.cand_idx,
            &s.cand_key,
            &s.counts,
            &s.state,
            idx,
            k,
            chunk,
        )?;
        Ok(())
    }
}

/// Device memory of [`TopK::run`], reused across calls: per-row histograms and state (which
/// every call leaves zeroed/overwritten for the next), per-block counts, and the candidates
/// (index and key) of every block. About `8 · rows · n` bytes of candidates plus 24 KiB per
/// row.
pub struct TopKScratch {
    hist: DeviceBuffer<u32>,
    state: DeviceBuffer<u32>,
    counts: DeviceBuffer<u32>,
    cand_idx: DeviceBuffer<u32>,
    cand_key: DeviceBuffer<u32>,
}

impl TopKScratch {
    /// Scratch for calls on up to `rows` rows of up to `n` scores with the default chunk
    /// ([`default_chunk`]); a call with a shape or chunk that needs more grows it.
    pub fn new(device: &Device, rows: u32, n: u32) -> Result<TopKScratch, RuntimeError> {
        let rows = rows.max(1) as usize;
        let nb = n.max(1).div_ceil(TILE) as usize;
        let padded = rows * (n.max(1) as usize + 4 * nb);
        Self::alloc(device, rows, padded, nb)
    }

    fn alloc(
        device: &Device,
        rows: usize,
        padded: usize,
        nb: usize,
    ) -> Result<TopKScratch, RuntimeError> {
        Ok(TopKScratch {
            hist: device.zeros(rows * HIST_WORDS as usize)?,
            state: device.zeros(rows * STATE_WORDS as usize)?,
            counts: device.zeros(rows * nb.max(1) * COUNT_WORDS as usize)?,
            cand_idx: device.zeros(padded.max(4))?,
            cand_key: device.zeros(padded.max(4))?,
        })
    }

    /// Grows (reallocates, zeroed) any buffer too small for `rows` rows, `padded` candidate
    /// slots and `nb` blocks per row.
    fn ensure(
        &mut self,
        device: &Device,
        rows: u32,
        padded: usize,
        nb: u32,
    ) -> Result<(), RuntimeError> {
        let rows = rows as usize;
        let nb = nb as usize;
        if self.hist.len() < rows * HIST_WORDS as usize
            || self.state.len() < rows * STATE_WORDS as usize
            || self.counts.len() < rows * nb * COUNT_WORDS as usize
            || self.cand_idx.len() < padded
        {
            let keep_rows = self.state.len() / STATE_WORDS as usize;
            let keep_nb = self.counts.len() / (COUNT_WORDS as usize * keep_rows.max(1));
            *self = Self::alloc(
                device,
                rows.max(keep_rows),
                padded.max(self.cand_idx.len()),
                nb.max(keep_nb),
            )?;
        }
        Ok(())
    }
}

pub mod checks;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_key_orders_like_the_floats() {
        let mut vals = vec![
            f32::NEG_INFINITY,
            -1e30,
            -1.0,
            -f32::MIN_POSITIVE,
            -1e-45,
            0.0,
            1e-45,
            f32::MIN_POSITIVE,
            0.5,
            1.0,
            3e38,
            f32::INFINITY,
        ];
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let f = f32::from_bits(x);
            if !f.is_nan() {
                vals.push(f);
            }
        }
        for a in &vals {
            for b in vals.iter().take(64) {
                assert_eq!(
                    sort_key(*a).cmp(&sort_key(*b)),
                    a.partial_cmp(b).unwrap(),
                    "{a} vs {b}"
                );
            }
            assert!(sort_key(f32::NAN) < sort_key(*a), "NaN below {a}");
        }
        assert_eq!(sort_key(-0.0), sort_key(0.0));
        assert_eq!(sort_key(f32::from_bits(0xffc0_0001)), 0);
    }

    #[test]
    fn default_chunks_fit_the_scratch() {
        for rows in [1u32, 2, 3, 8, 64, 100, 1000] {
            for n in [
                1u32,
                3,
                4,
                5,
                4095,
                4096,
                4097,
                32_768,
                100_003,
                131_072,
                1 << 22,
            ] {
                for sms in [1u32, 66, 132] {
                    let chunk = default_chunk(rows, n, sms);
                    let nb = n.div_ceil(chunk);
                    assert_eq!(chunk % 4, 0);
                    assert!(nb >= 1 && nb <= n.div_ceil(TILE), "{rows} {n} {sms}");
                    assert!(nb as u64 * chunk as u64 >= n as u64);
                    assert!(
                        nb as u64 * chunk as u64 <= n as u64 + 4 * n.div_ceil(TILE) as u64,
                        "rows {rows} n {n} sms {sms}: {nb} × {chunk}"
                    );
                }
            }
        }
        // the headline shape fills an H100/H200 (132 SMs) in one wave of 3 blocks per SM
        let chunk = default_chunk(64, 131_072, 132);
        assert_eq!(131_072u32.div_ceil(chunk) * 64, 384);
    }

    #[test]
    fn reference_takes_the_lower_index_on_ties() {
        let s = [1.0, 3.0, 3.0, f32::NAN, 2.0, 3.0, -0.0, 0.0];
        assert_eq!(reference(&s, 1, 8, 2), vec![1, 2]);
        assert_eq!(reference(&s, 1, 8, 4), vec![1, 2, 4, 5]);
        assert_eq!(reference(&s, 1, 8, 7), vec![0, 1, 2, 4, 5, 6, 7]);
        assert_eq!(reference(&s, 2, 4, 1), vec![1, 1]);
    }
}
