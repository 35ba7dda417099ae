//! Plain-Rust float64 references for Chelsea: one round of chunked soft matching on a
//! chunk, the whole compression of a cache, and attention with the `log n` bias — what the
//! checks compare the kernels against and what the fidelity baselines use.

use super::plan::{rounds, Layout};
use crate::attention::reference as attention;

/// A chunk's entries: keys and values (`d` each) and how many tokens each stands for.
#[derive(Clone, Debug, PartialEq)]
pub struct Entries {
    /// Keys, one row per entry.
    pub k: Vec<Vec<f64>>,
    /// Values, one row per entry.
    pub v: Vec<Vec<f64>>,
    /// Sizes (tokens merged into each entry).
    pub n: Vec<f64>,
}

/// Cosine similarity; 0 when either vector is zero.
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// How two keys' similarity is measured: what [`merge_round`] and the kernel share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Similarity {
    /// Cosine of the keys as stored: the default, as it beats both simple baselines with
    /// the default round share where [`Similarity::Standardised`] does not (see
    /// [`crate::chelsea::plan::DEFAULT_ROUND_FRACTION`]).
    #[default]
    Cosine,
    /// Cosine of the keys standardised per channel over the chunk's current entries
    /// (`z_c = (x_c − μ_c)·w_c`, `w_c ≈ 1/σ_c`; see [`standardiser`]). Large-magnitude
    /// channels that every key shares (the outlier channels of real K caches) otherwise
    /// dominate the norm, so every pair looks alike (cosine 0.5–0.8 on the planted
    /// workload whatever the pair); standardised, a channel counts by how much it varies
    /// inside the chunk, and a key that stands out in a normally quiet channel (a heavy
    /// hitter) is unlike every other and is merged last. It wins at chunks of 256–512 with
    /// ¼ a round on long caches, and loses to keeping recent tokens on short ones.
    Standardised,
}

/// The per-channel shift and weight of [`Similarity::Standardised`] for the keys `k` of a
/// chunk, as the kernel computes them: `μ_c = round(Σ x_c / m)`, `σ²_c = Σ (x_c − μ_c)² / m`
/// (about the rounded mean) and `w_c = round(1 / √(σ²_c + 10⁻⁶·μ_c² + 10⁻⁸))`, with `round`
/// the element type's rounding (so `x − μ` and `(x − μ)·w` are exact in f32 and f64 alike;
/// the kernel's sums and square root are f32, so the two agree up to f32 rounding, which
/// rounding to the element type almost always hides). The floor
/// under σ² keeps a constant channel's weight finite (its `x − μ` is 0).
pub fn standardiser(k: &[Vec<f64>], round: &dyn Fn(f64) -> f64) -> (Vec<f64>, Vec<f64>) {
    let (m, d) = (k.len(), k[0].len());
    let mu: Vec<f64> = (0..d)
        .map(|c| round(k.iter().map(|x| x[c]).sum::<f64>() / m as f64))
        .collect();
    let w = (0..d)
        .map(|c| {
            let var = k.iter().map(|x| (x[c] - mu[c]).powi(2)).sum::<f64>() / m as f64;
            round(1.0 / (var + 1e-6 * mu[c] * mu[c] + 1e-8).sqrt())
        })
        .collect();
    (mu, w)
}

/// The keys the similarity compares: as they are for [`Similarity::Cosine`], else
/// `round(f32((x − μ)·w))` per channel by [`standardiser`] (the kernel's f32 product,
/// stored as the element type).
pub fn similarity_keys(
    k: &[Vec<f64>],
    similarity: Similarity,
    round: &dyn Fn(f64) -> f64,
) -> Vec<Vec<f64>> {
    match similarity {
        Similarity::Cosine => k.to_vec(),
        Similarity::Standardised => {
            let (mu, w) = standardiser(k, round);
            k.iter()
                .map(|x| {
                    x.iter()
                        .zip(mu.iter().zip(&w))
                        .map(|(x, (m, w))| round(((x - m) * w) as f32 as f64))
                        .collect()
                })
                .collect()
        }
    }
}

/// One round on one chunk: A = even positions, B = odd; each a's best b by cosine of the
/// [`similarity_keys`] (ties: the lower b); the `r` a's of highest similarity (ties: the
/// lower a) merge into their b, size-weighted; survivors keep their order. `round` is the
/// element type's rounding: applied to every merged key and value (the kernel stores them
/// as its element type) and inside the standardisation.
pub fn merge_round(
    e: &Entries,
    r: usize,
    similarity: Similarity,
    round: &dyn Fn(f64) -> f64,
) -> Entries {
    let m = e.n.len();
    let (na, nb) = (m.div_ceil(2), m / 2);
    let z = similarity_keys(&e.k, similarity, round);
    // (similarity, best b) per a
    let best: Vec<(f64, usize)> = (0..na)
        .map(|a| {
            let mut top = (f64::NEG_INFINITY, 0usize);
            for b in 0..nb {
                let c = cosine(&z[2 * a], &z[2 * b + 1]);
                if c > top.0 {
                    top = (c, b);
                }
            }
            top
        })
        .collect();
    let mut order: Vec<usize> = (0..na).collect();
    order.sort_by(|&x, &y| best[y].0.total_cmp(&best[x].0).then(x.cmp(&y)));
    let mut target = vec![None; na];
    for &a in order.iter().take(r) {
        target[a] = Some(best[a].1);
    }
    let mut out = Entries {
        k: Vec::new(),
        v: Vec::new(),
        n: Vec::new(),
    };
    for i in 0..m {
        if i % 2 == 0 && target[i / 2].is_some() {
            continue;
        }
        let mut k: Vec<f64> = e.k[i].iter().map(|x| x * e.n[i]).collect();
        let mut v: Vec<f64> = e.v[i].iter().map(|x| x * e.n[i]).collect();
        let mut n = e.n[i];
        if i % 2 == 1 {
            for (a, t) in target.iter().enumerate() {
                if *t == Some(i / 2) {
                    let w = e.n[2 * a];
                    k.iter_mut().zip(&e.k[2 * a]).for_each(|(s, x)| *s += w * x);
                    v.iter_mut().zip(&e.v[2 * a]).for_each(|(s, x)| *s += w * x);
                    n += w;
                }
            }
        }
        out.k.push(k.iter().map(|x| round(x / n)).collect());
        out.v.push(v.iter().map(|x| round(x / n)).collect());
        out.n.push(n);
    }
    out
}

/// A cache `[B, S, H_kv, D]` compressed by Chelsea: keys, values, sizes `[B, len, H_kv]`.
#[derive(Clone, Debug, PartialEq)]
pub struct CompressedRef {
    /// Keys `[B, len, H_kv, D]`.
    pub k: Vec<f64>,
    /// Values `[B, len, H_kv, D]`.
    pub v: Vec<f64>,
    /// Sizes `[B, len, H_kv]`.
    pub n: Vec<f64>,
    /// Entries per (sequence, KV head).
    pub len: usize,
}

/// How a chunk is compressed, apart from how far: the largest share of its entries a round
/// removes, and the similarity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Method {
    /// At most this share of a chunk's entries merges per round (`0 < fraction ≤ ½`).
    pub fraction: f64,
    /// How keys are compared.
    pub similarity: Similarity,
}

/// The dimensions of a cache: sequences, tokens, KV heads, head dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheDims {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// KV heads.
    pub kv_heads: usize,
    /// Head dimension.
    pub dim: usize,
}

/// Compresses the cache `k`, `v` (`[B, S, H_kv, D]`, every token of size 1) as the host API
/// does: sink and tail rows as they are, each full chunk of `chunk` tokens down to `keep`
/// entries by the rounds of [`rounds`] (at most the share `method.fraction` of a chunk per
/// round), similarity `method.similarity`; `round` rounds merged values after every round.
pub fn compress(
    dims: CacheDims,
    k: &[f64],
    v: &[f64],
    (chunk, keep): (usize, usize),
    (sink, recent): (usize, usize),
    method: Method,
    round: &dyn Fn(f64) -> f64,
) -> CompressedRef {
    let CacheDims {
        batch,
        seq,
        kv_heads: hk,
        dim: d,
    } = dims;
    let lay = Layout::of(seq as u32, chunk as u32, sink as u32, recent as u32);
    let plan = rounds(chunk as u32, keep as u32, method.fraction);
    let len = lay.compressed_len(keep as u32) as usize;
    let mut out = CompressedRef {
        k: vec![0.0; batch * len * hk * d],
        v: vec![0.0; batch * len * hk * d],
        n: vec![0.0; batch * len * hk],
        len,
    };
    let at = |b: usize, s: usize, h: usize, rows: usize| (b * rows + s) * hk + h;
    for b in 0..batch {
        for h in 0..hk {
            let row = |x: &[f64], s: usize| x[at(b, s, h, seq) * d..][..d].to_vec();
            let mut entries = Entries {
                k: Vec::new(),
                v: Vec::new(),
                n: Vec::new(),
            };
            let (sink_rows, chunks) = (lay.sink as usize, lay.chunks as usize);
            for s in 0..sink_rows {
                entries.k.push(row(k, s));
                entries.v.push(row(v, s));
                entries.n.push(1.0);
            }
            for c in 0..chunks {
                let first = sink_rows + c * chunk;
                let mut e = Entries {
                    k: (first..first + chunk).map(|s| row(k, s)).collect(),
                    v: (first..first + chunk).map(|s| row(v, s)).collect(),
                    n: vec![1.0; chunk],
                };
                for r in &plan {
                    e = merge_round(&e, r.merges as usize, method.similarity, round);
                }
                entries.k.extend(e.k);
                entries.v.extend(e.v);
                entries.n.extend(e.n);
            }
            for s in sink_rows + chunks * chunk..seq {
                entries.k.push(row(k, s));
                entries.v.push(row(v, s));
                entries.n.push(1.0);
            }
            for (s, ((kk, vv), n)) in entries.k.iter().zip(&entries.v).zip(&entries.n).enumerate() {
                let o = at(b, s, h, len);
                out.k[o * d..][..d].copy_from_slice(kk);
                out.v[o * d..][..d].copy_from_slice(vv);
                out.n[o] = *n;
            }
        }
    }
    out
}

/// Decode attention in float64 over a merged cache (`k`, `v` `[B, S, H_kv, D]`, sizes
/// `counts` `[B, S, H_kv]`, the first `n_keys` entries): with `bias`, entry `j`'s logit gains
/// `ln counts[j]`. Returns `(o [B, H, D], lse [B, H])`. Built on the dense reference by one
/// extra dimension: `q' = [q, 1/scale]`, `k' = [k, ln n]`, so `scale·q'·k' = scale·q·k + ln n`.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    (batch, heads, kv_heads): (usize, usize, usize),
    seq: usize,
    dim: usize,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    counts: Option<&[f64]>,
    n_keys: usize,
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let Some(counts) = counts else {
        return attention::decode(
            batch, heads, kv_heads, seq, dim, q, k, v, None, n_keys, scale,
        );
    };
    let d1 = dim + 1;
    let widen = |x: &[f64], last: &dyn Fn(usize) -> f64| -> Vec<f64> {
        x.chunks(dim)
            .enumerate()
            .flat_map(|(i, row)| row.iter().copied().chain(std::iter::once(last(i))))
            .collect()
    };
    let q1 = widen(q, &|_| 1.0 / scale);
    let k1 = widen(k, &|i| counts[i].ln());
    let v1 = widen(v, &|_| 0.0);
    let (o1, lse) = attention::decode(
        batch, heads, kv_heads, seq, d1, &q1, &k1, &v1, None, n_keys, scale,
    );
    let o = o1.chunks(d1).flat_map(|r| r[..dim].to_vec()).collect();
    (o, lse)
}
