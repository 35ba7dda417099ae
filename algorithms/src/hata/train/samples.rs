//! Training samples `(q, k, s)` of one KV head, and how they are drawn from captured Q/K.

use super::{Rng, TrainError};

/// The training samples of one KV head. Query and key rows are stored once and referenced
/// by index, so that a query scored against its whole prefix is not copied per key: sample
/// `i` is `(queries[query[i]], keys[key[i]], label[i])`. A plain list of triples is the
/// special case `query[i] = key[i] = i` ([`HeadSamples::from_triples`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeadSamples {
    /// Values per row (the head dimension).
    pub dim: usize,
    /// Query rows, `[n_queries, dim]`.
    pub queries: Vec<f32>,
    /// Key rows, `[n_keys, dim]`.
    pub keys: Vec<f32>,
    /// Per sample: its query row.
    pub query: Vec<u32>,
    /// Per sample: its key row.
    pub key: Vec<u32>,
    /// Per sample: its relevance label `s` (positive: relevant, weighted; −1: irrelevant).
    pub label: Vec<f32>,
}

impl HeadSamples {
    /// Samples from triples: `q` and `k` are `[n, dim]`, `label` is `[n]`.
    pub fn from_triples(
        dim: usize,
        q: Vec<f32>,
        k: Vec<f32>,
        label: Vec<f32>,
    ) -> Result<HeadSamples, TrainError> {
        let n = label.len();
        if n > u32::MAX as usize {
            return Err(TrainError::Invalid(format!(
                "{n} samples (at most 2^32 − 1)"
            )));
        }
        let samples = HeadSamples {
            dim,
            queries: q,
            keys: k,
            query: (0..n as u32).collect(),
            key: (0..n as u32).collect(),
            label,
        };
        samples.validate()?;
        Ok(samples)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.label.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.label.is_empty()
    }

    /// Query rows stored.
    pub fn n_queries(&self) -> usize {
        self.queries.len() / self.dim.max(1)
    }

    /// Key rows stored.
    pub fn n_keys(&self) -> usize {
        self.keys.len() / self.dim.max(1)
    }

    /// Checks the layout: `dim > 0`, whole rows, one query, key and label per sample,
    /// indices in range, every value finite.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        if self.dim == 0 {
            return bad("samples with dimension 0".into());
        }
        if !self.queries.len().is_multiple_of(self.dim) || !self.keys.len().is_multiple_of(self.dim)
        {
            return bad(format!(
                "{} query values and {} key values are not whole rows of {}",
                self.queries.len(),
                self.keys.len(),
                self.dim
            ));
        }
        let n = self.label.len();
        if self.query.len() != n || self.key.len() != n {
            return bad(format!(
                "{n} labels but {} query and {} key indices",
                self.query.len(),
                self.key.len()
            ));
        }
        let (nq, nk) = (self.n_queries(), self.n_keys());
        if let Some(i) = self.query.iter().position(|&q| q as usize >= nq) {
            return bad(format!(
                "sample {i} names query row {} of {nq}",
                self.query[i]
            ));
        }
        if let Some(i) = self.key.iter().position(|&k| k as usize >= nk) {
            return bad(format!("sample {i} names key row {} of {nk}", self.key[i]));
        }
        if let Some(i) = self.label.iter().position(|s| !s.is_finite()) {
            return bad(format!("sample {i} has label {}", self.label[i]));
        }
        if self
            .queries
            .iter()
            .chain(&self.keys)
            .any(|v| !v.is_finite())
        {
            return bad("a query or key value is not finite".into());
        }
        Ok(())
    }
}

/// The shape of one layer's captured attention inputs: queries `[batch, heads, q_seq, dim]`
/// and keys `[batch, kv_heads, seq, dim]`, row-major. Query row `r` sits at position
/// `seq − q_seq + r` (bottom-right aligned; `q_seq = seq` for a prefill capture).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureShape {
    /// Sequences.
    pub batch: usize,
    /// Query heads (a multiple of `kv_heads`).
    pub heads: usize,
    /// KV heads.
    pub kv_heads: usize,
    /// Query rows per sequence and head (at most `seq`).
    pub q_seq: usize,
    /// Key rows per sequence and head.
    pub seq: usize,
    /// Head dimension.
    pub dim: usize,
}

/// How samples are drawn from a capture ([`samples_from_capture`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleOptions {
    /// Fraction of a query's prefix labelled relevant (rounded up, at least one key): 0.1.
    pub top_fraction: f64,
    /// Label of the best key; the relevant keys' labels fall linearly to 1: 20.
    pub max_label: f32,
    /// At most this many samples per KV head, drawn uniformly without replacement from all
    /// of the head's samples (so the label mix is kept); 0 means no cap. Default 65 536.
    pub max_samples_per_head: usize,
    /// Seed of the query positions and of the subsampling.
    pub seed: u64,
    /// Store each sequence's keys centred on their mean (per KV head), as a `HataLayer` with
    /// `center_keys` hashes them; the labels do not change (a query's ranking of its prefix
    /// is the same for `k` and `k − μ`). Default true.
    pub center_keys: bool,
    /// Query positions drawn per sequence and query head: 1 (the paper's recipe). More give a
    /// KV head more distinct queries to learn from.
    pub queries_per_sequence: usize,
}

impl Default for SampleOptions {
    fn default() -> SampleOptions {
        SampleOptions {
            top_fraction: 0.1,
            max_label: 20.0,
            max_samples_per_head: 1 << 16,
            seed: 0,
            center_keys: true,
            queries_per_sequence: 1,
        }
    }
}

/// The labels of keys ranked by exact score: rank `i < n_top` gets
/// `max_label − (max_label − 1)·i/(n_top − 1)` (`max_label` when `n_top = 1`), the rest −1.
pub fn rank_labels(n_top: usize, max_label: f32, rank: usize) -> f32 {
    if rank >= n_top {
        -1.0
    } else if n_top == 1 {
        max_label
    } else {
        let t = rank as f64 / (n_top - 1) as f64;
        (max_label as f64 - (max_label as f64 - 1.0) * t) as f32
    }
}

/// Training samples per KV head from one layer's captured queries `q`
/// (`[batch, heads, q_seq, dim]`) and keys `k` (`[batch, kv_heads, seq, dim]`).
///
/// For each sequence `b` and query head `g`, one query position `p` is drawn uniformly
/// (seeded by `(seed, b, g)`) from the second half of the sequence that has query rows,
/// `max(seq/2, seq − q_seq) ≤ p < seq`, and scored exactly (`q·k` in f64) against its prefix
/// keys `0..=p` of KV head `g / (heads/kv_heads)`. The top `⌈top_fraction·(p + 1)⌉` keys get
/// labels falling linearly from `max_label` to 1 ([`rank_labels`], ties to the lower
/// position), the others −1; every prefix key gives one sample `(q_p, k_j, s_j)`. Samples
/// are grouped by KV head (a head stores its `batch·seq` key rows and its `batch·G` drawn
/// queries), then capped at `max_samples_per_head` by uniform subsampling.
pub fn samples_from_capture(
    q: &[f32],
    k: &[f32],
    shape: &CaptureShape,
    options: &SampleOptions,
) -> Result<Vec<HeadSamples>, TrainError> {
    let bad = |m: String| Err(TrainError::Invalid(m));
    let CaptureShape {
        batch,
        heads,
        kv_heads,
        q_seq,
        seq,
        dim,
    } = *shape;
    if batch == 0 || heads == 0 || kv_heads == 0 || q_seq == 0 || seq == 0 || dim == 0 {
        return bad(format!("empty capture shape {shape:?}"));
    }
    if !heads.is_multiple_of(kv_heads) {
        return bad(format!(
            "{heads} query heads are not a multiple of {kv_heads} KV heads"
        ));
    }
    if q_seq > seq {
        return bad(format!(
            "{q_seq} query rows but only {seq} key rows per sequence"
        ));
    }
    let want_q = batch * heads * q_seq * dim;
    let want_k = batch * kv_heads * seq * dim;
    if q.len() != want_q || k.len() != want_k {
        return bad(format!(
            "q holds {} values ([B, H, S_q, D] = {want_q}), k holds {} ([B, H_kv, S, D] = {want_k})",
            q.len(),
            k.len()
        ));
    }
    if !(options.top_fraction > 0.0 && options.top_fraction <= 1.0) {
        return bad(format!(
            "top fraction {} is not in (0, 1]",
            options.top_fraction
        ));
    }
    if !(options.max_label.is_finite() && options.max_label >= 1.0) {
        return bad(format!("max label {} is below 1", options.max_label));
    }
    if batch * seq > u32::MAX as usize || batch * heads > u32::MAX as usize {
        return bad("capture too large for 32-bit row indices".into());
    }
    let group = heads / kv_heads;
    let first = (seq / 2).max(seq - q_seq);
    let mut out = Vec::with_capacity(kv_heads);
    for hk in 0..kv_heads {
        let mut s = HeadSamples {
            dim,
            ..HeadSamples::default()
        };
        for b in 0..batch {
            let base = (b * kv_heads + hk) * seq * dim;
            s.keys.extend_from_slice(&k[base..base + seq * dim]);
        }
        for b in 0..batch {
            for g in 0..group {
                let head = hk * group + g;
                let mut rng = Rng::stream(options.seed, &[1, b as u64, head as u64]);
                for _ in 0..options.queries_per_sequence {
                    let p = first + rng.below(seq - first);
                    let row = p - (seq - q_seq);
                    let qrow = &q[((b * heads + head) * q_seq + row) * dim..][..dim];
                    let qi = s.n_queries() as u32;
                    s.queries.extend_from_slice(qrow);
                    let key0 = b * seq;
                    let scores: Vec<f64> = (0..=p)
                        .map(|j| {
                            let krow = &s.keys[(key0 + j) * dim..][..dim];
                            qrow.iter()
                                .zip(krow)
                                .map(|(a, c)| *a as f64 * *c as f64)
                                .sum()
                        })
                        .collect();
                    let mut rank: Vec<usize> = (0..=p).collect();
                    rank.sort_by(|&a, &c| scores[c].total_cmp(&scores[a]).then(a.cmp(&c)));
                    let n_top =
                        ((options.top_fraction * (p + 1) as f64).ceil() as usize).clamp(1, p + 1);
                    let mut labels = vec![-1.0f32; p + 1];
                    for (i, &j) in rank.iter().take(n_top).enumerate() {
                        labels[j] = rank_labels(n_top, options.max_label, i);
                    }
                    for (j, &l) in labels.iter().enumerate() {
                        s.query.push(qi);
                        s.key.push((key0 + j) as u32);
                        s.label.push(l);
                    }
                }
            }
        }
        if options.center_keys {
            for keys in s.keys.chunks_mut(seq * dim) {
                center_rows(keys, dim);
            }
        }
        let cap = options.max_samples_per_head;
        if cap > 0 && s.len() > cap {
            let mut rng = Rng::stream(options.seed, &[2, hk as u64]);
            let mut idx: Vec<usize> = (0..s.len()).collect();
            for i in 0..cap {
                let j = i + rng.below(idx.len() - i);
                idx.swap(i, j);
            }
            idx.truncate(cap);
            idx.sort_unstable();
            s.query = idx.iter().map(|&i| s.query[i]).collect();
            s.key = idx.iter().map(|&i| s.key[i]).collect();
            s.label = idx.iter().map(|&i| s.label[i]).collect();
        }
        s.validate()?;
        out.push(s);
    }
    Ok(out)
}

/// A synthetic capture with planted structure, for tests and demonstrations of training
/// (the pipelines' shared workload generator is the realistic one). Each KV head owns
/// `clusters` centres of norm `signal` spanning a random `subspace`-dimensional subspace of
/// R^dim; every key and every query (of the head's query heads) is a uniformly drawn centre
/// of its KV head plus isotropic `N(0, noise²)` noise. The exact top keys of a query are then
/// mostly those of its centre, and only the subspace carries that information: random
/// hyperplanes spend most of their bits on noise, trained ones need not.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlantedCapture {
    /// Sequences.
    pub batch: usize,
    /// Query heads (a multiple of `kv_heads`).
    pub heads: usize,
    /// KV heads.
    pub kv_heads: usize,
    /// Tokens per sequence (queries and keys).
    pub seq: usize,
    /// Head dimension.
    pub dim: usize,
    /// Dimension of the subspace of the centres (at most `dim`).
    pub subspace: usize,
    /// Centres per KV head.
    pub clusters: usize,
    /// Norm of every centre.
    pub signal: f64,
    /// Standard deviation of the noise per coordinate.
    pub noise: f64,
    /// Seed of the subspaces and centres (the "model"); the rows come from `generate`'s seed.
    pub seed: u64,
}

impl PlantedCapture {
    /// The capture's shape (`q_seq = seq`).
    pub fn shape(&self) -> CaptureShape {
        CaptureShape {
            batch: self.batch,
            heads: self.heads,
            kv_heads: self.kv_heads,
            q_seq: self.seq,
            seq: self.seq,
            dim: self.dim,
        }
    }

    /// Queries `[batch, heads, seq, dim]` and keys `[batch, kv_heads, seq, dim]` drawn from
    /// `data_seed` (a different seed gives held-out data of the same heads).
    pub fn generate(&self, data_seed: u64) -> (Vec<f32>, Vec<f32>) {
        if self.kv_heads == 0 || self.dim == 0 {
            return (Vec::new(), Vec::new());
        }
        let (dim, sub) = (self.dim, self.subspace.clamp(1, self.dim.max(1)));
        let centres: Vec<Vec<Vec<f64>>> = (0..self.kv_heads)
            .map(|h| {
                let mut rng = Rng::stream(self.seed, &[100, h as u64]);
                // an orthonormal basis of the subspace (Gram–Schmidt on Gaussian vectors)
                let mut basis: Vec<Vec<f64>> = Vec::with_capacity(sub);
                while basis.len() < sub {
                    let mut v: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
                    for b in &basis {
                        let d: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
                        v.iter_mut().zip(b).for_each(|(x, y)| *x -= d * y);
                    }
                    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                    if n > 1e-6 {
                        v.iter_mut().for_each(|x| *x /= n);
                        basis.push(v);
                    }
                }
                (0..self.clusters.max(1))
                    .map(|_| {
                        let c: Vec<f64> = (0..sub).map(|_| rng.normal()).collect();
                        let n = c.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
                        (0..dim)
                            .map(|d| {
                                self.signal * (0..sub).map(|i| c[i] / n * basis[i][d]).sum::<f64>()
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let group = (self.heads / self.kv_heads.max(1)).max(1);
        let mut q = Vec::with_capacity(self.batch * self.heads * self.seq * dim);
        let mut k = Vec::with_capacity(self.batch * self.kv_heads * self.seq * dim);
        let row = |out: &mut Vec<f32>, rng: &mut Rng, mine: &[Vec<f64>]| {
            let c = &mine[rng.below(mine.len())];
            out.extend(c.iter().map(|&v| (v + self.noise * rng.normal()) as f32));
        };
        for b in 0..self.batch {
            for h in 0..self.heads {
                let mut rng = Rng::stream(data_seed, &[101, b as u64, h as u64]);
                for _ in 0..self.seq {
                    row(
                        &mut q,
                        &mut rng,
                        &centres[(h / group).min(self.kv_heads - 1)],
                    );
                }
            }
            for (h, mine) in centres.iter().enumerate() {
                let mut rng = Rng::stream(data_seed, &[102, b as u64, h as u64]);
                for _ in 0..self.seq {
                    row(&mut k, &mut rng, mine);
                }
            }
        }
        (q, k)
    }
}

/// Subtracts the mean row from every row of `rows` (`[n, dim]`, row-major), in f64.
pub fn center_rows(rows: &mut [f32], dim: usize) {
    let n = rows.len() / dim;
    if n == 0 {
        return;
    }
    let mut mean = vec![0.0f64; dim];
    for r in rows.chunks_exact(dim) {
        for (m, &x) in mean.iter_mut().zip(r) {
            *m += x as f64;
        }
    }
    for r in rows.chunks_exact_mut(dim) {
        for (x, m) in r.iter_mut().zip(&mean) {
            *x = (*x as f64 - m / n as f64) as f32;
        }
    }
}
