//! The MoE layers in plain Rust (float64), for the checks: the gate, and both structures
//! given a routing, rounding what the kernels store (`round`) where they store it.

use super::layer::{MoeShape, Structure};

/// Routing of every token of `x` `[tokens, h]` by `w` `[h, e]`: `(ids, weights, margin)`
/// `[tokens, k]`, `[tokens, k]`, `[tokens]` — softmax probabilities, the `k` highest
/// `probability + bias` (ties: the lower expert), weights renormalised when `normalise`;
/// `margin` is the gap between the k-th and the next choice (a near tie may go either way).
pub fn gate(
    x: &[f64],
    w: &[f64],
    (h, e, k): (usize, usize, usize),
    bias: Option<&[f64]>,
    normalise: bool,
) -> (Vec<u32>, Vec<f64>, Vec<f64>) {
    let (mut ids, mut weights, mut margin) = (Vec::new(), Vec::new(), Vec::new());
    for row in x.chunks(h) {
        let logits: Vec<f64> = (0..e)
            .map(|c| (0..h).map(|i| row[i] * w[i * e + c]).sum())
            .collect();
        let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let p: Vec<f64> = logits.iter().map(|l| (l - top).exp()).collect();
        let z: f64 = p.iter().sum();
        let p: Vec<f64> = p.iter().map(|v| v / z).collect();
        let score: Vec<f64> = (0..e).map(|c| p[c] + bias.map_or(0.0, |b| b[c])).collect();
        let mut by: Vec<usize> = (0..e).collect();
        by.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
        let total: f64 = by[..k].iter().map(|&c| p[c]).sum();
        for &c in &by[..k] {
            ids.push(c as u32);
            weights.push(if normalise { p[c] / total } else { p[c] });
        }
        margin.push(if k < e {
            score[by[k - 1]] - score[by[k]]
        } else {
            f64::INFINITY
        });
    }
    (ids, weights, margin)
}

/// The weights of a layer in float64 (layouts as `MoeWeights`).
pub struct Weights<'a> {
    /// `[E, in, mid]`.
    pub up: &'a [f64],
    /// `[E, mid, in]`.
    pub down: &'a [f64],
    /// `[h, r·h]` (BigMac).
    pub descend: &'a [f64],
    /// `[r·h, h]` (BigMac).
    pub ascend: &'a [f64],
}

fn matvec(x: &[f64], w: &[f64], cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; cols];
    for (i, xi) in x.iter().enumerate() {
        for (o, wv) in out.iter_mut().zip(&w[i * cols..][..cols]) {
            *o += xi * wv;
        }
    }
    out
}

/// SiLU, `v·σ(v)`.
pub fn silu(v: f64) -> f64 {
    v / (1.0 + (-v).exp())
}

/// The layer output `[tokens, h]` for `x` `[tokens, h]` under the routing `ids`/`gw`
/// `[tokens, k]`, rounding every stored intermediate with `round`.
pub fn layer(
    structure: Structure,
    s: &MoeShape,
    x: &[f64],
    w: &Weights,
    (ids, gw): (&[u32], &[f64]),
    round: &impl Fn(f64) -> f64,
) -> Vec<f64> {
    let (h, low, k) = (s.hidden as usize, s.low as usize, s.top_k as usize);
    let (inw, mid) = s.expert_dims(structure);
    let (inw, mid) = (inw as usize, mid as usize);
    let r = |v: Vec<f64>| v.into_iter().map(round).collect::<Vec<f64>>();
    let mut out = Vec::with_capacity(x.len());
    for (t, row) in x.chunks(h).enumerate() {
        let entry = match structure {
            Structure::Cdac => row.to_vec(),
            Structure::BigMac => r(matvec(row, w.descend, low)),
        };
        let mut acc = vec![0.0; inw];
        for j in 0..k {
            let ex = ids[t * k + j] as usize;
            let u: Vec<f64> = matvec(&entry, &w.up[ex * inw * mid..][..inw * mid], mid)
                .into_iter()
                .map(|v| round(silu(v)))
                .collect();
            let d = r(matvec(&u, &w.down[ex * mid * inw..][..mid * inw], inw));
            for (a, b) in acc.iter_mut().zip(&d) {
                *a += gw[t * k + j] * b;
            }
        }
        let combined = r(acc);
        out.extend(match structure {
            Structure::Cdac => combined,
            Structure::BigMac => r(matvec(&combined, w.ascend, h)),
        });
    }
    out
}
