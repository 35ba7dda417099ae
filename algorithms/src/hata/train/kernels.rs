//! The kernels of one optimiser step of HATA's hash training, for every KV head at once
//! (grid `y` or `x` = KV head). A step is four launches:
//!
//! 1. [`hash_train_forward`]: `h(q)` and `h(k)` of the step's samples, the similarity sum
//!    `Σ s·‖h(q) − h(k)‖²` and the column sums `Σ h(q) + h(k)` (atomics);
//! 2. [`hash_train_gram`]: `A = WᵀW − I` and `‖A‖²_F` (atomics);
//! 3. [`hash_train_update`]: the gradient `Σ qᵀ·dP(q) + kᵀ·dP(k) + 4·W·A/‖A‖_F` (shared-memory
//!    tiles), weight decay and the SGD momentum update into a second copy of `W`;
//! 4. [`hash_train_finish`]: the step's loss into the history, and the accumulators zeroed.
//!
//! The samples of KV head `h` are `order[offsets[h] .. offsets[h + 1]]` (indices into the
//! concatenated sample arrays); a step takes window `step` of `steps` equal windows of them
//! ([`window_start`]). Per-head scratch rows (`hq`, `hk`) are `[kv_heads, batch, RBIT]`.

use crate::common::warp_sum;
use kiln_dsl::{device, kernel};

/// Samples each warp of [`hash_train_forward`] takes.
pub const FORWARD_ROWS: u32 = 4;
/// Warps per block of [`hash_train_forward`].
pub const FORWARD_WARPS: u32 = 4;
/// Output tile of a block of [`hash_train_update`]: `TILE` rows of `W` by `TILE` columns.
pub const TILE: u32 = 32;

/// First sample (position in `order`) of window `step` of `steps` of head `h`: the head's
/// `n` samples split into `steps` windows at `⌊t·n / steps⌋`.
#[device]
pub fn window_start(offsets: &[u32], h: u32, step: u32, steps: u32) -> u32 {
    let n = offsets[h + 1] - offsets[h];
    offsets[h] + ((step as u64 * n as u64) / steps as u64) as u32
}

/// `h(P) = 2·sigmoid(0.1·P) − 1`.
#[device]
pub fn hash_squash(p: f32) -> f32 {
    2.0f32 / (1.0f32 + (-0.1f32 * p).exp()) - 1.0f32
}

/// Forward pass of one step. Warp `w` of block `(x, h)` takes the 4 samples
/// `j = 4·(4x + w) ..` of head `h`'s window; lane `l` owns columns `l + 32·c`. For each
/// sample `s = order[lo + j]` it projects its query row `queries[sample_query[s]]` and key
/// row `keys[sample_key[s]]` (`dim` values each) through `W` of head `h` (`w` is
/// `[kv_heads, dim, RBIT]`), writes `h(q)`, `h(k)` to row `h·batch + j` of `hq`, `hk`, and
/// adds `label[s]·‖h(q) − h(k)‖²` to `stats[2h]` and `h(q) + h(k)` to `msum[h·RBIT ..]`.
///
/// Grid `(⌈batch / 16⌉, kv_heads)`, 128 threads.
#[kernel(threads = 128, example(RBIT = 128), example(RBIT = 256))]
pub fn hash_train_forward<const RBIT: u32>(
    queries: &[f32],
    keys: &[f32],
    w: &[f32],
    sample_query: &[u32],
    sample_key: &[u32],
    label: &[f32],
    order: &[u32],
    offsets: &[u32],
    hq: &mut [f32],
    hk: &mut [f32],
    stats: &mut [f32],
    msum: &mut [f32],
    dim: u32,
    step: u32,
    steps: u32,
    batch: u32,
) {
    let lane = lane_id();
    let h = block_idx().y;
    let lo: u32 = window_start(offsets, h, step, steps);
    let hi: u32 = window_start(offsets, h, step + 1, steps);
    let count = hi - lo;
    let j0 = (block_idx().x * 4 + warp_id()) * 4;
    if j0 >= count {
        return;
    }
    // the rows this warp projects (a missing sample repeats the last one, and is not used)
    let mut q_at = [0u64; 4];
    let mut k_at = [0u64; 4];
    for r in 0..4u32 {
        let s = order[lo + (j0 + r).min(count - 1)];
        q_at[r] = sample_query[s] as u64 * dim as u64;
        k_at[r] = sample_key[s] as u64 * dim as u64;
    }
    let mut pq = [[0.0f32; RBIT / 32]; 4];
    let mut pk = [[0.0f32; RBIT / 32]; 4];
    let w_head = h * dim * RBIT;
    for d in 0..dim {
        let mut wv = [0.0f32; RBIT / 32];
        for c in 0..RBIT / 32 {
            wv[c] = w[w_head + d * RBIT + c * 32 + lane];
        }
        for r in 0..4u32 {
            let xq = queries[q_at[r] + d as u64];
            let xk = keys[k_at[r] + d as u64];
            for c in 0..RBIT / 32 {
                pq[r][c] += xq * wv[c];
                pk[r][c] += xk * wv[c];
            }
        }
    }
    let mut sim = 0.0f32;
    let mut part = [0.0f32; RBIT / 32];
    for r in 0..4u32 {
        let j = j0 + r;
        if j < count {
            let s_label = label[order[lo + j]];
            let row = (h * batch + j) * RBIT;
            for c in 0..RBIT / 32 {
                let a: f32 = hash_squash(pq[r][c]);
                let b: f32 = hash_squash(pk[r][c]);
                hq[row + c * 32 + lane] = a;
                hk[row + c * 32 + lane] = b;
                sim += s_label * (a - b) * (a - b);
                part[c] += a + b;
            }
        }
    }
    let total: f32 = warp_sum(sim);
    if lane == 0 {
        atomic_add(&mut stats[h * 2], total);
    }
    for c in 0..RBIT / 32 {
        atomic_add(&mut msum[h * RBIT + c * 32 + lane], part[c]);
    }
}

/// The launch shape of [`hash_train_gram`] for `kv_heads` heads of `rbit` bits.
pub fn gram_config(rbit: u32, kv_heads: u32) -> kiln_runtime::LaunchConfig {
    kiln_runtime::LaunchConfig {
        grid: ((rbit * rbit).div_ceil(256), kv_heads, 1),
        block: (256, 1, 1),
        dyn_shared_bytes: 0,
    }
}

/// `A = WᵀW − I` per head (`a` is `[kv_heads, rbit, rbit]`) and `‖A‖²_F` added to
/// `stats[2h + 1]`. Thread `i` of head `h` computes `A[i / rbit, i % rbit]`.
///
/// Grid `(⌈rbit² / 256⌉, kv_heads)`, 256 threads.
#[kernel(threads = 256)]
pub fn hash_train_gram(w: &[f32], a: &mut [f32], stats: &mut [f32], dim: u32, rbit: u32) {
    let h = block_idx().y;
    let i = block_idx().x * 256 + thread_idx().x;
    let mut sq = 0.0f32;
    if i < rbit * rbit {
        let r = i / rbit;
        let c = i % rbit;
        let base = h * dim * rbit;
        let mut acc = 0.0f32;
        for d in 0..dim {
            acc += w[base + d * rbit + r] * w[base + d * rbit + c];
        }
        if r == c {
            acc -= 1.0;
        }
        a[h * rbit * rbit + i] = acc;
        sq = acc * acc;
    }
    let total: f32 = warp_sum(sq);
    if lane_id() == 0 {
        atomic_add(&mut stats[h * 2 + 1], total);
    }
}

/// The gradient of the loss for a 32 × 32 tile of `W` of head `h`, and the SGD update.
///
/// With `n` the window's sample count, `m = msum / (n·rbit)` and `c = 2m/(n·rbit)`, each
/// sample gives `dL/dh(q) = 0.02·s·(h(q) − h(k))/n + c`, `dL/dh(k) = −0.02·s·(h(q) − h(k))/n
/// + c`, and `dP = dL/dh · 0.05·(1 − h)(1 + h)` (= `0.2·σ(1 − σ)`). The gradient is
/// `G = Σ qᵀ·dP(q) + kᵀ·dP(k) + (4/‖A‖_F)·W·A` (`‖A‖_F` from `stats[2h + 1]`; the last term
/// is dropped when `A = 0`); then with PyTorch's SGD semantics `d = G + weight_decay·W`,
/// `v = d` at the first step (`first`) else `momentum·v + d`, `W' = W − lr·v`: `velocity`
/// is updated in place and `W'` is written to `w_next` (other tiles still read `w`).
///
/// Thread `(tx, ty) = (t % 32, t / 32)` owns column `r0 + tx` and rows `d0 + ty + 8i`,
/// `i < 4`; the samples go through shared memory 32 at a time (their query and key rows and
/// their `dP`), then `W`'s rows and `A`'s columns. Block `(x, h)` takes tile
/// `(d0, r0) = (32·(x / (rbit/32)), 32·(x % (rbit/32)))`.
///
/// Grid `(⌈dim / 32⌉·rbit/32, kv_heads)`, 256 threads; `rbit` a multiple of 32.
#[kernel(threads = 256)]
pub fn hash_train_update(
    queries: &[f32],
    keys: &[f32],
    sample_query: &[u32],
    sample_key: &[u32],
    label: &[f32],
    order: &[u32],
    offsets: &[u32],
    hq: &[f32],
    hk: &[f32],
    msum: &[f32],
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
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    first: bool,
) {
    // sample rows [sample][d] and their dP [sample][r]; reused for W rows and A
    let xq = shared::<[[f32; 33]; 32]>();
    let xk = shared::<[[f32; 33]; 32]>();
    let gq = shared::<[[f32; 33]; 32]>();
    let gk = shared::<[[f32; 33]; 32]>();
    let t = thread_idx().x;
    let tx = t % 32;
    let ty = t / 32;
    let h = block_idx().y;
    let tiles_r = rbit / 32;
    let d0 = (block_idx().x / tiles_r) * 32;
    let r0 = (block_idx().x % tiles_r) * 32;
    let lo: u32 = window_start(offsets, h, step, steps);
    let hi: u32 = window_start(offsets, h, step + 1, steps);
    let count = hi - lo;
    let n = count.max(1) as f32;
    let c1 = 0.02f32 / n;
    let c2 = 2.0f32 / (n * rbit as f32 * n * rbit as f32);
    let r = r0 + tx;
    let m2 = c2 * msum[h * rbit + r];
    let mut acc = [0.0f32; 4];
    for j0 in (0..count).step_by(32) {
        for i in 0..4u32 {
            let row = ty + 8 * i;
            let j = j0 + row;
            let mut vq = 0.0f32;
            let mut vk = 0.0f32;
            let mut dq = 0.0f32;
            let mut dk = 0.0f32;
            if j < count {
                let s = order[lo + j];
                if d0 + tx < dim {
                    vq = queries[sample_query[s] as u64 * dim as u64 + (d0 + tx) as u64];
                    vk = keys[sample_key[s] as u64 * dim as u64 + (d0 + tx) as u64];
                }
                let at = (h * batch + j) * rbit + r;
                let a_q = hq[at];
                let a_k = hk[at];
                let diff = c1 * label[s] * (a_q - a_k);
                dq = (diff + m2) * 0.05 * (1.0 - a_q) * (1.0 + a_q);
                dk = (m2 - diff) * 0.05 * (1.0 - a_k) * (1.0 + a_k);
            }
            xq[row][tx] = vq;
            xk[row][tx] = vk;
            gq[row][tx] = dq;
            gk[row][tx] = dk;
        }
        sync_threads();
        for jj in 0..32u32 {
            let dq = gq[jj][tx];
            let dk = gk[jj][tx];
            for i in 0..4u32 {
                acc[i] += xq[jj][ty + 8 * i] * dq + xk[jj][ty + 8 * i] * dk;
            }
        }
        sync_threads();
    }
    // orthogonality: Σ_b W[d, b]·A[b, r]
    let mut orth = [0.0f32; 4];
    let w_head = h * dim * rbit;
    for b0 in (0..rbit).step_by(32) {
        for i in 0..4u32 {
            let row = ty + 8 * i;
            let mut wv = 0.0f32;
            if d0 + row < dim {
                wv = w[w_head + (d0 + row) * rbit + b0 + tx];
            }
            // transposed: xq[b][d] = W[d0 + d, b0 + b]
            xq[tx][row] = wv;
            gq[row][tx] = a[(h * rbit + b0 + row) * rbit + r];
        }
        sync_threads();
        for bb in 0..32u32 {
            let av = gq[bb][tx];
            for i in 0..4u32 {
                orth[i] += xq[bb][ty + 8 * i] * av;
            }
        }
        sync_threads();
    }
    let norm = stats[h * 2 + 1].sqrt();
    let scale = if norm > 0.0 { 4.0f32 / norm } else { 0.0f32 };
    for i in 0..4u32 {
        let d = d0 + ty + 8 * i;
        if d < dim {
            let at = w_head + d * rbit + r;
            let grad = acc[i] + scale * orth[i];
            sgd_update(
                w,
                w_next,
                velocity,
                at,
                grad,
                lr,
                momentum,
                weight_decay,
                first,
            );
        }
    }
}

/// PyTorch's SGD step for element `at` of the weights: `d = grad + weight_decay·w`, `v = d`
/// at the first step (`first`) else `momentum·v + d` (in `velocity`), `w' = w − lr·v` into
/// `w_next`.
#[device]
pub fn sgd_update(
    w: &[f32],
    w_next: &mut [f32],
    velocity: &mut [f32],
    at: u32,
    grad: f32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    first: bool,
) {
    let wv = w[at];
    let g = grad + weight_decay * wv;
    let v = if first {
        g
    } else {
        momentum * velocity[at] + g
    };
    velocity[at] = v;
    w_next[at] = wv - lr * v;
}

/// The loss of the step for head `h = block_idx().x`:
/// `0.01·stats[2h]/n + ‖msum_h/(n·rbit)‖² + 2·√stats[2h + 1]`, written to
/// `losses[record·kv_heads + h]`; then `stats` and `msum` of the head are zeroed for the next
/// step. Grid `kv_heads`, 256 threads.
#[kernel(threads = 256)]
pub fn hash_train_finish(
    offsets: &[u32],
    stats: &mut [f32],
    msum: &mut [f32],
    losses: &mut [f32],
    rbit: u32,
    step: u32,
    steps: u32,
    record: u32,
) {
    let part = shared::<[f32; 8]>();
    let h = block_idx().x;
    let t = thread_idx().x;
    let lo: u32 = window_start(offsets, h, step, steps);
    let hi: u32 = window_start(offsets, h, step + 1, steps);
    let count = hi - lo;
    let n = count.max(1) as f32;
    let inv = 1.0f32 / (n * rbit as f32);
    let mut v = 0.0f32;
    for r in (t..rbit).step_by(256) {
        let m = msum[h * rbit + r] * inv;
        v += m * m;
        msum[h * rbit + r] = 0.0;
    }
    let s: f32 = warp_sum(v);
    if lane_id() == 0 {
        part[warp_id()] = s;
    }
    sync_threads();
    if t == 0 {
        let mut balance = 0.0f32;
        for i in 0..8u32 {
            balance += part[i];
        }
        losses[record * grid_dim().x + h] =
            0.01 * stats[h * 2] / n + balance + 2.0 * stats[h * 2 + 1].sqrt();
        stats[h * 2] = 0.0;
        stats[h * 2 + 1] = 0.0;
    }
}
