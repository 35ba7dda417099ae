//! The float64 reference of HATA's hash training: the loss of one KV head over a batch of
//! samples, its gradient with respect to `W`, the SGD step, and whole training runs over the
//! same batch plan as [`HashTrainer`](super::HashTrainer) — what the checks compare the
//! kernels against.

use super::{epoch_order, steps_per_epoch, window, HeadSamples, TrainOptions};

/// Weight of the similarity term `Σ s·‖h(q) − h(k)‖² / N`.
pub const SIMILARITY_WEIGHT: f64 = 0.01;
/// Weight of the balance term `‖mean(h(q) + h(k)) / rbit‖²`.
pub const BALANCE_WEIGHT: f64 = 1.0;
/// Weight of the orthogonality term `‖WᵀW − I‖_F`.
pub const ORTHOGONALITY_WEIGHT: f64 = 2.0;
/// The slope inside the sigmoid: `h(x) = 2·sigmoid(0.1·xW) − 1`.
pub const SLOPE: f64 = 0.1;

/// The three terms of the loss of one head over one batch (each already weighted).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossParts {
    /// `0.01·Σ s·‖h(q) − h(k)‖² / N`.
    pub similarity: f64,
    /// `1.0·‖mean(h(q) + h(k)) / rbit‖²`.
    pub balance: f64,
    /// `2.0·‖WᵀW − I‖_F`.
    pub orthogonality: f64,
}

impl LossParts {
    /// The loss: the sum of the three terms.
    pub fn total(&self) -> f64 {
        self.similarity + self.balance + self.orthogonality
    }
}

/// `sigmoid(0.1·p)`.
fn sigma(p: f64) -> f64 {
    1.0 / (1.0 + (-SLOPE * p).exp())
}

/// `x·W` for one row `x` (`dim` values) and `w` `[dim, rbit]`.
fn project(x: &[f32], w: &[f64], rbit: usize) -> Vec<f64> {
    let mut p = vec![0.0f64; rbit];
    for (d, &xv) in x.iter().enumerate() {
        let row = &w[d * rbit..][..rbit];
        for (acc, &wv) in p.iter_mut().zip(row) {
            *acc += xv as f64 * wv;
        }
    }
    p
}

/// The soft hash `h(x) = 2·sigmoid(0.1·xW) − 1` of one row.
pub fn soft_hash(x: &[f32], w: &[f64], rbit: usize) -> Vec<f64> {
    project(x, w, rbit)
        .into_iter()
        .map(|p| 2.0 * sigma(p) - 1.0)
        .collect()
}

/// `A = WᵀW − I` (`[rbit, rbit]`) of one head's `w` `[dim, rbit]`.
pub fn gram_minus_identity(w: &[f64], dim: usize, rbit: usize) -> Vec<f64> {
    let mut a = vec![0.0f64; rbit * rbit];
    for d in 0..dim {
        let row = &w[d * rbit..][..rbit];
        for r in 0..rbit {
            let wr = row[r];
            for c in 0..rbit {
                a[r * rbit + c] += wr * row[c];
            }
        }
    }
    for r in 0..rbit {
        a[r * rbit + r] -= 1.0;
    }
    a
}

/// The loss of one head's weights `w` (`[dim, rbit]`) over the samples `batch` (indices
/// into `samples`), without the gradient.
pub fn loss(w: &[f64], rbit: usize, samples: &HeadSamples, batch: &[u32]) -> LossParts {
    loss_and_grad_weighted(w, rbit, samples, batch, WEIGHTS, false).0
}

/// The loss of one head's weights `w` (`[dim, rbit]`) over the samples `batch` (indices
/// into `samples`; `N = batch.len()`) and its gradient `dL/dW` (`[dim, rbit]`, without
/// weight decay, which belongs to the optimiser):
///
/// - similarity: `dL/dh(q_i) = 0.02·s_i·(h(q_i) − h(k_i))/N`, the negative for `h(k_i)`;
/// - balance, with `m = Σ_i (h(q_i) + h(k_i)) / (N·rbit)`: `dL/dh(q_i) = dL/dh(k_i) = 2m/(N·rbit)`;
/// - through `P = xW`: `dh/dP = 0.2·σ(0.1P)·(1 − σ(0.1P))`, `dL/dW += xᵀ·dL/dP`;
/// - orthogonality, with `A = WᵀW − I`: `dL/dW += 2.0·2·W·A/‖A‖_F` (0 when `A = 0`).
///
/// An empty batch has similarity and balance 0.
pub fn loss_and_grad(
    w: &[f64],
    rbit: usize,
    samples: &HeadSamples,
    batch: &[u32],
) -> (LossParts, Vec<f64>) {
    let (parts, grad) = loss_and_grad_weighted(w, rbit, samples, batch, WEIGHTS, true);
    (parts, grad.unwrap_or_default())
}

/// The three weights of the pipeline's loss.
const WEIGHTS: [f64; 3] = [SIMILARITY_WEIGHT, BALANCE_WEIGHT, ORTHOGONALITY_WEIGHT];

/// [`loss_and_grad`] with the three term weights given (the tests check each term alone).
pub(super) fn loss_and_grad_weighted(
    w: &[f64],
    rbit: usize,
    samples: &HeadSamples,
    batch: &[u32],
    weights: [f64; 3],
    want_grad: bool,
) -> (LossParts, Option<Vec<f64>>) {
    let [similarity_weight, balance_weight, orthogonality_weight] = weights;
    let dim = samples.dim;
    let n = batch.len().max(1) as f64;
    let rows = |i: u32| -> (&[f32], &[f32], f64) {
        let i = i as usize;
        let q = samples.query[i] as usize;
        let k = samples.key[i] as usize;
        (
            &samples.queries[q * dim..][..dim],
            &samples.keys[k * dim..][..dim],
            samples.label[i] as f64,
        )
    };
    // forward
    let mut hqs = Vec::with_capacity(batch.len());
    let mut hks = Vec::with_capacity(batch.len());
    let mut similarity = 0.0f64;
    let mut colsum = vec![0.0f64; rbit];
    for &i in batch {
        let (q, k, s) = rows(i);
        let hq = soft_hash(q, w, rbit);
        let hk = soft_hash(k, w, rbit);
        similarity += s * hq
            .iter()
            .zip(&hk)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>();
        for r in 0..rbit {
            colsum[r] += hq[r] + hk[r];
        }
        hqs.push(hq);
        hks.push(hk);
    }
    let m: Vec<f64> = colsum.iter().map(|c| c / (n * rbit as f64)).collect();
    let a = gram_minus_identity(w, dim, rbit);
    let norm_a = a.iter().map(|v| v * v).sum::<f64>().sqrt();
    let parts = LossParts {
        similarity: similarity_weight * similarity / n,
        balance: balance_weight * m.iter().map(|v| v * v).sum::<f64>(),
        orthogonality: orthogonality_weight * norm_a,
    };
    if !want_grad {
        return (parts, None);
    }
    // backward
    let mut grad = vec![0.0f64; dim * rbit];
    let c2: Vec<f64> = m
        .iter()
        .map(|mr| balance_weight * 2.0 * mr / (n * rbit as f64))
        .collect();
    let mut dpq = vec![0.0f64; rbit];
    let mut dpk = vec![0.0f64; rbit];
    for (b, &i) in batch.iter().enumerate() {
        let (q, k, s) = rows(i);
        let (hq, hk) = (&hqs[b], &hks[b]);
        for r in 0..rbit {
            let diff = similarity_weight * 2.0 * s * (hq[r] - hk[r]) / n;
            // σ = (h + 1)/2, so dh/dP = 0.2·σ(1 − σ)
            let (sq, sk) = ((hq[r] + 1.0) / 2.0, (hk[r] + 1.0) / 2.0);
            dpq[r] = (diff + c2[r]) * 2.0 * SLOPE * sq * (1.0 - sq);
            dpk[r] = (c2[r] - diff) * 2.0 * SLOPE * sk * (1.0 - sk);
        }
        for d in 0..dim {
            let (xq, xk) = (q[d] as f64, k[d] as f64);
            let g = &mut grad[d * rbit..][..rbit];
            for r in 0..rbit {
                g[r] += xq * dpq[r] + xk * dpk[r];
            }
        }
    }
    add_orthogonality_gradient(&mut grad, w, &a, rbit, orthogonality_weight);
    (parts, Some(grad))
}

/// Adds the gradient of `weight·‖A‖_F` (`A = WᵀW − I`, given as `a`) to `grad`:
/// `2·weight·W·A/‖A‖_F`, nothing when `A = 0`. `w` and `grad` are one head's `[dim, rbit]`.
pub(super) fn add_orthogonality_gradient(
    grad: &mut [f64],
    w: &[f64],
    a: &[f64],
    rbit: usize,
    weight: f64,
) {
    let norm_a = a.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm_a == 0.0 {
        return;
    }
    let scale = 2.0 * weight / norm_a;
    for (g, wrow) in grad.chunks_exact_mut(rbit).zip(w.chunks_exact(rbit)) {
        for (r, gr) in g.iter_mut().enumerate() {
            let wa: f64 = (0..rbit).map(|b| wrow[b] * a[b * rbit + r]).sum();
            *gr += scale * wa;
        }
    }
}

/// One SGD step with PyTorch's semantics (no dampening, no Nesterov):
/// `d = grad + weight_decay·w`; `velocity = d` at the first step, else
/// `momentum·velocity + d`; `w −= lr·velocity`.
pub fn sgd_step(
    w: &mut [f64],
    velocity: &mut [f64],
    grad: &[f64],
    first: bool,
    options: &TrainOptions,
) {
    let (lr, mu, wd) = (
        options.lr as f64,
        options.momentum as f64,
        options.weight_decay as f64,
    );
    for ((wv, v), g) in w.iter_mut().zip(velocity.iter_mut()).zip(grad) {
        let d = g + wd * *wv;
        *v = if first { d } else { mu * *v + d };
        *wv -= lr * *v;
    }
}

/// A whole training run in float64 over the same batch plan as the GPU trainer: `initial`
/// (`[kv_heads, dim, rbit]`) trained for `options.epochs` epochs of
/// [`steps_per_epoch`] mini-batches each. Returns the final weights and the loss of every
/// step and head (`[steps, kv_heads]`, before that step's update).
pub fn train(
    heads: &[HeadSamples],
    initial: &[f64],
    options: &TrainOptions,
) -> (Vec<f64>, Vec<f64>) {
    let rbit = options.rbit as usize;
    let dim = heads.first().map_or(0, |h| h.dim);
    let per_head = dim * rbit;
    let mut w = initial.to_vec();
    let mut velocity = vec![0.0f64; w.len()];
    let sizes: Vec<usize> = heads.iter().map(|h| h.len()).collect();
    let steps = steps_per_epoch(&sizes, options.batch as usize);
    let mut losses = Vec::new();
    for epoch in 0..options.epochs {
        let orders: Vec<Vec<u32>> = sizes
            .iter()
            .enumerate()
            .map(|(h, &n)| epoch_order(n, options.seed, epoch, h))
            .collect();
        for t in 0..steps {
            for (h, samples) in heads.iter().enumerate() {
                let batch = &orders[h][window(sizes[h], t, steps)];
                let wh = &mut w[h * per_head..][..per_head];
                let (parts, grad) = loss_and_grad(wh, rbit, samples, batch);
                losses.push(parts.total());
                sgd_step(
                    wh,
                    &mut velocity[h * per_head..][..per_head],
                    &grad,
                    epoch == 0 && t == 0,
                    options,
                );
            }
        }
    }
    (w, losses)
}
