//! The HATA decoder: one layer's KV cache with its hash codes, and the decode step a user
//! calls — append the new key, hash the query heads, score every cached key, keep the top-k
//! (plus sink and recent tokens), and attend to exactly those with flash-decoding.
//!
//! The append and the selection read the cache length from device memory and score a fixed
//! number of columns (the length rounded up to [`SCORE_GRANULE`]), so one captured graph
//! serves every step until the column count, the budget or the caller's buffers change
//! ([`HataLayer::step`], `step_graph`). Below a crossover length a step decodes dense
//! ([`HataLayer::set_dense_below`]; measured per shape by [`super::crossover`]): at short
//! caches the selection costs more than it saves.
//! A dense step attends over the same rounded-up columns, the rows past the cache masked by
//! a `log n` bias of `ln 0` (entry sizes 1 up to the length, 0 after), so it too is one
//! graph replay.

mod step_graph;

use kiln::prelude::*;
use kiln::tune::{Entry, Store, TuneOptions};
use kiln::{Device, DeviceBuffer, Element, Kernel, LaunchConfig, RuntimeError};

use super::append::{hata_append, THREADS as APPEND_THREADS};
use super::crossover;
use super::encode::{
    self, group_launch, hash_encode, hash_encode_group, key_mean, key_sum_partial, mean_launch,
    scatter_rows, MEAN_TOKENS, VECTORS_PER_WARP,
};
use super::score::{self, hash_score};
use super::topk::{TopK, TopKError, TopKScratch};
use crate::attention::decode::{
    DecodeError, DecodeInputs, DecodeScratch, DecodeShape, FlashDecode,
};
use crate::common::check_kv_len;

/// The selection scores the cache length rounded up to a multiple of this many columns (at
/// most the capacity), the columns past the cache masked out: a captured step stays valid
/// for up to this many tokens (fewer with a [`Budget::Ratio`], whose key count changes
/// every `1 / ratio` tokens and is recaptured then). A dense step attends over the same
/// columns, so it reads up to this many masked rows more than dense attention would.
pub const SCORE_GRANULE: u32 = 1024;

/// Cached tokens over the whole batch (`batch · len`) below which a step decodes dense by
/// default. Measured on an H200 (`bench-results/h200-2026-12-03-decode/` and
/// `h200-2026-12-04-dense-graph/`, the `hata` bench, heads 32/8, D 128, budget 1.6%): the
/// graph-captured sparse step against dense flash-decoding is 0.50× at B 1 · 8K and 0.69× at
/// B 8 · 2K (16K tokens both), 1.06–1.10× at B 1 · 32K and 1.03–1.07× at B 8 · 4K (32K tokens
/// both). Below it the dense step (one graph replay too, then still hashing the new key for
/// later sparse steps) measured 0.52–0.84× of dense attention alone at B 1 · 2K–8K and
/// 0.77–0.90× at B 8 · 2K over two runs: it cost the append, the hashing and up to
/// [`SCORE_GRANULE`]` − 1` masked rows beyond dense (dense steps now defer the hashing). A
/// crossover measured for the shape ([`super::crossover`]) takes its place.
pub const DEFAULT_DENSE_BELOW_TOKENS: u32 = 32 * 1024;

/// How many keys a step attends to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// A fixed number of keys (sink and recent tokens included).
    Count(u32),
    /// A fraction of the cached tokens (e.g. 0.016), at least one key.
    Ratio(f32),
}

impl Budget {
    /// Keys a step over `len` cached tokens attends to (at least 1, at most `len`).
    pub fn keys(&self, len: u32) -> u32 {
        let k = match *self {
            Budget::Count(k) => k,
            Budget::Ratio(r) => (r as f64 * len as f64).ceil() as u32,
        };
        k.clamp(1, len.max(1))
    }
}

/// One layer's HATA settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HataConfig {
    /// Sequences decoded together.
    pub batch: u32,
    /// Query heads.
    pub heads: u32,
    /// KV heads (`heads` a multiple, at most 16 query heads per KV head).
    pub kv_heads: u32,
    /// Head dimension: 64 or 128.
    pub dim: u32,
    /// Bits per hash code: 128 or 256.
    pub rbit: u32,
    /// Tokens the cache can hold.
    pub capacity: u32,
    /// Keys attended per step.
    pub budget: Budget,
    /// The first `sink` tokens are always selected.
    pub sink: u32,
    /// The last `recent` tokens are always selected.
    pub recent: u32,
    /// Weight scores by key norms (`score = (G − 2·ham/rbit)·‖k‖`).
    pub use_norms: bool,
    /// Hash keys centred on the mean key of their sequence and KV head (`k − μ`, norms of
    /// `k − μ`), `μ` taken at [`HataLayer::prefill`] and kept for the keys appended later (a
    /// cache filled by appends alone has `μ = 0`). Leaves the exact ranking unchanged and
    /// frees the code bits from the component every key shares (see `hata::encode`); the
    /// hash weights must be trained on centred keys too (`SampleOptions::center_keys`).
    pub center_keys: bool,
    /// Attend to every cached token (a layer kept dense).
    pub dense: bool,
}

/// Why a HATA call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum HataError {
    /// Settings or buffers that do not fit together.
    #[error("hata: {0}")]
    Config(String),
    /// The cache is full.
    #[error("hata: the cache holds {0} tokens and is full")]
    Full(u32),
    /// A kernel failed to build or launch.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The attention step failed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The selection failed.
    #[error(transparent)]
    TopK(#[from] TopKError),
}

/// One layer of HATA decoding over element type `T` (bf16 or f16).
pub struct HataLayer<T: Element> {
    device: Device,
    cfg: HataConfig,
    w: DeviceBuffer<f32>,
    k: DeviceBuffer<T>,
    v: DeviceBuffer<T>,
    codes: DeviceBuffer<u32>,
    norms: DeviceBuffer<f32>,
    q_codes: DeviceBuffer<u32>,
    no_norms: DeviceBuffer<f32>,
    /// The mean key per (sequence, KV head), `[batch, kv_heads, dim]` (zeros until a
    /// centring prefill).
    mu: DeviceBuffer<f32>,
    /// [`key_sum_partial`]'s sums, `[batch, kv_heads, ⌈capacity / MEAN_TOKENS⌉, dim]`.
    mean_partial: DeviceBuffer<f32>,
    scores: DeviceBuffer<f32>,
    ids: DeviceBuffer<u32>,
    len: u32,
    /// Tokens whose hash codes and norms are in the cache: a step below the dense crossover
    /// leaves its key unhashed, and the first sparse step encodes what is missing.
    hashed: u32,
    /// `len` in device memory, what the append and the scoring read, and the append's
    /// ticket counter: `[len, 0]`.
    dev_len: DeviceBuffer<u32>,
    /// A step's new key codes and norms, `[batch, kv_heads, rbit / 32]` and
    /// `[batch, kv_heads]`, before [`hata_append`] puts them at position `len`.
    new_codes: DeviceBuffer<u32>,
    new_norms: DeviceBuffer<f32>,
    /// 1 for every cached row and 0 past the length, `[batch, capacity, kv_heads]`: the
    /// entry sizes of the dense attention's `log n` bias, which masks the 0 rows.
    sizes: DeviceBuffer<f32>,
    /// A step at fewer cached tokens per sequence decodes dense.
    dense_below: u32,
    /// Whether [`HataLayer::step`] replays captured graphs (else it launches each kernel).
    use_graphs: bool,
    graph: Option<step_graph::StepGraph>,
    /// Steps served by one graph replay, and graphs captured, since construction.
    replays: u64,
    captures: u64,
    /// Why a capture failed, after which steps launch kernel by kernel.
    capture_error: Option<String>,
    /// `hash_encode` with 8 vectors per warp: a prefill's keys.
    encode_many: Kernel,
    /// `hash_encode_group` over a step's query heads (a GQA group per block) and over its new
    /// keys (one per block).
    encode_queries: Kernel,
    encode_key: Kernel,
    score: Kernel,
    scatter: Kernel,
    append: Kernel,
    key_sum: Kernel,
    key_mean: Kernel,
    topk: TopK,
    topk_scratch: TopKScratch,
    sparse: FlashDecode,
    dense: FlashDecode,
    scratch: DecodeScratch,
}

impl<T: Element + Float> HataLayer<T> {
    /// A layer with an empty cache and hash weights `weights` (`[kv_heads, dim, rbit]`, f32,
    /// host memory).
    pub fn new(device: &Device, cfg: HataConfig, weights: &[f32]) -> Result<Self, HataError> {
        let bad = |m: String| Err(HataError::Config(m));
        if cfg.dim != 64 && cfg.dim != 128 {
            return bad(format!("head dimension {} (64 or 128)", cfg.dim));
        }
        if cfg.rbit != 128 && cfg.rbit != 256 {
            return bad(format!("{} code bits (128 or 256)", cfg.rbit));
        }
        if cfg.kv_heads == 0
            || !cfg.heads.is_multiple_of(cfg.kv_heads)
            || cfg.heads / cfg.kv_heads > 16
            || cfg.heads > 128
        {
            return bad(format!(
                "{} query heads over {} KV heads (a multiple, at most 16 per KV head and 128 in all)",
                cfg.heads, cfg.kv_heads
            ));
        }
        if cfg.batch == 0 || cfg.capacity == 0 {
            return bad("batch and capacity must be positive".into());
        }
        // the copy kernels index a whole cache's elements, and the scores its rows, in u32
        let elements = cfg.batch as u64 * cfg.capacity as u64 * (cfg.kv_heads * cfg.dim) as u64;
        if elements > u32::MAX as u64 {
            return bad(format!(
                "a cache of {elements} elements (batch {} × capacity {} × kv_heads {} × dim {}) \
                 is more than the 2^32 the kernels index; split the batch over several layers",
                cfg.batch, cfg.capacity, cfg.kv_heads, cfg.dim
            ));
        }
        let want = (cfg.kv_heads * cfg.dim * cfg.rbit) as usize;
        if weights.len() != want {
            return bad(format!(
                "hash weights hold {} values, [kv_heads, dim, rbit] needs {want}",
                weights.len()
            ));
        }
        if let Budget::Ratio(r) = cfg.budget {
            if !(r > 0.0 && r <= 1.0) {
                return bad(format!("budget ratio {r} is not in (0, 1]"));
            }
        }
        let dtype = T::DTYPE;
        let (b, cap, hk, d) = (
            cfg.batch as usize,
            cfg.capacity as usize,
            cfg.kv_heads as usize,
            cfg.dim as usize,
        );
        let words = (cfg.rbit / 32) as usize;
        Ok(HataLayer {
            device: device.clone(),
            cfg,
            w: device.upload(weights)?,
            k: device.zeros(b * cap * hk * d)?,
            v: device.zeros(b * cap * hk * d)?,
            codes: device.zeros(b * cap * hk * words)?,
            norms: device.zeros(b * cap * hk)?,
            q_codes: device.zeros(b * cfg.heads as usize * words)?,
            no_norms: device.zeros(1)?,
            mu: device.zeros(b * hk * d)?,
            mean_partial: device.zeros(b * hk * cfg.capacity.div_ceil(MEAN_TOKENS) as usize * d)?,
            scores: device.zeros(b * hk * cap)?,
            ids: device.zeros(b * hk * cap)?,
            len: 0,
            hashed: 0,
            dev_len: device.zeros(2)?,
            new_codes: device.zeros(b * hk * words)?,
            new_norms: device.zeros(b * hk)?,
            sizes: device.zeros(b * cap * hk)?,
            dense_below: crossover::stored_crossover(device, &cfg, &Store::default_location())
                .unwrap_or_else(|| crossover::default_crossover(cfg.batch)),
            use_graphs: true,
            graph: None,
            replays: 0,
            captures: 0,
            capture_error: None,
            encode_many: hash_encode::spec()
                .t(dtype)
                .d(cfg.dim)
                .rbit(cfg.rbit)
                .v(VECTORS_PER_WARP)
                .build(device)?,
            encode_queries: hash_encode_group::spec()
                .t(dtype)
                .d(cfg.dim)
                .rbit(cfg.rbit)
                .g(cfg.heads / cfg.kv_heads)
                .build(device)?,
            encode_key: hash_encode_group::spec()
                .t(dtype)
                .d(cfg.dim)
                .rbit(cfg.rbit)
                .g(1)
                .build(device)?,
            score: hash_score::spec()
                .rbit(cfg.rbit)
                .g(cfg.heads / cfg.kv_heads)
                .build(device)?,
            scatter: scatter_rows::spec().t(dtype).build(device)?,
            append: hata_append::spec()
                .t(dtype)
                .d(cfg.dim)
                .words(cfg.rbit / 32)
                .build(device)?,
            key_sum: key_sum_partial::spec()
                .t(dtype)
                .d(cfg.dim)
                .span(MEAN_TOKENS)
                .build(device)?,
            key_mean: key_mean::spec().d(cfg.dim).build(device)?,
            topk: TopK::new(device)?,
            topk_scratch: TopKScratch::new(device, (b * hk) as u32, cfg.capacity)?,
            sparse: FlashDecode::new(device, dtype, cfg.dim, true)?,
            dense: FlashDecode::with_counts(device, dtype, cfg.dim, false)?,
            scratch: DecodeScratch::new(device, 1, d)?,
        })
    }

    /// Tokens in the cache.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys a step over `len` cached tokens attends to.
    pub fn budget_for(&self, len: u32) -> u32 {
        self.cfg.budget.keys(len)
    }

    /// The scores of the last sparse step, `[batch, kv_heads, cols]` with `cols =`
    /// [`HataLayer::score_columns`] (the first `len` of a row are the cached tokens', the
    /// rest `−∞`).
    pub fn scores(&self) -> &DeviceBuffer<f32> {
        &self.scores
    }

    /// Columns the selection scores at the current length: the length rounded up to
    /// [`SCORE_GRANULE`], at most the capacity (the row stride of [`HataLayer::scores`]).
    pub fn score_columns(&self) -> u32 {
        self.columns_at(self.len)
    }

    fn columns_at(&self, len: u32) -> u32 {
        len.next_multiple_of(SCORE_GRANULE).min(self.cfg.capacity)
    }

    /// Decode dense while fewer than `len` tokens per sequence are cached (0: always sparse
    /// unless the budget covers the cache). The default is the crossover measured for this
    /// shape on this device ([`crossover::tune_crossover`], kept in the compile-cache
    /// folder's tuning store), else [`DEFAULT_DENSE_BELOW_TOKENS`] over the batch.
    pub fn set_dense_below(&mut self, len: u32) {
        self.dense_below = len;
    }

    /// Steps served by a graph replay and graphs captured since the layer was made (a
    /// workload that recaptures often changes its step buffers or crosses granules).
    pub fn graph_counts(&self) -> (u64, u64) {
        (self.replays, self.captures)
    }

    /// Why capturing a step as a graph failed, if it did: that step still ran (kernel by
    /// kernel, its results are valid) and graphs are off from then on.
    pub fn capture_error(&self) -> Option<&str> {
        self.capture_error.as_deref()
    }

    /// Whether [`HataLayer::step`] captures its steps as graphs and replays them (the
    /// default) or launches every kernel each step (the same kernels, so the same results).
    pub fn set_graphs(&mut self, on: bool) {
        self.use_graphs = on;
        if !on {
            self.graph = None;
        }
    }

    /// The mean key per (sequence, KV head) the keys are centred on, `[batch, kv_heads,
    /// dim]` (zeros without `center_keys`).
    pub fn key_mean(&self) -> &DeviceBuffer<f32> {
        &self.mu
    }

    /// The cached keys' hash codes `[batch, capacity, kv_heads, rbit / 32]` and norms
    /// `[batch, capacity, kv_heads]`: complete for every cached token after a prefill or a
    /// sparse step; dense steps leave their keys' codes to the next sparse step.
    pub fn key_codes(&self) -> (&DeviceBuffer<u32>, &DeviceBuffer<f32>) {
        (&self.codes, &self.norms)
    }

    /// The indices selected by the last sparse step, `[batch, kv_heads, budget]`.
    pub fn selected(&self) -> &DeviceBuffer<u32> {
        &self.ids
    }

    fn shape(&self) -> DecodeShape {
        DecodeShape {
            batch: self.cfg.batch,
            heads: self.cfg.heads,
            kv_heads: self.cfg.kv_heads,
            seq: self.cfg.capacity,
            dim: self.cfg.dim,
        }
    }

    /// Copies `src` (`per_batch` elements per sequence) into the cache `dst` at token `pos`.
    fn scatter_into(
        scatter: &Kernel,
        cfg: &HataConfig,
        src: &DeviceBuffer<T>,
        dst: &mut DeviceBuffer<T>,
        per_batch: u32,
        pos: u32,
    ) -> Result<(), HataError> {
        let row = (cfg.kv_heads * cfg.dim) as u64;
        let n = src.len() as u32;
        scatter_rows::launch(
            scatter,
            &LaunchConfig::for_elements(n, 256),
            src,
            dst,
            n,
            per_batch,
            cfg.capacity as u64 * row,
            pos as u64 * row,
        )?;
        Ok(())
    }

    /// Fills the cache with a prefill's keys and values (`[batch, len, kv_heads, dim]`) and
    /// hashes every key (codes and norms) — when the next step is sparse; else the first
    /// sparse step's [`HataLayer::score`] does. Replaces what the cache held.
    pub fn prefill(
        &mut self,
        k: &DeviceBuffer<T>,
        v: &DeviceBuffer<T>,
        len: u32,
    ) -> Result<(), HataError> {
        let c = self.cfg;
        if len == 0 || len > c.capacity {
            return Err(HataError::Config(format!(
                "a prefill of {len} tokens into a cache of {}",
                c.capacity
            )));
        }
        let want = (c.batch * len * c.kv_heads * c.dim) as usize;
        check_kv_len(
            "prefill",
            (k.len(), v.len()),
            want,
            "[batch, len, kv_heads, dim]",
        )
        .map_err(HataError::Config)?;
        let per_batch = len * c.kv_heads * c.dim;
        Self::scatter_into(&self.scatter, &c, k, &mut self.k, per_batch, 0)?;
        Self::scatter_into(&self.scatter, &c, v, &mut self.v, per_batch, 0)?;
        if c.center_keys {
            let (sums, mean, splits) = mean_launch(len, c.batch, c.kv_heads, c.dim);
            key_sum_partial::launch(
                &self.key_sum,
                &sums,
                k,
                &mut self.mean_partial,
                len,
                c.kv_heads,
            )?;
            key_mean::launch(
                &self.key_mean,
                &mean,
                &self.mean_partial,
                &mut self.mu,
                splits,
                len,
            )?;
        }
        // the keys are hashed from the cache, where they now are; not before the first
        // sparse step if the next one decodes dense
        self.len = len;
        self.hashed = 0;
        if self.sparse_at(len + 1) {
            self.hash_missing()?;
        }
        let mut sizes = vec![0.0f32; (c.batch * c.capacity * c.kv_heads) as usize];
        for seq in sizes.chunks_mut((c.capacity * c.kv_heads) as usize) {
            seq[..(len * c.kv_heads) as usize].fill(1.0);
        }
        self.device.write(&mut self.sizes, &sizes)?;
        self.device.write(&mut self.dev_len, &[len, 0])?;
        Ok(())
    }

    /// Appends one token's key and value (`[batch, kv_heads, dim]`). The key is hashed when
    /// a step at the new length is sparse; below the dense crossover (and while the budget
    /// covers the cache) its code is left for the first sparse step's [`HataLayer::score`]
    /// to encode, so a dense step costs what dense decoding does plus the copy.
    pub fn append(
        &mut self,
        k_new: &DeviceBuffer<T>,
        v_new: &DeviceBuffer<T>,
    ) -> Result<(), HataError> {
        let c = self.cfg;
        if self.len == c.capacity {
            return Err(HataError::Full(c.capacity));
        }
        let want = (c.batch * c.kv_heads * c.dim) as usize;
        check_kv_len(
            "new",
            (k_new.len(), v_new.len()),
            want,
            "[batch, kv_heads, dim]",
        )
        .map_err(HataError::Config)?;
        // only a cache whose codes are complete keeps them so; else the catch-up covers it
        let hash = self.sparse_at(self.len + 1) && self.hashed >= self.len;
        if hash {
            hash_encode_group::launch(
                &self.encode_key,
                &group_launch(c.kv_heads, c.batch, c.rbit),
                k_new,
                &self.w,
                &self.mu,
                c.center_keys,
                &mut self.new_codes,
                &mut self.new_norms,
                c.kv_heads,
                c.kv_heads,
                c.kv_heads,
                0,
                true,
            )?;
        }
        hata_append::launch(
            &self.append,
            &LaunchConfig {
                grid: (c.batch, 1, 1),
                block: (APPEND_THREADS, 1, 1),
                dyn_shared_bytes: 0,
            },
            &mut self.dev_len,
            k_new,
            v_new,
            &self.new_codes,
            &self.new_norms,
            &mut self.k,
            &mut self.v,
            &mut self.codes,
            &mut self.norms,
            &mut self.sizes,
            c.capacity,
            c.kv_heads,
            hash,
        )?;
        self.len += 1;
        if hash {
            self.hashed = self.hashed.max(self.len);
        }
        Ok(())
    }

    /// Encodes the cached keys that dense steps left without codes (tokens
    /// `[hashed, len)` of every sequence), so that the cache is fully hashed again.
    fn hash_missing(&mut self) -> Result<(), HataError> {
        let c = self.cfg;
        if self.hashed >= self.len {
            return Ok(());
        }
        let rows = (self.len - self.hashed) * c.kv_heads;
        let (row0, per_seq) = (self.hashed * c.kv_heads, c.capacity * c.kv_heads);
        hash_encode::launch(
            &self.encode_many,
            &encode::launch_config(c.batch * rows, c.kv_heads),
            &self.k,
            &self.w,
            &self.mu,
            c.center_keys,
            &mut self.codes,
            &mut self.norms,
            c.batch * rows,
            c.kv_heads,
            1,
            rows,
            per_seq,
            row0,
            per_seq,
            row0,
            true,
        )?;
        self.hashed = self.len;
        Ok(())
    }

    /// Hashes the query heads `q` (`[batch, heads, dim]`) and scores every cached key (the
    /// sink and the last `recent` tokens `+∞`, the columns past the cache `−∞`), after
    /// encoding the keys dense steps left without codes.
    pub fn score(&mut self, q: &DeviceBuffer<T>) -> Result<(), HataError> {
        self.hash_missing()?;
        let c = self.cfg;
        hash_encode_group::launch(
            &self.encode_queries,
            &group_launch(c.kv_heads, c.batch, c.rbit),
            q,
            &self.w,
            &self.mu,
            false,
            &mut self.q_codes,
            &mut self.no_norms,
            c.kv_heads,
            c.heads,
            c.heads,
            0,
            false,
        )?;
        let cols = self.score_columns();
        // the recent window and the columns past the cache from the device's length
        hash_score::launch(
            &self.score,
            &score::launch_config(cols, c.kv_heads, c.batch),
            &self.q_codes,
            &self.codes,
            &self.norms,
            &mut self.scores,
            &self.dev_len,
            0,
            cols,
            c.capacity,
            c.kv_heads,
            c.sink,
            c.recent,
            f32::INFINITY,
            c.use_norms,
        )?;
        Ok(())
    }

    /// Keeps the `budget` best-scored keys of every (batch, KV head) in [`HataLayer::selected`].
    pub fn select(&mut self) -> Result<(), HataError> {
        let rows = self.cfg.batch * self.cfg.kv_heads;
        let k = self.budget_for(self.len);
        self.topk.run(
            &self.scores,
            rows,
            self.score_columns(),
            k,
            &mut self.ids,
            &mut self.topk_scratch,
        )?;
        Ok(())
    }

    /// Attention of `q` over the selected keys (or every cached key for a dense layer or a
    /// budget covering the cache): `out` `[batch, heads, dim]`, natural-log `lse`
    /// `[batch, heads]`.
    pub fn attend(
        &mut self,
        q: &DeviceBuffer<T>,
        out: &mut DeviceBuffer<T>,
        lse: &mut DeviceBuffer<f32>,
    ) -> Result<(), HataError> {
        let shape = self.shape();
        let scale = 1.0 / (self.cfg.dim as f32).sqrt();
        if self.is_sparse() {
            let k = self.budget_for(self.len);
            self.sparse.run(
                &shape,
                q,
                &self.k,
                &self.v,
                Some(&self.ids),
                k,
                scale,
                out,
                lse,
                &mut self.scratch,
            )?;
        } else {
            // the rounded-up columns, the rows past the cache masked by their size 0
            self.dense.run_with_counts(
                &shape,
                q,
                &self.k,
                &self.v,
                None,
                Some(&self.sizes),
                self.score_columns(),
                scale,
                out,
                lse,
                &mut self.scratch,
            )?;
        }
        Ok(())
    }

    /// Searches the split size of the attention a step at the current length runs — over
    /// the last selection when the step is sparse (call after a `score` + `select` on
    /// representative data), else the dense attention over the cache — for this layer's
    /// shape, length and budget (on `q`, overwriting `out`, `lse`), stores the winner with
    /// the autotuner's other results and uses it from then on.
    pub fn tune_attend(
        &mut self,
        q: &DeviceBuffer<T>,
        out: &mut DeviceBuffer<T>,
        lse: &mut DeviceBuffer<f32>,
        options: &TuneOptions,
    ) -> Result<Entry, HataError>
    where
        T: Into<f32> + Copy,
    {
        let shape = self.shape();
        let scale = 1.0 / (self.cfg.dim as f32).sqrt();
        // a captured step keeps the split it was captured with
        self.graph = None;
        let (decode, ids, counts, n_keys) = if self.is_sparse() {
            let k = self.budget_for(self.len);
            (&mut self.sparse, Some(&self.ids), None, k)
        } else {
            let cols = self.score_columns();
            (&mut self.dense, None, Some(&self.sizes), cols)
        };
        let inputs = [DecodeInputs {
            k: &self.k,
            v: &self.v,
            counts,
        }];
        Ok(decode.tune_rotating(
            &shape,
            q,
            &inputs,
            ids,
            n_keys,
            scale,
            out,
            lse,
            &mut self.scratch,
            options,
        )?)
    }

    /// Whether a step at the current length selects keys (not dense): the layer is sparse,
    /// the budget leaves keys out, and the cache is past the dense crossover
    /// ([`HataLayer::set_dense_below`]).
    pub fn is_sparse(&self) -> bool {
        self.sparse_at(self.len)
    }

    fn sparse_at(&self, len: u32) -> bool {
        !self.cfg.dense && self.budget_for(len) < len && len >= self.dense_below
    }

    /// One decode step: append `k_new`, `v_new`, then attend with `q` (all enqueued on the
    /// device's stream; the host does not wait). A step is captured as a graph the first
    /// time it runs with its column count, budget (or dense attention) and buffers, and
    /// replayed (one launch) while they stay the same.
    pub fn step(
        &mut self,
        q: &DeviceBuffer<T>,
        k_new: &DeviceBuffer<T>,
        v_new: &DeviceBuffer<T>,
        out: &mut DeviceBuffer<T>,
        lse: &mut DeviceBuffer<f32>,
    ) -> Result<(), HataError> {
        let io = StepIo {
            q,
            k_new,
            v_new,
            out,
            lse,
        };
        if self.use_graphs && self.len < self.cfg.capacity {
            return self.graph_step(io);
        }
        self.eager_step(io)
    }

    /// [`HataLayer::step`] with every kernel launched (what a graph captures).
    fn eager_step(&mut self, io: StepIo<'_, T>) -> Result<(), HataError> {
        self.append(io.k_new, io.v_new)?;
        if self.is_sparse() {
            self.score(io.q)?;
            self.select()?;
        }
        self.attend(io.q, io.out, io.lse)
    }
}

/// The caller's buffers of one [`HataLayer::step`]: the query, the new key and value, and
/// where the output and its log-sum-exp go.
struct StepIo<'a, T: Element> {
    q: &'a DeviceBuffer<T>,
    k_new: &'a DeviceBuffer<T>,
    v_new: &'a DeviceBuffer<T>,
    out: &'a mut DeviceBuffer<T>,
    lse: &'a mut DeviceBuffer<f32>,
}

impl<T: Element> StepIo<'_, T> {
    /// The same buffers, borrowed again (a capture replays the step that just ran).
    fn again(&mut self) -> StepIo<'_, T> {
        StepIo {
            q: self.q,
            k_new: self.k_new,
            v_new: self.v_new,
            out: self.out,
            lse: self.lse,
        }
    }
}
