//! The attention workload shared by every attention pipeline (HATA, Chelsea, CLO, AdaCluster):
//! a seeded generator of Q/K/V with *planted structure*, and `safetensors` I/O for captured
//! activations.
//!
//! # Why planted structure
//!
//! With i.i.d. Gaussian Q and K every logit `q·k/√D` is N(0, 1): the softmax is nearly flat
//! (the top 2% of keys hold about 15% of the mass) and every sparse method looks the same —
//! equally bad. Real attention is peaked, and each pipeline bets on a different part of why.
//! The generator plants those parts, each with a knob in *logit units* (the amount it adds to
//! `q·k/√D`, before [`WorkloadSpec::sharpness`]):
//!
//! | structure | how it is planted | knobs (defaults) |
//! |---|---|---|
//! | attention sinks | tokens `0..sinks` carry a large value in a *sink channel*; every query has `√D` there, so every query gives them `≈ sink_logit × N(1, 0.1²)` | `sinks` (4), `sink_logit` (8) |
//! | heavy hitters | `heavy_hitters` tokens at seeded random positions carry `heavy_logit × U(0.75, 1.25)` in a *heavy channel*; each query has `√D × N(1, 0.35²)` there, so nearly all queries favour them | `heavy_hitters` (16), `heavy_logit` (5) |
//! | recency / locality | RoPE-like: `P = clamp(D/8, 1, 16)` channel pairs rotate with the position at frequencies drawn from a Cauchy law (one per stratum of its quantiles), so `q_i·k_j` adds `recency × K(i − j)` with `K(0) = 1` and `K` ≈ `exp(−|i − j| / recency_window)` (a random-feature Laplace kernel: far away it is noise of std `recency/√(2P)`). Symmetric in `i − j`, so it also gives locality to non-causal prefill; a decode query sits at the last position | `recency` (4), `recency_window` (64 tokens) |
//! | clustered keys | the remaining *semantic* channels of a key are `centroid[c] + cluster_spread × noise` (rescaled to unit variance per channel), `c` drawn from `clusters` clusters of log-normal sizes; a query leans towards one cluster (its own token's with probability ½, else a random one), adding `≈ cluster_logit` to that cluster's keys, so queries are clustered too | `clusters` (64), `cluster_spread` (0.5), `cluster_logit` (3) |
//! | outlier key channels | `outlier_channels` seeded channels of every key hold `±outlier_scale` (sign per channel) with 25% jitter, as the few large-magnitude channels of real K caches; queries are N(0, 1) there, so they mostly shift all logits of a query alike | `outlier_channels` (4), `outlier_scale` (6) |
//! | background | queries carry Gaussian noise in the semantic channels, scaled so it adds logits of std `noise_logit` | `noise_logit` (1) |
//! | per-head variety | each query head scales its heavy-hitter, recency and cluster strengths by `exp(head_variation × N(0, 1))` (sinks are kept by every head, as in real LLMs past the first layers) | `head_variation` (0.3) |
//! | temperature | the whole query is multiplied by `sharpness`: every logit scales by it | `sharpness` (1) |
//!
//! Which channel plays which part is drawn per KV head from the seed (real heads differ too);
//! sink keys are zero in the recency channels (they carry no position, so the far-field
//! noise of the recency kernel does not move them);
//! ordinary keys are N(0, 0.2²) in the sink and heavy channels. Values are
//! `√value_coherence × value_centroid[c] + √(1 − value_coherence) × noise` (keys that cluster
//! together carry related values, as merging methods such as Chelsea assume; default 0.5), and
//! sink tokens' values are scaled by 0.25 (sinks are mostly a no-op in real models).
//!
//! With the defaults (S = 4096, D = 128) the top 2% of keys hold on average 89% of a decode
//! query's softmax mass (80–89% over seeds 0–5; 76% with the sinks off), the four sinks rank
//! in the top 2% for 98% of queries and the heavy hitters for 81% (top 5%: 89%); a prefill
//! query over its causal prefix is as peaked (87%). [`WorkloadSpec::unstructured`] turns
//! every knob off and gives plain i.i.d. N(0, 1) Q/K/V, the control: 14.6% (the tests in
//! `algorithms/tests/workload.rs` measure all of these). Peakedness at fixed knobs falls as
//! `seq` grows, because the background grows with it (about 69% at 16K tokens and 55% at 64K);
//! raise [`WorkloadSpec::sharpness`] or the logits to compensate.
//!
//! # Positions, GQA and determinism
//!
//! K and V have `seq` tokens; Q has `queries` rows per head, the last `queries` positions
//! (row `r` sits at position `seq − queries + r`, bottom-right aligned as for causal
//! attention), so `queries = 1` is a decode step and `queries = seq` a prefill. Query head
//! `h` reads KV head `h / (heads / kv_heads)`. Every row draws from its own SplitMix64 stream
//! named by the seed and its indices ([`Rng::stream`]): the output depends only on the spec,
//! not on the thread count, and the query at a position is the same whatever `queries` is.
//! Rows are generated in parallel with `std::thread::scope`.
//!
//! # Files
//!
//! A workload is stored as a `safetensors` file with three tensors named `"q"`, `"k"` and
//! `"v"`, each laid out `[batch, heads, seq, dim]` (row-major, as PyTorch's attention takes
//! them): `q` is `[B, H, S_q, D]`, `k` and `v` are `[B, H_kv, S, D]`. `S_q` may be smaller
//! than `S` (a decode capture has `S_q = 1`) and `H` must be a multiple of `H_kv` (GQA). To
//! feed activations from PyTorch:
//!
//! ```python
//! import safetensors.torch
//! # q: [B, H, S_q, D], k and v: [B, H_kv, S, D]; after RoPE, before the softmax
//! safetensors.torch.save_file({"q": q.contiguous(), "k": k.contiguous(), "v": v.contiguous()}, "attn.safetensors")
//! ```
//!
//! [`Workload::load`] accepts F32, F16 and BF16 tensors (converted to f32), ignores other
//! tensors, and refuses wrong names, ranks, dtypes, shapes and non-finite values with a
//! [`WorkloadError`] (it never panics on a bad file). [`Workload::save`] writes F32 (exact
//! round trip); [`Workload::save_as`] can write BF16 (half the bytes, about 3 significant
//! digits, the dtype pipelines run in). A generated workload also stores its spec in the
//! file's metadata (`kiln.workload.*` keys), so loading gives it back.

pub(crate) mod io;
mod metrics;
mod rng;
pub mod video;

pub use io::SaveDtype;
pub use metrics::{attention_logits, logit_ranks, mass_of_top_logits, softmax_mass_of_top};
pub use rng::Rng;

use std::ops::Range;
use std::path::PathBuf;

/// Stream tags: each kind of draw has its own family of streams.
const TAG_LAYOUT: u64 = 1;
const TAG_HEAD: u64 = 2;
const TAG_HEAVY: u64 = 3;
const TAG_KEY: u64 = 4;
const TAG_VALUE: u64 = 5;
const TAG_QUERY: u64 = 6;

/// Std of ordinary keys in the sink and heavy channels (so those channels add little noise).
const CHANNEL_NOISE: f32 = 0.2;
/// Jitter of the outlier channels, relative to `outlier_scale`.
const OUTLIER_JITTER: f32 = 0.25;
/// Std of the per-query heavy-hitter affinity around 1 (N(1, 0.35²) is above ½ for 92% of
/// queries).
const HEAVY_AFFINITY_SPREAD: f32 = 0.35;
/// Std of the per-query sink affinity around 1.
const SINK_AFFINITY_SPREAD: f32 = 0.1;
/// Probability that a query leans towards its own token's key cluster (else a random one).
const OWN_CLUSTER_PROBABILITY: f64 = 0.5;
/// Std of the log of cluster weights (cluster sizes are log-normal, not equal).
const CLUSTER_SIZE_SPREAD: f32 = 0.5;
/// Factor on the values of sink tokens.
const SINK_VALUE_SCALE: f32 = 0.25;
/// Most channel pairs used for the recency kernel.
const MAX_PLANES: usize = 16;
/// Fewest semantic channels a key must keep.
const MIN_SEMANTIC: usize = 2;

/// What to generate: the shape, the seed, and the strength of each planted structure (see the
/// module docs for how each is planted). Every knob is in logit units where it can be, and
/// `0` turns a structure off.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadSpec {
    /// Sequences in the batch (`B`). Default 1.
    pub batch: usize,
    /// Query heads (`H`), a multiple of `kv_heads`. Default 8.
    pub heads: usize,
    /// KV heads (`H_kv`); `heads / kv_heads` query heads share each. Default 2.
    pub kv_heads: usize,
    /// Tokens in K and V (`S`). Default 4096.
    pub seq: usize,
    /// Query rows per head (`S_q ≤ S`): the last `queries` positions. 1 is a decode step,
    /// `seq` a prefill. Default 1.
    pub queries: usize,
    /// Head dimension (`D`). Default 128.
    pub dim: usize,
    /// Seed of every random draw: equal specs give equal workloads. Default 0.
    pub seed: u64,
    /// Attention-sink tokens at positions `0..sinks`. Default 4.
    pub sinks: usize,
    /// Logit every query adds to a sink token. Default 8 (four sinks then hold about a
    /// quarter of a 4K-token decode step's attention, and rank in its top 2% of keys).
    pub sink_logit: f32,
    /// Heavy-hitter tokens, at seeded random positions after the sinks (per sequence and KV
    /// head; see [`WorkloadSpec::heavy_hitters`]). Default 16.
    pub heavy_hitters: usize,
    /// Mean logit a query adds to a heavy hitter (each hitter has its own strength in
    /// `[0.75, 1.25] ×` this, each query its own affinity N(1, 0.35²)). Default 5.
    pub heavy_logit: f32,
    /// Logit added to a key at distance 0 from the query, decaying with distance (0 turns
    /// recency off and frees its channels). Default 4.
    pub recency: f32,
    /// Distance in tokens over which the recency bonus decays by about `e`. Default 64.
    pub recency_window: f32,
    /// Key clusters per KV head (0: keys are isotropic noise). Default 64.
    pub clusters: usize,
    /// Spread of a key around its centroid, relative to the spread of the centroids (0: keys
    /// sit on their centroids; large: clusters blur into noise). Default 0.5.
    pub cluster_spread: f32,
    /// Logit a query adds to the keys of the cluster it leans towards. Default 3.
    pub cluster_logit: f32,
    /// Large-magnitude key channels. Default 4.
    pub outlier_channels: usize,
    /// Magnitude of the outlier channels relative to an ordinary channel's (which is about
    /// 1). Default 6.
    pub outlier_scale: f32,
    /// Std of the background logits that query noise adds. Default 1 (the level of plain
    /// Gaussian Q/K).
    pub noise_logit: f32,
    /// Log-std of the per-head factors on the heavy-hitter, recency and cluster strengths
    /// (sinks are the same for every head). Default 0.3.
    pub head_variation: f32,
    /// Factor on every query (so on every logit): > 1 sharpens attention, < 1 flattens it.
    /// Default 1.
    pub sharpness: f32,
    /// Share of a value's variance that comes from its key's cluster, in `[0, 1]`. Default
    /// 0.5.
    pub value_coherence: f32,
}

impl Default for WorkloadSpec {
    fn default() -> WorkloadSpec {
        WorkloadSpec {
            batch: 1,
            heads: 8,
            kv_heads: 2,
            seq: 4096,
            queries: 1,
            dim: 128,
            seed: 0,
            sinks: 4,
            sink_logit: 8.0,
            heavy_hitters: 16,
            heavy_logit: 5.0,
            recency: 4.0,
            recency_window: 64.0,
            clusters: 64,
            cluster_spread: 0.5,
            cluster_logit: 3.0,
            outlier_channels: 4,
            outlier_scale: 6.0,
            noise_logit: 1.0,
            head_variation: 0.3,
            sharpness: 1.0,
            value_coherence: 0.5,
        }
    }
}

/// The shape of a workload's tensors: `q` `[batch, heads, queries, dim]`, `k` and `v`
/// `[batch, kv_heads, seq, dim]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Sequences in the batch (`B`).
    pub batch: usize,
    /// Query heads (`H`).
    pub heads: usize,
    /// KV heads (`H_kv`), dividing `heads`.
    pub kv_heads: usize,
    /// Query rows per head (`S_q`), the last `queries` positions of the sequence.
    pub queries: usize,
    /// Tokens in K and V (`S`).
    pub seq: usize,
    /// Head dimension (`D`).
    pub dim: usize,
}

impl Shape {
    /// Query heads per KV head (`H / H_kv`).
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// The position in the sequence of query row `r` (`seq − queries + r`).
    pub fn query_position(&self, r: usize) -> usize {
        self.seq - self.queries + r
    }

    /// Elements of `q`.
    pub fn q_len(&self) -> usize {
        self.batch * self.heads * self.queries * self.dim
    }

    /// Elements of `k` (and of `v`).
    pub fn kv_len(&self) -> usize {
        self.batch * self.kv_heads * self.seq * self.dim
    }

    /// Checks that every size is positive, that GQA groups are whole, that there are no more
    /// query rows than tokens, and that the element counts fit in memory indices.
    pub fn validate(&self) -> Result<(), String> {
        let sizes = [
            ("batch", self.batch),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("queries", self.queries),
            ("seq", self.seq),
            ("dim", self.dim),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, n)| *n == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!(
                "heads ({}) must be a multiple of kv_heads ({})",
                self.heads, self.kv_heads
            ));
        }
        if self.queries > self.seq {
            return Err(format!(
                "more query rows ({}) than tokens ({})",
                self.queries, self.seq
            ));
        }
        let product = |dims: [usize; 4]| dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let q = product([self.batch, self.heads, self.queries, self.dim]);
        let kv = product([self.batch, self.kv_heads, self.seq, self.dim]);
        if q.is_none() || kv.is_none() {
            return Err("tensor sizes overflow".into());
        }
        Ok(())
    }
}

/// Why a workload could not be generated, loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The spec is inconsistent (zero sizes, heads not a multiple of KV heads, too few
    /// channels for the planted structure, non-finite knobs, …).
    #[error("workload spec: {0}")]
    InvalidSpec(String),
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid `safetensors` file (bad header, offsets, …), or writing one
    /// failed.
    #[error("{path}: not a valid safetensors file: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the `safetensors` crate reported.
        message: String,
    },
    /// One of `q`, `k`, `v` is absent.
    #[error("{path}: no tensor named `{name}` (a workload file holds `q`, `k` and `v`, each [batch, heads, seq, dim]; found: {found})")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The missing tensor.
        name: &'static str,
        /// The names the file has.
        found: String,
    },
    /// A tensor is not F32, F16 or BF16.
    #[error("{path}: tensor `{name}` has dtype {dtype}; a workload needs F32, F16 or BF16")]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: &'static str,
        /// Its dtype, as `safetensors` names it.
        dtype: String,
    },
    /// A tensor is not of rank 4.
    #[error(
        "{path}: tensor `{name}` has shape {shape:?}; expected rank 4, [batch, heads, seq, dim]"
    )]
    WrongRank {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: &'static str,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// The query heads are not a whole number of groups per KV head.
    #[error("{path}: q has {heads} heads but k/v have {kv_heads}; the query heads must be a multiple of the KV heads (GQA)")]
    HeadMismatch {
        /// The file.
        path: PathBuf,
        /// Heads of `q`.
        heads: usize,
        /// Heads of `k` and `v`.
        kv_heads: usize,
    },
    /// The shapes of `q`, `k` and `v` do not fit together (batch, head dimension, `k` vs
    /// `v`, empty dimensions, more query rows than tokens).
    #[error("{path}: {message}")]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        message: String,
    },
    /// A tensor holds a NaN or an infinity.
    #[error("{path}: tensor `{name}` holds a non-finite value at flat index {index}")]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: &'static str,
        /// Index of the first such element.
        index: usize,
    },
}

/// A set of Q/K/V: generated by [`generate`] or loaded with [`Workload::load`].
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// The tensor shapes.
    pub shape: Shape,
    /// The spec it was generated from; `None` for captured data.
    pub spec: Option<WorkloadSpec>,
    /// Queries `[B, H, S_q, D]`.
    pub q: Vec<f32>,
    /// Keys `[B, H_kv, S, D]`.
    pub k: Vec<f32>,
    /// Values `[B, H_kv, S, D]`.
    pub v: Vec<f32>,
}

impl WorkloadSpec {
    /// The decode-step workload of `kiln demo` on a device: b1 h32/8 s32768 d128 on a GPU (a
    /// LLaMA-like layer with a long cache), b1 h8/2 s1024 d64 on the emulator (seconds there).
    pub fn demo_decode(gpu: bool) -> Self {
        if gpu {
            WorkloadSpec::decode(1, 32, 8, 32768, 128)
        } else {
            WorkloadSpec::decode(1, 8, 2, 1024, 64)
        }
    }

    /// The spec for one decode step over a cache of `seq` tokens (`queries = 1`), other
    /// knobs at their defaults.
    pub fn decode(batch: usize, heads: usize, kv_heads: usize, seq: usize, dim: usize) -> Self {
        WorkloadSpec {
            batch,
            heads,
            kv_heads,
            seq,
            queries: 1,
            dim,
            ..WorkloadSpec::default()
        }
    }

    /// The spec for a prefill of `seq` tokens (`queries = seq`), other knobs at their
    /// defaults.
    pub fn prefill(batch: usize, heads: usize, kv_heads: usize, seq: usize, dim: usize) -> Self {
        WorkloadSpec {
            queries: seq,
            ..WorkloadSpec::decode(batch, heads, kv_heads, seq, dim)
        }
    }

    /// The same shape and seed with every structure off: Q, K and V i.i.d. N(0, 1), the
    /// control that shows what the planted structure buys.
    pub fn unstructured(self) -> Self {
        WorkloadSpec {
            sinks: 0,
            heavy_hitters: 0,
            recency: 0.0,
            clusters: 0,
            outlier_channels: 0,
            noise_logit: 1.0,
            head_variation: 0.0,
            sharpness: 1.0,
            value_coherence: 0.0,
            ..self
        }
    }

    /// The same spec with another seed.
    pub fn with_seed(self, seed: u64) -> Self {
        WorkloadSpec { seed, ..self }
    }

    /// The tensor shapes this spec generates.
    pub fn shape(&self) -> Shape {
        Shape {
            batch: self.batch,
            heads: self.heads,
            kv_heads: self.kv_heads,
            queries: self.queries,
            seq: self.seq,
            dim: self.dim,
        }
    }

    /// Channel pairs of the recency kernel: `clamp(D/8, 1, 16)`, none when recency is off.
    fn planes(&self) -> usize {
        if self.recency == 0.0 {
            0
        } else {
            (self.dim / 8).clamp(1, MAX_PLANES)
        }
    }

    /// Channels reserved for planted structure (outliers, sink, heavy, recency).
    fn reserved_channels(&self) -> usize {
        self.outlier_channels
            + usize::from(self.sinks > 0)
            + usize::from(self.heavy_hitters > 0)
            + 2 * self.planes()
    }

    /// Checks the spec: a valid [`Shape`], finite knobs in range, and enough channels left
    /// for the clustered (semantic) part of the keys.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        let bad = WorkloadError::InvalidSpec;
        self.shape().validate().map_err(bad)?;
        let knobs = [
            ("sink_logit", self.sink_logit),
            ("heavy_logit", self.heavy_logit),
            ("recency", self.recency),
            ("recency_window", self.recency_window),
            ("cluster_spread", self.cluster_spread),
            ("cluster_logit", self.cluster_logit),
            ("outlier_scale", self.outlier_scale),
            ("noise_logit", self.noise_logit),
            ("head_variation", self.head_variation),
            ("sharpness", self.sharpness),
            ("value_coherence", self.value_coherence),
        ];
        if let Some((name, _)) = knobs.iter().find(|(_, x)| !x.is_finite()) {
            return Err(bad(format!("{name} must be finite")));
        }
        if self.recency != 0.0 && self.recency_window <= 0.0 {
            return Err(bad("recency_window must be positive".into()));
        }
        if self.cluster_spread < 0.0 || self.noise_logit < 0.0 || self.head_variation < 0.0 {
            return Err(bad(
                "cluster_spread, noise_logit and head_variation must not be negative".into(),
            ));
        }
        if self.clusters > self.seq {
            return Err(bad(format!(
                "more clusters ({}) than tokens ({})",
                self.clusters, self.seq
            )));
        }
        if !(0.0..=1.0).contains(&self.value_coherence) {
            return Err(bad("value_coherence must lie in [0, 1]".into()));
        }
        let reserved = self.reserved_channels();
        if reserved + MIN_SEMANTIC > self.dim {
            return Err(bad(format!(
                "dim {} is too small: the planted structure takes {reserved} channels \
                 (outliers {}, sink/heavy {}, recency {}) and keys need {MIN_SEMANTIC} more",
                self.dim,
                self.outlier_channels,
                usize::from(self.sinks > 0) + usize::from(self.heavy_hitters > 0),
                2 * self.planes()
            )));
        }
        Ok(())
    }

    /// Positions of the sink tokens: `0..min(sinks, seq)`.
    pub fn sink_positions(&self) -> Range<usize> {
        0..self.sinks.min(self.seq)
    }

    /// Positions of the heavy-hitter tokens of sequence `b` under KV head `kv_head`, in
    /// increasing order (distinct, after the sinks; fewer than `heavy_hitters` only when the
    /// sequence is too short).
    pub fn heavy_hitters(&self, b: usize, kv_head: usize) -> Vec<usize> {
        self.heavy_hitters_with_strength(b, kv_head)
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    /// Heavy hitters with their strength factor in `[0.75, 1.25)`, sorted by position.
    fn heavy_hitters_with_strength(&self, b: usize, kv_head: usize) -> Vec<(usize, f32)> {
        let start = self.sinks.min(self.seq);
        let room = self.seq - start;
        let count = self.heavy_hitters.min(room);
        if count == 0 {
            return Vec::new();
        }
        let mut rng = Rng::stream(self.seed, &[TAG_HEAVY, b as u64, kv_head as u64]);
        let positions: Vec<usize> = if 2 * count >= room {
            // Dense: a partial Fisher-Yates shuffle of the whole range.
            let mut all: Vec<usize> = (start..self.seq).collect();
            for i in 0..count {
                let j = i + rng.below(room - i);
                all.swap(i, j);
            }
            all.truncate(count);
            all
        } else {
            let mut chosen = std::collections::BTreeSet::new();
            let mut order = Vec::with_capacity(count);
            while order.len() < count {
                let p = start + rng.below(room);
                if chosen.insert(p) {
                    order.push(p);
                }
            }
            order
        };
        let mut hitters: Vec<(usize, f32)> = positions
            .into_iter()
            .map(|p| (p, 0.75 + 0.5 * rng.uniform() as f32))
            .collect();
        hitters.sort_by_key(|&(p, _)| p);
        hitters
    }

    /// The cluster of every token of sequence `b` under KV head `kv_head` (the ground truth a
    /// key-clustering method can be scored against); `None` when `clusters` is 0. The spec
    /// must be valid.
    pub fn key_clusters(&self, b: usize, kv_head: usize) -> Option<Vec<usize>> {
        if self.clusters == 0 {
            return None;
        }
        let model = KvHeadModel::new(self, kv_head);
        Some(
            (0..self.seq)
                .map(|j| model.token_cluster(self, b, kv_head, j))
                .collect(),
        )
    }
}

/// Which channel plays which part in one KV head, and the head's cluster centroids.
struct KvHeadModel {
    /// Outlier channels with their sign.
    outliers: Vec<(usize, f32)>,
    sink: Option<usize>,
    heavy: Option<usize>,
    /// Recency planes: (cos channel, sin channel, angular frequency per token).
    planes: Vec<(usize, usize, f64)>,
    /// The remaining channels.
    semantic: Vec<usize>,
    /// Key centroids, `clusters × semantic.len()`, entries N(0, 1).
    centroids: Vec<f32>,
    /// Squared norm of each centroid.
    centroid_norm2: Vec<f32>,
    /// Cumulative cluster probabilities.
    cdf: Vec<f64>,
    /// Value centroids, `clusters × dim`, entries N(0, 1).
    value_centroids: Vec<f32>,
}

impl KvHeadModel {
    fn new(spec: &WorkloadSpec, kv_head: usize) -> KvHeadModel {
        let d = spec.dim;
        let mut rng = Rng::stream(spec.seed, &[TAG_LAYOUT, kv_head as u64]);
        let mut channels: Vec<usize> = (0..d).collect();
        for i in 0..d {
            let j = i + rng.below(d - i);
            channels.swap(i, j);
        }
        let mut next = channels.into_iter();
        let outliers = (0..spec.outlier_channels)
            .map(|_| {
                let sign = if rng.next_u64() >> 63 == 0 { 1.0 } else { -1.0 };
                (next.next().unwrap_or(0), sign)
            })
            .collect();
        let sink = (spec.sinks > 0).then(|| next.next().unwrap_or(0));
        let heavy = (spec.heavy_hitters > 0).then(|| next.next().unwrap_or(0));
        // Frequencies drawn from a half-Cauchy law of scale 1/window, one per stratum of its
        // quantiles: the features cos/sin(ω p) then make Σ cos(ω Δ) / P a random-feature
        // estimate of exp(−|Δ|/window). The jitter inside each stratum matters: evenly spaced
        // quantiles give nearly evenly spaced low frequencies, whose cosines all come back to
        // −1 together at Δ ≈ 4·P·window (the sinks of a 4K sequence sat right there).
        // Frequencies above π per token alias, so they are capped there.
        let p = spec.planes();
        let planes = (0..p)
            .map(|f| {
                let u = (f as f64 + rng.uniform()) / p as f64;
                let omega = (std::f64::consts::FRAC_PI_2 * u).tan() / spec.recency_window as f64;
                let omega = omega.min(std::f64::consts::PI);
                (next.next().unwrap_or(0), next.next().unwrap_or(0), omega)
            })
            .collect();
        let mut semantic: Vec<usize> = next.collect();
        semantic.sort_unstable();
        let m = semantic.len();
        let c = spec.clusters;
        let mut centroids = vec![0f32; c * m];
        rng.fill_normal(&mut centroids);
        let centroid_norm2 = if m == 0 {
            vec![1.0; c]
        } else {
            centroids
                .chunks_exact(m)
                .map(|row| row.iter().map(|x| x * x).sum::<f32>().max(1e-6))
                .collect()
        };
        let weights: Vec<f64> = (0..c)
            .map(|_| ((CLUSTER_SIZE_SPREAD * rng.normal()) as f64).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        let mut value_centroids = vec![0f32; c * d];
        rng.fill_normal(&mut value_centroids);
        KvHeadModel {
            outliers,
            sink,
            heavy,
            planes,
            semantic,
            centroids,
            centroid_norm2,
            cdf,
            value_centroids,
        }
    }

    /// The cluster of a token: the first draw of its key stream.
    fn cluster_of(&self, rng: &mut Rng) -> usize {
        let u = rng.uniform();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }

    fn token_cluster(&self, spec: &WorkloadSpec, b: usize, kv_head: usize, token: usize) -> usize {
        let mut rng = key_stream(spec, b, kv_head, token);
        self.cluster_of(&mut rng)
    }
}

fn key_stream(spec: &WorkloadSpec, b: usize, kv_head: usize, token: usize) -> Rng {
    Rng::stream(
        spec.seed,
        &[TAG_KEY, b as u64, kv_head as u64, token as u64],
    )
}

/// The per-query-head factors on the planted strengths.
#[derive(Clone, Copy)]
struct HeadProfile {
    heavy: f32,
    recency: f32,
    cluster: f32,
}

impl HeadProfile {
    fn new(spec: &WorkloadSpec, head: usize) -> HeadProfile {
        let mut rng = Rng::stream(spec.seed, &[TAG_HEAD, head as u64]);
        let mut factor = || (spec.head_variation * rng.normal()).exp();
        HeadProfile {
            heavy: factor(),
            recency: factor(),
            cluster: factor(),
        }
    }
}

/// Generates the workload `spec` describes (see the module docs for the model). Rows are
/// filled in parallel; the result depends only on `spec`.
pub fn generate(spec: &WorkloadSpec) -> Result<Workload, WorkloadError> {
    spec.validate()?;
    let shape = spec.shape();
    let d = spec.dim;
    let models: Vec<KvHeadModel> = (0..spec.kv_heads)
        .map(|h| KvHeadModel::new(spec, h))
        .collect();
    let hitters: Vec<Vec<(usize, f32)>> = (0..spec.batch * spec.kv_heads)
        .map(|i| spec.heavy_hitters_with_strength(i / spec.kv_heads, i % spec.kv_heads))
        .collect();
    let profiles: Vec<HeadProfile> = (0..spec.heads).map(|h| HeadProfile::new(spec, h)).collect();

    let mut k = vec![0f32; shape.kv_len()];
    let mut v = vec![0f32; shape.kv_len()];
    par_rows(d, &mut k, Some(&mut v), |row, k_row, v_row| {
        let j = row % spec.seq;
        let bh = row / spec.seq;
        let (b, kvh) = (bh / spec.kv_heads, bh % spec.kv_heads);
        let v_row = v_row.expect("value rows go with key rows");
        key_value_row(spec, &models[kvh], &hitters[bh], (b, kvh, j), k_row, v_row);
    });
    let mut q = vec![0f32; shape.q_len()];
    par_rows(d, &mut q, None, |row, q_row, _| {
        let r = row % spec.queries;
        let bh = row / spec.queries;
        let (b, h) = (bh / spec.heads, bh % spec.heads);
        let kvh = h / shape.group();
        let position = shape.query_position(r);
        query_row(
            spec,
            &models[kvh],
            profiles[h],
            (b, h, kvh, position),
            q_row,
        );
    });
    Ok(Workload {
        shape,
        spec: Some(spec.clone()),
        q,
        k,
        v,
    })
}

/// Fills key row `j` and value row `j` of sequence `b`, KV head `kvh` (`at = (b, kvh, j)`).
fn key_value_row(
    spec: &WorkloadSpec,
    model: &KvHeadModel,
    hitters: &[(usize, f32)],
    at: (usize, usize, usize),
    k: &mut [f32],
    v: &mut [f32],
) {
    let (b, kvh, j) = at;
    let mut rng = key_stream(spec, b, kvh, j);
    let cluster = (spec.clusters > 0).then(|| model.cluster_of(&mut rng));
    rng.fill_normal(k);
    let m = model.semantic.len();
    if let Some(c) = cluster {
        // Unit variance per channel: centroid part and noise part add up to 1.
        let s = spec.cluster_spread;
        let norm = 1.0 / (1.0 + s * s).sqrt();
        let centroid = &model.centroids[c * m..(c + 1) * m];
        for (&ch, &x) in model.semantic.iter().zip(centroid) {
            k[ch] = norm * (x + s * k[ch]);
        }
    }
    for &(ch, sign) in &model.outliers {
        k[ch] = spec.outlier_scale * (sign + OUTLIER_JITTER * k[ch]);
    }
    if let Some(ch) = model.sink {
        let base = if j < spec.sinks { spec.sink_logit } else { 0.0 };
        k[ch] = base + CHANNEL_NOISE * k[ch];
    }
    if let Some(ch) = model.heavy {
        let base = match hitters.binary_search_by_key(&j, |&(p, _)| p) {
            Ok(i) => spec.heavy_logit * hitters[i].1,
            Err(_) => 0.0,
        };
        k[ch] = base + CHANNEL_NOISE * k[ch];
    }
    // Sinks carry no position: the recency kernel is noise of std recency/√(2P) far from the
    // query, and the sinks, all far and adjacent, would share one draw of it.
    let amplitude = if j < spec.sinks {
        0.0
    } else {
        std::f32::consts::SQRT_2
    };
    for &(c, s, omega) in &model.planes {
        let (sin, cos) = (omega * j as f64).sin_cos();
        k[c] = amplitude * cos as f32;
        k[s] = amplitude * sin as f32;
    }

    let mut rng = Rng::stream(spec.seed, &[TAG_VALUE, b as u64, kvh as u64, j as u64]);
    rng.fill_normal(v);
    if let Some(c) = cluster {
        let rho = spec.value_coherence;
        let (a, n) = (rho.sqrt(), (1.0 - rho).sqrt());
        let centroid = &model.value_centroids[c * spec.dim..(c + 1) * spec.dim];
        for (x, &mu) in v.iter_mut().zip(centroid) {
            *x = a * mu + n * *x;
        }
    }
    if j < spec.sinks {
        v.iter_mut().for_each(|x| *x *= SINK_VALUE_SCALE);
    }
}

/// Fills the query row of sequence `b`, head `h` (reading KV head `kvh`) at `position`
/// (`at = (b, h, kvh, position)`).
fn query_row(
    spec: &WorkloadSpec,
    model: &KvHeadModel,
    profile: HeadProfile,
    at: (usize, usize, usize, usize),
    q: &mut [f32],
) {
    let (b, h, kvh, position) = at;
    let sqrt_d = (spec.dim as f32).sqrt();
    let mut rng = Rng::stream(spec.seed, &[TAG_QUERY, b as u64, h as u64, position as u64]);
    let sink_affinity = 1.0 + SINK_AFFINITY_SPREAD * rng.normal();
    let heavy_affinity = 1.0 + HEAVY_AFFINITY_SPREAD * rng.normal();
    let lean = if spec.clusters > 0 {
        Some(if rng.uniform() < OWN_CLUSTER_PROBABILITY {
            model.token_cluster(spec, b, kvh, position)
        } else {
            rng.below(spec.clusters)
        })
    } else {
        None
    };
    rng.fill_normal(q);
    // Keys are unit-variance in the semantic channels, so noise of std σ there adds logits
    // of std σ·√m/√D.
    let m = model.semantic.len();
    let sigma = spec.noise_logit * sqrt_d / (m as f32).sqrt();
    for &ch in &model.semantic {
        q[ch] *= sigma;
    }
    if let Some(c) = lean {
        // A key of cluster c has (1/√(1+s²))·centroid in these channels, so adding
        // a·centroid/|centroid|² to the query adds a/(√(1+s²)·√D) to its logits.
        let s = spec.cluster_spread;
        let a = spec.cluster_logit * profile.cluster * sqrt_d * (1.0 + s * s).sqrt()
            / model.centroid_norm2[c];
        let centroid = &model.centroids[c * m..(c + 1) * m];
        for (&ch, &x) in model.semantic.iter().zip(centroid) {
            q[ch] += a * x;
        }
    }
    // Outlier channels keep their N(0, 1) noise.
    if let Some(ch) = model.sink {
        q[ch] = sqrt_d * sink_affinity;
    }
    if let Some(ch) = model.heavy {
        q[ch] = sqrt_d * profile.heavy * heavy_affinity;
    }
    if !model.planes.is_empty() {
        // Keys have √2·(cos, sin) in each plane: amplitude a per plane adds
        // a·√2·Σcos(ωΔ)/√D = recency·K(Δ) with a = recency·√D/(√2·P).
        let a = spec.recency * profile.recency * sqrt_d
            / (std::f32::consts::SQRT_2 * model.planes.len() as f32);
        for &(c, s, omega) in &model.planes {
            let (sin, cos) = (omega * position as f64).sin_cos();
            q[c] = a * cos as f32;
            q[s] = a * sin as f32;
        }
    }
    if spec.sharpness != 1.0 {
        q.iter_mut().for_each(|x| *x *= spec.sharpness);
    }
}

/// Calls `f(row, a_row, b_row)` for every row of `dim` floats of `a` (and the matching row of
/// `b`, which has as many rows), on all cores when there is enough work.
fn par_rows<F>(dim: usize, a: &mut [f32], b: Option<&mut [f32]>, f: F)
where
    F: Fn(usize, &mut [f32], Option<&mut [f32]>) + Sync,
{
    let rows = a.len() / dim;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(rows.div_ceil(1024))
        .max(1);
    let per = rows.div_ceil(threads);
    let work = |first: usize, a: &mut [f32], mut b: Option<&mut [f32]>| {
        for (i, a_row) in a.chunks_exact_mut(dim).enumerate() {
            let b_row = b.as_deref_mut().map(|b| &mut b[i * dim..(i + 1) * dim]);
            f(first + i, a_row, b_row);
        }
    };
    if threads == 1 {
        work(0, a, b);
        return;
    }
    std::thread::scope(|scope| {
        let mut b_chunks = b.map(|b| b.chunks_mut(per * dim));
        for (t, a_chunk) in a.chunks_mut(per * dim).enumerate() {
            let b_chunk = b_chunks.as_mut().and_then(|c| c.next());
            let work = &work;
            scope.spawn(move || work(t * per, a_chunk, b_chunk));
        }
    });
}

impl Workload {
    /// A workload from tensors already in memory (e.g. captured by other means): checks the
    /// shape and that each tensor has the element count it implies.
    pub fn from_tensors(
        shape: Shape,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
    ) -> Result<Workload, WorkloadError> {
        shape.validate().map_err(WorkloadError::InvalidSpec)?;
        for (name, len, want) in [
            ("q", q.len(), shape.q_len()),
            ("k", k.len(), shape.kv_len()),
            ("v", v.len(), shape.kv_len()),
        ] {
            if len != want {
                return Err(WorkloadError::InvalidSpec(format!(
                    "{name} has {len} elements; {shape:?} needs {want}"
                )));
            }
        }
        Ok(Workload {
            shape,
            spec: None,
            q,
            k,
            v,
        })
    }

    /// The softmax scale `1/√D`.
    pub fn scale(&self) -> f32 {
        1.0 / (self.shape.dim as f32).sqrt()
    }

    /// Query row `r` of sequence `b`, head `h` (`D` floats).
    pub fn query(&self, b: usize, h: usize, r: usize) -> &[f32] {
        let s = &self.shape;
        let start = ((b * s.heads + h) * s.queries + r) * s.dim;
        &self.q[start..start + s.dim]
    }

    /// The keys of sequence `b`, KV head `kv_head`: `S` rows of `D`.
    pub fn keys(&self, b: usize, kv_head: usize) -> &[f32] {
        let s = &self.shape;
        let start = (b * s.kv_heads + kv_head) * s.seq * s.dim;
        &self.k[start..start + s.seq * s.dim]
    }

    /// The values of sequence `b`, KV head `kv_head`: `S` rows of `D`.
    pub fn values(&self, b: usize, kv_head: usize) -> &[f32] {
        let s = &self.shape;
        let start = (b * s.kv_heads + kv_head) * s.seq * s.dim;
        &self.v[start..start + s.seq * s.dim]
    }

    /// The decode queries `[B, H, D]`: each head's last query row, at position `S − 1`.
    pub fn decode_query(&self) -> Vec<f32> {
        let s = &self.shape;
        let mut out = Vec::with_capacity(s.batch * s.heads * s.dim);
        for b in 0..s.batch {
            for h in 0..s.heads {
                out.extend_from_slice(self.query(b, h, s.queries - 1));
            }
        }
        out
    }

    /// The decode step as the bf16 pipelines run it: the decode queries `[B, H, D]` and K,
    /// V in the cache layout `[B, S, H_kv, D]`, each rounded to bf16 (what goes to the
    /// device) and the same values widened to f64 (what the float64 references read).
    pub fn decode_step_bf16(&self) -> [(Vec<half::bf16>, Vec<f64>); 3] {
        let (k, v) = self.kv_cache_layout();
        [self.decode_query(), k, v].map(|x| {
            let b: Vec<half::bf16> = x.iter().map(|&y| half::bf16::from_f32(y)).collect();
            let w = b.iter().map(|y| y.to_f64()).collect();
            (b, w)
        })
    }

    /// K and V in the decode cache layout `[B, S, H_kv, D]` (token-major, as the decode
    /// kernels read them), from the `[B, H_kv, S, D]` they are stored in.
    pub fn kv_cache_layout(&self) -> (Vec<f32>, Vec<f32>) {
        (self.to_token_major(&self.k), self.to_token_major(&self.v))
    }

    fn to_token_major(&self, x: &[f32]) -> Vec<f32> {
        let s = &self.shape;
        let (d, hk, seq) = (s.dim, s.kv_heads, s.seq);
        let mut out = vec![0f32; x.len()];
        par_rows(d, &mut out, None, |row, dst, _| {
            // Output row (b·S + j)·H_kv + h is row (b·H_kv + h)·S + j of the input.
            let (bj, h) = (row / hk, row % hk);
            let (b, j) = (bj / seq, bj % seq);
            let src = ((b * hk + h) * seq + j) * d;
            dst.copy_from_slice(&x[src..src + d]);
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> WorkloadSpec {
        WorkloadSpec {
            batch: 2,
            heads: 4,
            kv_heads: 2,
            seq: 300,
            queries: 5,
            dim: 64,
            seed: 9,
            ..WorkloadSpec::default()
        }
    }

    #[test]
    fn recency_kernel_decays() {
        // Σ cos(ωΔ)/P over the Cauchy-quantile frequencies: 1 at 0, about e⁻¹ at one window.
        let spec = WorkloadSpec::default();
        let model = KvHeadModel::new(&spec, 0);
        let kernel = |delta: f64| {
            model
                .planes
                .iter()
                .map(|&(_, _, w)| (w * delta).cos())
                .sum::<f64>()
                / model.planes.len() as f64
        };
        assert!((kernel(0.0) - 1.0).abs() < 1e-12);
        let w = spec.recency_window as f64;
        assert!(
            kernel(w / 4.0) > kernel(w),
            "{} {}",
            kernel(w / 4.0),
            kernel(w)
        );
        assert!(
            (kernel(w) - (-1f64).exp()).abs() < 0.15,
            "K(window) = {}",
            kernel(w)
        );
        let far: f64 = (0..1000)
            .map(|i| kernel(20.0 * w + i as f64).abs())
            .sum::<f64>()
            / 1000.0;
        assert!(far < 0.25, "far mean |K| = {far}");
    }

    #[test]
    fn channels_are_a_partition() {
        let spec = WorkloadSpec::default();
        let model = KvHeadModel::new(&spec, 1);
        let mut all: Vec<usize> = model.outliers.iter().map(|&(c, _)| c).collect();
        all.extend(model.sink);
        all.extend(model.heavy);
        for &(c, s, _) in &model.planes {
            all.extend([c, s]);
        }
        all.extend(&model.semantic);
        all.sort_unstable();
        assert_eq!(all, (0..spec.dim).collect::<Vec<_>>());
        assert_eq!(model.semantic.len(), 128 - 4 - 2 - 32);
    }

    #[test]
    fn queries_do_not_depend_on_how_many_there_are() {
        let full = generate(&small()).unwrap();
        let one = generate(&WorkloadSpec {
            queries: 1,
            ..small()
        })
        .unwrap();
        assert_eq!(one.k, full.k);
        assert_eq!(one.v, full.v);
        assert_eq!(one.decode_query(), full.decode_query());
    }

    #[test]
    fn single_and_multi_threaded_agree() {
        // par_rows with one thread versus several must fill the same rows.
        let spec = small();
        let models: Vec<_> = (0..spec.kv_heads)
            .map(|h| KvHeadModel::new(&spec, h))
            .collect();
        let hitters = spec.heavy_hitters_with_strength(1, 1);
        let mut k = vec![0f32; spec.dim];
        let mut v = vec![0f32; spec.dim];
        key_value_row(&spec, &models[1], &hitters, (1, 1, 17), &mut k, &mut v);
        let w = generate(&spec).unwrap();
        let start = ((spec.kv_heads + 1) * spec.seq + 17) * spec.dim;
        assert_eq!(&w.k[start..start + spec.dim], &k[..]);
        assert_eq!(&w.v[start..start + spec.dim], &v[..]);
    }

    #[test]
    fn bad_specs_are_refused() {
        let cases = [
            WorkloadSpec {
                heads: 6,
                kv_heads: 4,
                ..small()
            },
            WorkloadSpec { seq: 0, ..small() },
            WorkloadSpec {
                queries: 301,
                ..small()
            },
            WorkloadSpec { dim: 8, ..small() },
            WorkloadSpec {
                sharpness: f32::NAN,
                ..small()
            },
            WorkloadSpec {
                value_coherence: 1.5,
                ..small()
            },
            WorkloadSpec {
                recency_window: 0.0,
                ..small()
            },
            WorkloadSpec {
                clusters: 301,
                ..small()
            },
        ];
        for spec in cases {
            assert!(
                matches!(generate(&spec), Err(WorkloadError::InvalidSpec(_))),
                "{spec:?}"
            );
        }
    }

    #[test]
    fn heavy_hitters_are_distinct_and_after_the_sinks() {
        let spec = small();
        let hh = spec.heavy_hitters(1, 0);
        assert_eq!(hh.len(), spec.heavy_hitters);
        assert!(hh.windows(2).all(|w| w[0] < w[1]));
        assert!(hh[0] >= spec.sinks && *hh.last().unwrap() < spec.seq);
        assert_ne!(hh, spec.heavy_hitters(0, 0));
        // A sequence shorter than the request: every non-sink token.
        let tiny = WorkloadSpec {
            seq: 10,
            queries: 1,
            ..small()
        };
        assert_eq!(tiny.heavy_hitters(0, 0), (4..10).collect::<Vec<_>>());
    }
}
