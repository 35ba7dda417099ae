//! The float64 reference of PAT's decoder ([`super::decoder`]): the same LLaMA-style layer
//! stack in plain Rust, with no rounding between steps — embeddings, RMSNorm, the QKV
//! projection, RoPE (`rotate_half`), causal attention with grouped KV heads, the O
//! projection, SwiGLU, the final norm and the LM head, at every position of a token sequence.

use super::decoder::{DecoderConfig, DecoderWeights};
use crate::verify::{widen, Real};

/// The decoder's weights widened to f64.
pub struct ReferenceDecoder {
    config: DecoderConfig,
    embed: Vec<f64>,
    layers: Vec<[Vec<f64>; 9]>,
    final_norm: Vec<f64>,
    lm_head: Vec<f64>,
}

/// `out[i] = Σ_j w[i, j]·x[j]` for `w` `[out, x.len()]`.
fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    w.chunks(x.len())
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * inv * g).collect()
}

/// RoPE of every head (`dim` wide) of `x` at position `pos`, in place.
fn rope(x: &mut [f64], dim: usize, pos: usize, base: f64) {
    for head in x.chunks_mut(dim) {
        for i in 0..dim / 2 {
            let angle = pos as f64 * base.powf(-2.0 * i as f64 / dim as f64);
            let (a, b) = (head[i], head[i + dim / 2]);
            head[i] = a * angle.cos() - b * angle.sin();
            head[i + dim / 2] = a * angle.sin() + b * angle.cos();
        }
    }
}

impl ReferenceDecoder {
    /// Widens `weights`.
    pub fn new<T: Real>(weights: &DecoderWeights<T>) -> ReferenceDecoder {
        ReferenceDecoder {
            config: weights.config,
            embed: widen(&weights.embed),
            layers: weights
                .layers
                .iter()
                .map(|l| {
                    [
                        widen(&l.attn_norm),
                        widen(&l.wq),
                        widen(&l.wk),
                        widen(&l.wv),
                        widen(&l.wo),
                        widen(&l.mlp_norm),
                        widen(&l.w_gate),
                        widen(&l.w_up),
                        widen(&l.w_down),
                    ]
                })
                .collect(),
            final_norm: widen(&weights.final_norm),
            lm_head: widen(&weights.lm_head),
        }
    }

    /// The logits `[vocab]` after every position of `tokens` from `from` on (causal:
    /// position `t` sees tokens `0 ..= t`); `out[i]` is position `from + i`.
    pub fn logits(&self, tokens: &[u32], from: usize) -> Vec<Vec<f64>> {
        let c = &self.config;
        let (h, d) = (c.hidden as usize, c.head_dim as usize);
        let (heads, kvh) = (c.heads as usize, c.kv_heads as usize);
        let group = heads / kvh;
        let eps = c.eps as f64;
        let base = c.rope_base as f64;
        let mut x: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| self.embed[t as usize * h..(t as usize + 1) * h].to_vec())
            .collect();
        for [attn_norm, wq, wk, wv, wo, mlp_norm, wg, wu, wd] in &self.layers {
            let mut qs = Vec::new();
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            for (pos, row) in x.iter().enumerate() {
                let y = rms_norm(row, attn_norm, eps);
                let mut q = matvec(wq, &y);
                let mut k = matvec(wk, &y);
                rope(&mut q, d, pos, base);
                rope(&mut k, d, pos, base);
                qs.push(q);
                ks.push(k);
                vs.push(matvec(wv, &y));
            }
            let scale = 1.0 / (d as f64).sqrt();
            for t in 0..x.len() {
                let mut o = vec![0.0; heads * d];
                for hh in 0..heads {
                    let g = hh / group;
                    let q = &qs[t][hh * d..(hh + 1) * d];
                    let scores: Vec<f64> = (0..=t)
                        .map(|j| {
                            let k = &ks[j][g * d..(g + 1) * d];
                            scale * q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>()
                        })
                        .collect();
                    let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let p: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                    let total: f64 = p.iter().sum();
                    for (j, pj) in p.iter().enumerate() {
                        let v = &vs[j][g * d..(g + 1) * d];
                        for (e, ve) in v.iter().enumerate() {
                            o[hh * d + e] += pj / total * ve;
                        }
                    }
                }
                let delta = matvec(wo, &o);
                x[t].iter_mut().zip(delta).for_each(|(a, b)| *a += b);
                let y = rms_norm(&x[t], mlp_norm, eps);
                let (gate, up) = (matvec(wg, &y), matvec(wu, &y));
                let act: Vec<f64> = gate
                    .iter()
                    .zip(&up)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let delta = matvec(wd, &act);
                x[t].iter_mut().zip(delta).for_each(|(a, b)| *a += b);
            }
        }
        x.iter()
            .skip(from)
            .map(|row| matvec(&self.lm_head, &rms_norm(row, &self.final_norm, eps)))
            .collect()
    }
}

/// The index of the largest value (the first of equals) and its margin over the second.
pub fn top2(logits: &[f64]) -> (usize, f64) {
    let mut best = (0usize, f64::NEG_INFINITY);
    let mut second = f64::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best.1 {
            second = best.1;
            best = (i, v);
        } else if v > second {
            second = v;
        }
    }
    (best.0, best.1 - second)
}
