//! The host API: [`ChelseaCache`], one layer's merged KV cache. [`ChelseaCache::compress`]
//! compresses a prefill, [`ChelseaCache::append`] adds decode tokens and compresses a chunk
//! whenever the uncompressed tail beyond the recent window holds a full one, and
//! [`ChelseaCache::attend`] runs flash-decoding over the merged entries (with or without the
//! `log n` bias).
//!
//! Rows of the cache (`[B, capacity, H_kv, D]`, sizes `[B, capacity, H_kv]`), the same for
//! every (sequence, KV head): `[0, sink)` the sink tokens, then the compressed chunks
//! (`keep` entries each), then the raw tail (the partial last chunk and the recent window,
//! size 1 each) up to [`ChelseaCache::len`].

use kiln::prelude::*;
use kiln::tune::TuneOptions;
use kiln::{Device, DeviceBuffer, Element, Kernel, LaunchConfig, RuntimeError};

use super::kernels::{chelsea_copy, chelsea_round, MAX_CHUNK, ROUND_THREADS};
pub use super::plan::DEFAULT_ROUND_FRACTION;
use super::plan::{keep_for, rounds, Layout, Round};
use super::reference::Method;
pub use super::reference::Similarity;
use crate::attention::decode::{
    DecodeError, DecodeInputs, DecodeScratch, DecodeShape, FlashDecode,
};
use crate::common::check_kv_len;

/// One layer's Chelsea settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChelseaConfig {
    /// Sequences.
    pub batch: u32,
    /// Query heads.
    pub heads: u32,
    /// KV heads (`heads` a multiple, at most 16 query heads per KV head).
    pub kv_heads: u32,
    /// Head dimension: 64 or 128.
    pub dim: u32,
    /// Tokens per chunk: 64 to 512.
    pub chunk: u32,
    /// Target reduction of each chunk, in `[0, 1)`: 0.8 keeps `⌈0.2·chunk⌉` entries.
    pub ratio: f64,
    /// The first `sink` tokens are never merged.
    pub sink: u32,
    /// The `recent` most recent tokens are never merged.
    pub recent: u32,
    /// Entries the compressed cache can hold.
    pub capacity: u32,
    /// At most this share of a chunk's current entries merges per round, in `(0, ½]`:
    /// smaller shares take more rounds (re-partitioning in between) but merge only the
    /// most similar pairs of each; ½ merges every a at 50% reduction. Default
    /// [`DEFAULT_ROUND_FRACTION`] (⅛), chosen by measurement (see there).
    pub round_fraction: f64,
    /// How keys are compared (default: plain cosine, chosen with the round share).
    pub similarity: Similarity,
}

impl ChelseaConfig {
    /// Entries a chunk keeps.
    pub fn keep(&self) -> u32 {
        keep_for(self.chunk, self.ratio)
    }

    /// The reference's view of how chunks are compressed.
    pub fn method(&self) -> Method {
        Method {
            fraction: self.round_fraction,
            similarity: self.similarity,
        }
    }
}

/// Why a Chelsea call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ChelseaError {
    /// Settings or buffers that do not fit together.
    #[error("chelsea: {0}")]
    Config(String),
    /// The compressed cache has no room for another entry.
    #[error("chelsea: the cache holds {0} entries and is full")]
    Full(u32),
    /// A kernel failed to build or launch.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The attention step failed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Keys, values and sizes of `rows` tokens per sequence.
struct Rows<T: Element> {
    k: DeviceBuffer<T>,
    v: DeviceBuffer<T>,
    n: DeviceBuffer<f32>,
    rows: u32,
}

impl<T: Element> Rows<T> {
    fn new(device: &Device, cfg: &ChelseaConfig, rows: u32) -> Result<Self, RuntimeError> {
        let tokens = cfg.batch as usize * rows.max(1) as usize * cfg.kv_heads as usize;
        Ok(Rows {
            k: device.zeros(tokens * cfg.dim as usize)?,
            v: device.zeros(tokens * cfg.dim as usize)?,
            n: device.zeros(tokens)?,
            rows: rows.max(1),
        })
    }

    /// Back to one row: the memory goes back to the device (stream-ordered, after the work
    /// already enqueued on it).
    fn release(&mut self, device: &Device, cfg: &ChelseaConfig) -> Result<(), RuntimeError> {
        if self.rows > 1 {
            *self = Rows::new(device, cfg, 1)?;
        }
        Ok(())
    }

    /// At least `rows` rows (contents lost when it grows).
    fn ensure(
        &mut self,
        device: &Device,
        cfg: &ChelseaConfig,
        rows: u32,
    ) -> Result<(), RuntimeError> {
        if self.rows < rows {
            *self = Rows::new(device, cfg, rows)?;
        }
        Ok(())
    }

    fn src(&self) -> Src<'_, T> {
        Src {
            k: &self.k,
            v: &self.v,
            n: Some(&self.n),
            seq: self.rows,
        }
    }

    fn dst(&mut self) -> Dst<'_, T> {
        Dst {
            k: &mut self.k,
            v: &mut self.v,
            n: &mut self.n,
            seq: self.rows,
        }
    }
}

/// Rows to read: a cache with `seq` rows per sequence; `n: None` when every size is 1.
struct Src<'a, T: Element> {
    k: &'a DeviceBuffer<T>,
    v: &'a DeviceBuffer<T>,
    n: Option<&'a DeviceBuffer<f32>>,
    seq: u32,
}

/// Rows to write.
struct Dst<'a, T: Element> {
    k: &'a mut DeviceBuffer<T>,
    v: &'a mut DeviceBuffer<T>,
    n: &'a mut DeviceBuffer<f32>,
    seq: u32,
}

/// The compiled kernels and the shape they run on.
struct Kernels {
    cfg: ChelseaConfig,
    round: Kernel,
    copy: Kernel,
    copy_sizes: Kernel,
    /// Stands in for the sizes of raw tokens (never read).
    ones: DeviceBuffer<f32>,
}

impl Kernels {
    /// One round on `chunks` chunks: rows `row_in ..` of `src` to rows `row_out ..` of `dst`.
    fn round<T: Element>(
        &self,
        (src, row_in): (&Src<'_, T>, u32),
        (dst, row_out): (&mut Dst<'_, T>, u32),
        chunks: u32,
        r: Round,
    ) -> Result<(), RuntimeError> {
        let c = &self.cfg;
        let launch = LaunchConfig {
            grid: (chunks, c.kv_heads, c.batch),
            block: (ROUND_THREADS, 1, 1),
            dyn_shared_bytes: 0,
        };
        chelsea_round::launch(
            &self.round,
            &launch,
            src.k,
            src.v,
            src.n.unwrap_or(&self.ones),
            dst.k,
            dst.v,
            dst.n,
            src.seq,
            dst.seq,
            c.kv_heads,
            row_in,
            row_out,
            r.before,
            r.merges,
            src.n.is_none(),
            c.similarity == Similarity::Standardised,
        )
    }

    /// Copies `rows` rows per sequence from `src` (at `row_in`) to `dst` (at `row_out`).
    fn copy<T: Element>(
        &self,
        (src, row_in): (&Src<'_, T>, u32),
        (dst, row_out): (&mut Dst<'_, T>, u32),
        rows: u32,
    ) -> Result<(), RuntimeError> {
        if rows == 0 {
            return Ok(());
        }
        let c = &self.cfg;
        let launch = |width: u32| LaunchConfig {
            grid: ((rows * width).div_ceil(256), c.batch, 1),
            block: (256, 1, 1),
            dyn_shared_bytes: 0,
        };
        let wide = c.kv_heads * c.dim;
        let args = (src.seq, dst.seq, row_in, row_out, rows);
        for (from, to) in [(src.k, &mut *dst.k), (src.v, &mut *dst.v)] {
            chelsea_copy::launch(
                &self.copy,
                &launch(wide),
                from,
                to,
                args.0,
                args.1,
                args.2,
                args.3,
                args.4,
                wide,
                false,
            )?;
        }
        chelsea_copy::launch(
            &self.copy_sizes,
            &launch(c.kv_heads),
            src.n.unwrap_or(&self.ones),
            dst.n,
            args.0,
            args.1,
            args.2,
            args.3,
            args.4,
            c.kv_heads,
            src.n.is_none(),
        )
    }
}

/// One layer's KV cache merged by Chelsea, over element type `T` (bf16 or f16).
pub struct ChelseaCache<T: Element> {
    cfg: ChelseaConfig,
    plan: Vec<Round>,
    cache: Rows<T>,
    /// Ping-pong buffers of the rounds, and where a chunk's raw tail waits while it moves.
    scratch: [Rows<T>; 2],
    stage: Rows<T>,
    len: u32,
    /// Rows before this one are sinks or compressed chunks; from it to `len`, raw tokens.
    merged_end: u32,
    kernels: Kernels,
    plain: FlashDecode,
    biased: FlashDecode,
    decode_scratch: DecodeScratch,
}

impl<T: Element + Float> ChelseaCache<T> {
    /// An empty cache; compiles the kernels.
    pub fn new(device: &Device, cfg: ChelseaConfig) -> Result<Self, ChelseaError> {
        let bad = |m: String| Err(ChelseaError::Config(m));
        if T::DTYPE != Dtype::Bf16 && T::DTYPE != Dtype::F16 {
            return bad(format!("element type {} (bf16 or f16)", T::DTYPE));
        }
        if cfg.dim != 64 && cfg.dim != 128 {
            return bad(format!("head dimension {} (64 or 128)", cfg.dim));
        }
        if cfg.kv_heads == 0
            || cfg.heads == 0
            || !cfg.heads.is_multiple_of(cfg.kv_heads)
            || cfg.heads / cfg.kv_heads > 16
        {
            return bad(format!(
                "{} query heads over {} KV heads (a multiple, at most 16 per KV head)",
                cfg.heads, cfg.kv_heads
            ));
        }
        if !(64..=MAX_CHUNK).contains(&cfg.chunk) {
            return bad(format!("chunk of {} tokens (64 to {MAX_CHUNK})", cfg.chunk));
        }
        if !(cfg.ratio >= 0.0 && cfg.ratio < 1.0) {
            return bad(format!("reduction ratio {} is not in [0, 1)", cfg.ratio));
        }
        if !(cfg.round_fraction > 0.0 && cfg.round_fraction <= 0.5) {
            return bad(format!(
                "round fraction {} is not in (0, 1/2]",
                cfg.round_fraction
            ));
        }
        if cfg.batch == 0 || cfg.capacity == 0 {
            return bad("batch and capacity must be positive".into());
        }
        let elements =
            cfg.batch as u64 * cfg.capacity as u64 * cfg.kv_heads as u64 * cfg.dim as u64;
        if elements > u32::MAX as u64 {
            return bad(format!(
                "a cache of {elements} elements per K/V buffer (batch × capacity × kv_heads × \
                 dim): the kernels index at most {} (use fewer sequences per cache)",
                u32::MAX
            ));
        }
        if cfg
            .sink
            .checked_add(cfg.chunk)
            .and_then(|x| x.checked_add(cfg.recent))
            .is_none()
        {
            return bad(format!(
                "sink {} + chunk {} + recent {} overflow u32",
                cfg.sink, cfg.chunk, cfg.recent
            ));
        }
        let keep = cfg.keep();
        let dtype = T::DTYPE;
        let kernels = Kernels {
            cfg,
            round: chelsea_round::spec().t(dtype).d(cfg.dim).build(device)?,
            copy: chelsea_copy::spec().t(dtype).build(device)?,
            copy_sizes: chelsea_copy::spec().t(Dtype::F32).build(device)?,
            ones: device.upload(&[1.0f32])?,
        };
        Ok(ChelseaCache {
            cfg,
            plan: rounds(cfg.chunk, keep, cfg.round_fraction),
            cache: Rows::new(device, &cfg, cfg.capacity)?,
            scratch: [Rows::new(device, &cfg, 1)?, Rows::new(device, &cfg, 1)?],
            stage: Rows::new(device, &cfg, 1)?,
            len: 0,
            merged_end: 0,
            kernels,
            plain: FlashDecode::new(device, dtype, cfg.dim, false)?,
            biased: FlashDecode::with_counts(device, dtype, cfg.dim, false)?,
            decode_scratch: DecodeScratch::new(device, 1, cfg.dim as usize)?,
        })
    }

    /// The settings.
    pub fn config(&self) -> &ChelseaConfig {
        &self.cfg
    }

    /// The rounds each chunk goes through.
    pub fn rounds(&self) -> &[Round] {
        &self.plan
    }

    /// Entries in the cache (per sequence and KV head).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries before the raw tail (sinks and compressed chunks).
    pub fn merged_len(&self) -> u32 {
        self.merged_end
    }

    /// Keys `[B, capacity, H_kv, D]` (the first [`ChelseaCache::len`] rows hold entries).
    pub fn keys(&self) -> &DeviceBuffer<T> {
        &self.cache.k
    }

    /// Values `[B, capacity, H_kv, D]`.
    pub fn values(&self) -> &DeviceBuffer<T> {
        &self.cache.v
    }

    /// Sizes `[B, capacity, H_kv]`: how many tokens each entry stands for.
    pub fn counts(&self) -> &DeviceBuffer<f32> {
        &self.cache.n
    }

    /// The decode shape of attention over this cache.
    pub fn shape(&self) -> DecodeShape {
        DecodeShape {
            batch: self.cfg.batch,
            heads: self.cfg.heads,
            kv_heads: self.cfg.kv_heads,
            seq: self.cfg.capacity,
            dim: self.cfg.dim,
        }
    }

    fn device(&self) -> Device {
        self.kernels.round.device.clone()
    }

    /// Replaces the cache by the compression of a prefill `k`, `v` (`[B, len, H_kv, D]`):
    /// sinks and the tail (partial last chunk + recent window) as they are, each full chunk
    /// down to [`ChelseaConfig::keep`] entries by [`ChelseaCache::rounds`].
    pub fn compress(
        &mut self,
        k: &DeviceBuffer<T>,
        v: &DeviceBuffer<T>,
        len: u32,
    ) -> Result<(), ChelseaError> {
        let c = self.cfg;
        let want = c.batch as usize * len as usize * c.kv_heads as usize * c.dim as usize;
        if len == 0 || k.len() != want || v.len() != want {
            return Err(ChelseaError::Config(format!(
                "prefill K/V hold {} / {} elements for {len} tokens; [batch, len, kv_heads, dim] needs {want} (len > 0)",
                k.len(),
                v.len()
            )));
        }
        let lay = Layout::of(len, c.chunk, c.sink, c.recent);
        let keep = c.keep();
        let out_len = lay.compressed_len(keep);
        if out_len > c.capacity {
            return Err(ChelseaError::Config(format!(
                "{len} tokens compress to {out_len} entries, the cache holds {}",
                c.capacity
            )));
        }
        let device = self.device();
        let src = Src {
            k,
            v,
            n: None,
            seq: len,
        };
        let chunks = lay.chunks;
        let Self {
            plan,
            cache,
            scratch,
            kernels,
            ..
        } = self;
        if chunks > 0 && !plan.is_empty() {
            let rows = chunks * plan[0].after();
            for s in scratch.iter_mut() {
                s.ensure(&device, &c, rows)?;
            }
            let last = plan.len() - 1;
            let [x, y] = scratch;
            for (j, r) in plan.iter().enumerate() {
                // round j reads src, x, y, x, ... and writes x, y, x, ...; the last writes the cache
                let (from, to) = if j % 2 == 0 {
                    (&*y, &mut *x)
                } else {
                    (&*x, &mut *y)
                };
                let from = from.src();
                let input = if j == 0 { (&src, lay.sink) } else { (&from, 0) };
                if j == last {
                    kernels.round(input, (&mut cache.dst(), lay.sink), chunks, *r)?;
                } else {
                    kernels.round(input, (&mut to.dst(), 0), chunks, *r)?;
                }
            }
            // the round buffers of a whole prefill are about 0.75x its keys and values each:
            // given back, so that a compressed cache holds little more than its entries
            // (appends grow them again to one chunk's rounds)
            for s in scratch.iter_mut() {
                s.release(&device, &c)?;
            }
        } else {
            kernels.copy(
                (&src, lay.sink),
                (&mut cache.dst(), lay.sink),
                chunks * c.chunk,
            )?;
        }
        let merged_end = lay.sink + chunks * keep;
        kernels.copy((&src, 0), (&mut cache.dst(), 0), lay.sink)?;
        kernels.copy(
            (&src, lay.sink + chunks * c.chunk),
            (&mut cache.dst(), merged_end),
            lay.tail,
        )?;
        self.len = out_len;
        self.merged_end = merged_end;
        Ok(())
    }

    /// Appends one token's key and value (`[B, H_kv, D]`); when the raw tail beyond the
    /// recent window then holds a full chunk, compresses that chunk into the merged region.
    pub fn append(
        &mut self,
        k_new: &DeviceBuffer<T>,
        v_new: &DeviceBuffer<T>,
    ) -> Result<(), ChelseaError> {
        let c = self.cfg;
        if self.len >= c.capacity {
            return Err(ChelseaError::Full(c.capacity));
        }
        let want = (c.batch * c.kv_heads * c.dim) as usize;
        check_kv_len(
            "new",
            (k_new.len(), v_new.len()),
            want,
            "[batch, kv_heads, dim]",
        )
        .map_err(ChelseaError::Config)?;
        let src = Src {
            k: k_new,
            v: v_new,
            n: None,
            seq: 1,
        };
        self.kernels
            .copy((&src, 0), (&mut self.cache.dst(), self.len), 1)?;
        self.len += 1;
        if self.merged_end < c.sink {
            self.merged_end = self.len.min(c.sink);
        }
        if self.len - self.merged_end >= c.chunk + c.recent && !self.plan.is_empty() {
            self.compress_tail_chunk()?;
        }
        Ok(())
    }

    /// Compresses the first `chunk` raw tokens after the merged region and moves the rest
    /// of the raw tail up behind it.
    fn compress_tail_chunk(&mut self) -> Result<(), ChelseaError> {
        let c = self.cfg;
        let device = self.device();
        let first = self.merged_end;
        let rest = self.len - first - c.chunk;
        let keep = c.keep();
        let Self {
            plan,
            cache,
            scratch,
            stage,
            kernels,
            ..
        } = self;
        for s in scratch.iter_mut() {
            s.ensure(&device, &c, c.chunk)?;
        }
        stage.ensure(&device, &c, rest)?;
        let [x, y] = scratch;
        for (j, r) in plan.iter().enumerate() {
            if j == 0 {
                kernels.round((&cache.src(), first), (&mut x.dst(), 0), 1, *r)?;
            } else if j % 2 == 1 {
                kernels.round((&x.src(), 0), (&mut y.dst(), 0), 1, *r)?;
            } else {
                kernels.round((&y.src(), 0), (&mut x.dst(), 0), 1, *r)?;
            }
        }
        let merged = if plan.len() % 2 == 1 { &*x } else { &*y };
        kernels.copy((&cache.src(), first + c.chunk), (&mut stage.dst(), 0), rest)?;
        kernels.copy((&merged.src(), 0), (&mut cache.dst(), first), keep)?;
        kernels.copy((&stage.src(), 0), (&mut cache.dst(), first + keep), rest)?;
        self.merged_end += keep;
        self.len -= c.chunk - keep;
        Ok(())
    }

    /// Searches the split size of attention over the cache at its current length, with
    /// and without the bias (see [`FlashDecode::tune`]), on `q`; overwrites `out` and `lse`.
    /// Later calls in the same bucket (here and in other caches) use the winners.
    pub fn tune_decode(
        &mut self,
        q: &DeviceBuffer<T>,
        out: &mut DeviceBuffer<T>,
        lse: &mut DeviceBuffer<f32>,
        options: &TuneOptions,
    ) -> Result<(), ChelseaError>
    where
        T: Into<f32> + Copy,
    {
        self.tune_decode_rotating(&[], q, out, lse, options)
    }

    /// [`ChelseaCache::tune_decode`] with the timed runs rotating over this cache and
    /// `others` (caches of the same settings and length; see
    /// [`FlashDecode::tune_rotating`]): what a benchmark that rotates its caches measures.
    pub fn tune_decode_rotating(
        &mut self,
        others: &[ChelseaCache<T>],
        q: &DeviceBuffer<T>,
        out: &mut DeviceBuffer<T>,
        lse: &mut DeviceBuffer<f32>,
        options: &TuneOptions,
    ) -> Result<(), ChelseaError>
    where
        T: Into<f32> + Copy,
    {
        if self.len == 0 {
            return Err(ChelseaError::Config("tuning over an empty cache".into()));
        }
        if let Some(o) = others
            .iter()
            .find(|o| o.len != self.len || o.cfg != self.cfg)
        {
            return Err(ChelseaError::Config(format!(
                "tuning over caches of {} and {} entries (or other settings)",
                self.len, o.len
            )));
        }
        let shape = self.shape();
        let scale = 1.0 / (self.cfg.dim as f32).sqrt();
        for bias in [false, true] {
            let inputs: Vec<DecodeInputs<'_, T>> = std::iter::once(&self.cache)
                .chain(others.iter().map(|o| &o.cache))
                .map(|c| DecodeInputs {
                    k: &c.k,
                    v: &c.v,
                    counts: bias.then_some(&c.n),
                })
                .collect();
            let decode = if bias {
                &mut self.biased
            } else {
                &mut self.plain
            };
            decode.tune_rotating(
                &shape,
                q,
                &inputs,
                None,
                self.len,
                scale,
                out,
                lse,
                &mut self.decode_scratch,
                options,
            )?;
        }
        Ok(())
    }

    /// Keys per split of attention over the cache at its current length (with or without
    /// the bias): the tuned size if there is one, see [`FlashDecode::chunk_for`].
    pub fn decode_split(&self, bias: bool) -> u32 {
        let decode = if bias { &self.biased } else { &self.plain };
        decode.chunk_for(&self.shape(), self.len, self.device().multiprocessors())
    }

    /// Attention of `q` (`[B, H, D]`) over the cache's entries: `out` `[B, H, D]`,
    /// natural-log `lse` `[B, H]`. With `bias`, entry `j`'s logit gains `ln n_j`
    /// (proportional attention: a merged entry gets the mass of the tokens it stands for).
    pub fn attend(
        &mut self,
        q: &DeviceBuffer<T>,
        out: &mut DeviceBuffer<T>,
        lse: &mut DeviceBuffer<f32>,
        bias: bool,
    ) -> Result<(), ChelseaError> {
        if self.len == 0 {
            return Err(ChelseaError::Config("attention over an empty cache".into()));
        }
        let shape = self.shape();
        let scale = 1.0 / (self.cfg.dim as f32).sqrt();
        let decode = if bias { &self.biased } else { &self.plain };
        decode.run_with_counts(
            &shape,
            q,
            &self.cache.k,
            &self.cache.v,
            None,
            bias.then_some(&self.cache.n),
            self.len,
            scale,
            out,
            lse,
            &mut self.decode_scratch,
        )?;
        Ok(())
    }
}

impl From<ChelseaError> for RuntimeError {
    fn from(e: ChelseaError) -> RuntimeError {
        match e {
            ChelseaError::Runtime(e) => e,
            ChelseaError::Decode(e) => e.into(),
            other => RuntimeError::InvalidInput {
                what: "chelsea",
                reason: other.to_string(),
            },
        }
    }
}
