//! A pairwise ranking objective for HATA's hash weights, the alternative to the paper's loss
//! ([`Objective::Ranking`](super::Objective)), and its float64 reference: pairs, loss,
//! gradient and whole training runs over the same batch plan as the kernels
//! ([`super::rank_kernels`]).
//!
//! # Why
//!
//! The paper's loss learns no more than a random tight frame (bench-results/
//! cpu-fidelity-2026-12-04): on the orthogonality term's minimum set its similarity term is a
//! constant. This objective scores keys the way HATA's selection does and asks for the
//! selection's order directly. With the soft hash of a row on its unit direction,
//! `h(x) = tanh(τ·√D·(x/‖x‖)·W)` (its signs are the code bits; `τ → ∞` gives the codes), the
//! soft HATA score of key `x` for query `q` is `f(q, x) = (‖x‖/ν)·h(q)·h(x)/rbit` (`ν` the
//! head's mean key norm, so that `γ` does not depend on the activations' scale). A *pair*
//! is a relevant key `p` of a query (label > 0) and a key `o` of the same query ranked below
//! it by the exact score (a less relevant or an irrelevant one), weighted by
//! `c = label(p) / mean positive label`. Over the `P` pairs of a step:
//!
//! ```text
//! L = Σ c·softplus(γ·(f(q, o) − f(q, p))) / P  +  λ·‖WᵀW − I‖_F
//! ```
//!
//! The orthogonality term (weight `λ`, default 0.1, against the paper's 2) only keeps `W`'s
//! scale in range; the ranking term is free to make `W` anisotropic.
//!
//! # Pairs
//!
//! An epoch visits every positive sample of a head once, in a seeded shuffle, each with one
//! partner drawn uniformly from the samples of its query that rank below it ([`epoch_pairs`]);
//! the epoch's pairs are split into the same lockstep windows as the paper's samples
//! ([`window`]).

use super::reference::{add_orthogonality_gradient, gram_minus_identity, sgd_step};
use super::{epoch_order, steps_per_epoch, window, HeadSamples, Rng, TrainOptions};

/// Settings of the ranking objective.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RankOptions {
    /// Slope `τ` of the soft hash `tanh(τ·√D·x̂·W)`: 1.
    pub tau: f32,
    /// Sharpness `γ` of the pair loss `softplus(γ·(f_o − f_p))`: 32.
    pub gamma: f32,
    /// Weight `λ` of `‖WᵀW − I‖_F`: 0.1.
    pub orthogonality: f32,
}

impl Default for RankOptions {
    fn default() -> RankOptions {
        RankOptions {
            tau: 1.0,
            gamma: 32.0,
            orthogonality: 0.1,
        }
    }
}

impl RankOptions {
    /// Checks that every setting is finite, `τ` and `γ` positive and `λ ≥ 0`.
    pub(super) fn validate(&self) -> Result<(), String> {
        let ok = self.tau > 0.0
            && self.gamma > 0.0
            && self.orthogonality >= 0.0
            && [self.tau, self.gamma, self.orthogonality]
                .iter()
                .all(|v| v.is_finite());
        if ok {
            Ok(())
        } else {
            Err(format!(
                "ranking τ {}, γ {} (both > 0) and orthogonality {} (≥ 0) must be finite",
                self.tau, self.gamma, self.orthogonality
            ))
        }
    }
}

/// One pair of a head: sample indices of the relevant key and of a key its query ranks
/// below it, and the pair's weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pair {
    /// The relevant sample (label > 0).
    pub positive: u32,
    /// A sample of the same query with a lower label.
    pub other: u32,
    /// `label(positive) / mean label of the head's positives`.
    pub weight: f32,
}

/// The pairs of epoch `epoch` of head `head`: every positive sample once, in the order of a
/// seeded shuffle ([`epoch_order`] over the positives), each with a partner drawn uniformly
/// (stream `(seed, epoch, head)`) from its query's samples with a lower label (ties of equal
/// labels are not pairs). A positive without such a sample has no pair.
pub fn epoch_pairs(samples: &HeadSamples, seed: u64, epoch: u32, head: usize) -> Vec<Pair> {
    let nq = samples.n_queries();
    let mut by_query: Vec<Vec<u32>> = vec![Vec::new(); nq];
    for i in 0..samples.len() {
        by_query[samples.query[i] as usize].push(i as u32);
    }
    // each query's samples by falling label (ties: lower index first); `below[i]` is where
    // the labels strictly lower than sample i's start in its query's list
    let mut below = vec![0usize; samples.len()];
    for list in &mut by_query {
        list.sort_by(|&a, &b| {
            samples.label[b as usize]
                .total_cmp(&samples.label[a as usize])
                .then(a.cmp(&b))
        });
        let mut start = list.len();
        for at in (0..list.len()).rev() {
            let i = list[at] as usize;
            if at + 1 < list.len() && samples.label[list[at + 1] as usize] < samples.label[i] {
                start = at + 1;
            }
            below[i] = start;
        }
    }
    let positives: Vec<u32> = (0..samples.len() as u32)
        .filter(|&i| samples.label[i as usize] > 0.0)
        .collect();
    if positives.is_empty() {
        return Vec::new();
    }
    let mean = positives
        .iter()
        .map(|&i| samples.label[i as usize] as f64)
        .sum::<f64>()
        / positives.len() as f64;
    let mut rng = Rng::stream(seed, &[5, epoch as u64, head as u64]);
    epoch_order(positives.len(), seed, epoch, head)
        .into_iter()
        .filter_map(|o| {
            let i = positives[o as usize];
            let list = &by_query[samples.query[i as usize] as usize];
            let start = below[i as usize];
            (start < list.len()).then(|| Pair {
                positive: i,
                other: list[start + rng.below(list.len() - start)],
                weight: (samples.label[i as usize] as f64 / mean) as f32,
            })
        })
        .collect()
}

/// The mean L2 norm `ν` of a head's key rows (1 without keys or when every key is 0).
pub fn mean_key_norm(samples: &HeadSamples) -> f64 {
    let d = samples.dim.max(1);
    let n = samples.n_keys();
    let total: f64 = samples
        .keys
        .chunks_exact(d)
        .map(|k| k.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt())
        .sum();
    if n == 0 || total == 0.0 {
        1.0
    } else {
        total / n as f64
    }
}

/// The two terms of the ranking loss of one head over one batch of pairs (each weighted).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RankParts {
    /// `Σ c·softplus(γ·(f_o − f_p)) / P`.
    pub ranking: f64,
    /// `λ·‖WᵀW − I‖_F`.
    pub orthogonality: f64,
}

impl RankParts {
    /// The loss: the sum of the two terms.
    pub fn total(&self) -> f64 {
        self.ranking + self.orthogonality
    }
}

/// A row's unit direction, its norm, and its soft hash `tanh(τ·√D·x̂·W)`.
fn unit_hash(x: &[f32], w: &[f64], rbit: usize, slope: f64) -> (Vec<f64>, f64, Vec<f64>) {
    let norm = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    let u: Vec<f64> = x.iter().map(|&v| v as f64 * inv).collect();
    let mut h = vec![0.0f64; rbit];
    for (d, &ud) in u.iter().enumerate() {
        for (acc, &wv) in h.iter_mut().zip(&w[d * rbit..][..rbit]) {
            *acc += ud * wv;
        }
    }
    h.iter_mut().for_each(|v| *v = (slope * *v).tanh());
    (u, norm, h)
}

/// `log(1 + e^x)` without overflow.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// The ranking loss of one head's weights `w` (`[dim, rbit]`) over `pairs` (`P =
/// pairs.len()`), `nu` the head's mean key norm, and its gradient `dL/dW` when `want_grad`
/// (without weight decay). With `δ = γ·(f_o − f_p)`, `g = c·γ·sigmoid(δ)/P`, `a_x = ‖x‖/ν`:
///
/// - `dL/dh(q) = g·(a_o·h(o) − a_p·h(p))/rbit`, `dL/dh(p) = −g·a_p·h(q)/rbit`,
///   `dL/dh(o) = g·a_o·h(q)/rbit`;
/// - through `z = τ·√D·x̂·W`: `dh/dz = 1 − h²`, `dL/dW += τ·√D·x̂ᵀ·dL/dz` for each row;
/// - orthogonality, `A = WᵀW − I`: `dL/dW += 2λ·W·A/‖A‖_F` (0 when `A = 0`).
pub fn loss_and_grad(
    w: &[f64],
    rbit: usize,
    samples: &HeadSamples,
    pairs: &[Pair],
    nu: f64,
    options: &RankOptions,
    want_grad: bool,
) -> (RankParts, Option<Vec<f64>>) {
    let dim = samples.dim;
    let slope = options.tau as f64 * (dim as f64).sqrt();
    let gamma = options.gamma as f64;
    let n = pairs.len().max(1) as f64;
    let row = |rows: &[f32], i: u32| -> Vec<f32> { rows[i as usize * dim..][..dim].to_vec() };
    let mut ranking = 0.0f64;
    let mut grad = vec![0.0f64; if want_grad { dim * rbit } else { 0 }];
    for pair in pairs {
        let (p, o) = (pair.positive as usize, pair.other as usize);
        let (uq, _, hq) = unit_hash(&row(&samples.queries, samples.query[p]), w, rbit, slope);
        let (up, np, hp) = unit_hash(&row(&samples.keys, samples.key[p]), w, rbit, slope);
        let (uo, no, ho) = unit_hash(&row(&samples.keys, samples.key[o]), w, rbit, slope);
        let (ap, ao) = (np / nu, no / nu);
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let fp = ap * dot(&hq, &hp) / rbit as f64;
        let fo = ao * dot(&hq, &ho) / rbit as f64;
        let delta = gamma * (fo - fp);
        let c = pair.weight as f64;
        ranking += c * softplus(delta) / n;
        if !want_grad {
            continue;
        }
        let g = c * gamma / (1.0 + (-delta).exp()) / n;
        for r in 0..rbit {
            let dq = g * (ao * ho[r] - ap * hp[r]) / rbit as f64 * (1.0 - hq[r] * hq[r]);
            let dp = -g * ap * hq[r] / rbit as f64 * (1.0 - hp[r] * hp[r]);
            let dk = g * ao * hq[r] / rbit as f64 * (1.0 - ho[r] * ho[r]);
            for d in 0..dim {
                grad[d * rbit + r] += slope * (uq[d] * dq + up[d] * dp + uo[d] * dk);
            }
        }
    }
    let a = gram_minus_identity(w, dim, rbit);
    let norm_a = a.iter().map(|v| v * v).sum::<f64>().sqrt();
    let lambda = options.orthogonality as f64;
    let parts = RankParts {
        ranking,
        orthogonality: lambda * norm_a,
    };
    if !want_grad {
        return (parts, None);
    }
    add_orthogonality_gradient(&mut grad, w, &a, rbit, lambda);
    (parts, Some(grad))
}

/// A whole ranking run in float64 over the kernels' batch plan: per epoch each head's
/// [`epoch_pairs`], split into [`steps_per_epoch`] windows of at most `options.batch` pairs
/// (lockstep over the heads), one SGD step ([`sgd_step`]) per window. Returns the final
/// weights and the loss of every step and head (`[steps, kv_heads]`, before the update).
pub fn train(
    heads: &[HeadSamples],
    initial: &[f64],
    options: &TrainOptions,
    rank: &RankOptions,
) -> (Vec<f64>, Vec<f64>) {
    let rbit = options.rbit as usize;
    let dim = heads.first().map_or(0, |h| h.dim);
    let per_head = dim * rbit;
    let nus: Vec<f64> = heads.iter().map(mean_key_norm).collect();
    let mut w = initial.to_vec();
    let mut velocity = vec![0.0f64; w.len()];
    let mut losses = Vec::new();
    for epoch in 0..options.epochs {
        let pairs: Vec<Vec<Pair>> = heads
            .iter()
            .enumerate()
            .map(|(h, s)| epoch_pairs(s, options.seed, epoch, h))
            .collect();
        let sizes: Vec<usize> = pairs.iter().map(Vec::len).collect();
        let steps = steps_per_epoch(&sizes, options.batch as usize);
        for t in 0..steps {
            for (h, samples) in heads.iter().enumerate() {
                let batch = &pairs[h][window(sizes[h], t, steps)];
                let wh = &mut w[h * per_head..][..per_head];
                let (parts, grad) = loss_and_grad(wh, rbit, samples, batch, nus[h], rank, true);
                losses.push(parts.total());
                sgd_step(
                    wh,
                    &mut velocity[h * per_head..][..per_head],
                    &grad.unwrap_or_default(),
                    epoch == 0 && t == 0,
                    options,
                );
            }
        }
    }
    (w, losses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hata::train::random_weights;

    /// Random samples of one head: `nq` queries, `nk` keys (entries `N(0, scale²)`), every
    /// query scored against every key with labels 20, 13, 6 or −1.
    fn random_head(dim: usize, nq: usize, nk: usize, scale: f64, seed: u64) -> HeadSamples {
        let mut rng = Rng::new(seed);
        let mut rows = |n: usize| -> Vec<f32> {
            (0..n * dim)
                .map(|_| (rng.normal() * scale) as f32)
                .collect()
        };
        let (queries, keys) = (rows(nq), rows(nk));
        let mut rng = Rng::new(seed ^ 5);
        let labels = [20.0f32, 13.0, 6.0, -1.0, -1.0];
        let (mut query, mut key, mut label) = (Vec::new(), Vec::new(), Vec::new());
        for q in 0..nq as u32 {
            for k in 0..nk as u32 {
                query.push(q);
                key.push(k);
                label.push(labels[rng.below(labels.len())]);
            }
        }
        HeadSamples {
            dim,
            queries,
            keys,
            query,
            key,
            label,
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // rows and τ such that tanh runs through its curved part
        let (dim, rbit) = (6usize, 5usize);
        let s = random_head(dim, 3, 7, 3.0, 11);
        let w: Vec<f64> = random_weights(1, dim, rbit, 4)
            .iter()
            .map(|&v| v as f64 * 0.7)
            .collect();
        let pairs = epoch_pairs(&s, 2, 0, 0);
        assert!(pairs.len() > 5);
        let nu = mean_key_norm(&s);
        for (what, orthogonality) in [("all terms", 0.3f32), ("ranking", 0.0)] {
            let o = RankOptions {
                tau: 0.8,
                gamma: 6.0,
                orthogonality,
            };
            let total = |w: &[f64]| loss_and_grad(w, rbit, &s, &pairs, nu, &o, false).0.total();
            let grad = loss_and_grad(&w, rbit, &s, &pairs, nu, &o, true).1.unwrap();
            let scale = grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
            assert!(scale > 0.0);
            let eps = 1e-6;
            let mut worst = 0.0f64;
            for i in 0..w.len() {
                let (mut up, mut down) = (w.clone(), w.clone());
                up[i] += eps;
                down[i] -= eps;
                let fd = (total(&up) - total(&down)) / (2.0 * eps);
                worst = worst.max((fd - grad[i]).abs() / scale);
            }
            println!("{what}: worst |fd − grad| / max|grad| = {worst:.2e}");
            assert!(worst < 1e-6, "{what}: gradient off by {worst:.2e}");
        }
    }

    #[test]
    fn pairs_rank_a_relevant_key_above_a_lower_one() {
        let s = random_head(4, 5, 30, 1.0, 3);
        let positives = s.label.iter().filter(|&&l| l > 0.0).count();
        let pairs = epoch_pairs(&s, 9, 1, 0);
        // every positive has a lower-labelled sample here (−1 is drawn often enough)
        assert_eq!(pairs.len(), positives);
        let mut seen = vec![false; s.len()];
        let mean = s.label.iter().filter(|&&l| l > 0.0).sum::<f32>() / positives as f32;
        for p in &pairs {
            let (i, j) = (p.positive as usize, p.other as usize);
            assert!(!seen[i], "positive {i} twice");
            seen[i] = true;
            assert_eq!(s.query[i], s.query[j]);
            assert!(s.label[i] > 0.0 && s.label[j] < s.label[i]);
            assert!((p.weight - s.label[i] / mean).abs() < 1e-5);
        }
        assert_ne!(pairs, epoch_pairs(&s, 9, 2, 0), "epochs draw other pairs");
        assert_eq!(pairs, epoch_pairs(&s, 9, 1, 0), "pairs are seeded");
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(RankOptions::default().validate().is_ok());
        for o in [
            RankOptions {
                tau: 0.0,
                ..RankOptions::default()
            },
            RankOptions {
                gamma: f32::NAN,
                ..RankOptions::default()
            },
            RankOptions {
                orthogonality: -1.0,
                ..RankOptions::default()
            },
        ] {
            assert!(o.validate().is_err(), "{o:?}");
        }
    }
}
