//! The host side of CLO: a stack of decoder layers whose KV caches live in mapped host
//! memory, with per layer HATA's codes on the GPU and per KV head a slot of selected rows.
//! [`CloModel::step`] decodes one token through every layer; after the first step it is one
//! replay of a captured graph (the cache length is read from device memory), so the host
//! only enqueues it and never waits.

use kiln::prelude::*;
use kiln::{
    Device, DeviceBuffer, Element, Event, Graph, Kernel, LaunchConfig, MappedBuffer, PinnedBuffer,
    RuntimeError, Stream,
};

use super::kernels::{
    clo_advance, clo_append, clo_gather, clo_hit, clo_plan, EMPTY, GATHER_ROWS, GATHER_WARPS,
    MAX_BUDGET, PLAN_THREADS, THREADS,
};
use crate::attention::decode::{DecodeError, DecodeScratch, DecodeShape, FlashDecode};
use crate::common::check_kv_len;
use crate::hata::encode::{self, group_launch, hash_encode, hash_encode_group, VECTORS_PER_WARP};
use crate::hata::score::{self, hash_score};
use crate::hata::topk::{TopK, TopKError, TopKScratch};

/// The shape and settings of a CLO model (every layer alike).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CloConfig {
    /// Decoder layers.
    pub layers: u32,
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
    /// Tokens the host cache holds.
    pub capacity: u32,
    /// Rows per KV head's slot: the keys a step selects (at most 4096).
    pub budget: u32,
    /// The most recent tokens, always attended, kept in a ring next to the slot.
    pub recent: u32,
    /// The first `sink` tokens are always selected.
    pub sink: u32,
    /// Weight hash scores by key norms.
    pub use_norms: bool,
    /// The similarity `η` of the most important heads' threshold.
    pub eta: f64,
    /// The exponent `p` of `λ_h = s_h^p`.
    pub p: f64,
}

impl CloConfig {
    /// Slot rows per KV head on the GPU: the selected rows and the recent ring.
    pub fn slots(&self) -> u32 {
        self.budget + self.recent
    }
}

/// One layer's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerParams {
    /// HATA hash weights `[kv_heads, dim, rbit]`.
    pub weights: Vec<f32>,
    /// Importance `s_h ∈ [0, 1]` of each query head.
    pub importance: Vec<f32>,
}

/// The hit threshold of a head of importance `s`: `τ = cos(λ·arccos η + (1 − λ)·π)` with
/// `λ = s^p` — `η` for the most important heads, falling to `−1` (always a hit) for heads
/// that do not matter; a larger `p` lowers every threshold below `s = 1`.
pub fn threshold(eta: f64, p: f64, importance: f64) -> f64 {
    let lambda = importance.clamp(0.0, 1.0).powf(p);
    (lambda * eta.clamp(-1.0, 1.0).acos() + (1.0 - lambda) * std::f64::consts::PI).cos()
}

/// How a step moves the missed rows from host memory into the slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// CLO: the gather kernel reads them over PCIe from mapped memory; the step is one graph
    /// replay and the host does not wait.
    ZeroCopy,
    /// Baseline (a): the host learns the rows (a copy back and a wait per layer), gathers
    /// them into a pinned staging buffer and copies that with one memcpy.
    HostGather,
    /// Baseline (b): the host learns the rows and issues one memcpy per row (key and value).
    RowCopies,
}

/// Why a CLO call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CloError {
    /// Settings or buffers that do not fit together.
    #[error("clo: {0}")]
    Config(String),
    /// The host cache is full.
    #[error("clo: the cache holds {0} tokens and is full")]
    Full(u32),
    /// A kernel failed to build or launch.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The attention failed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The selection failed.
    #[error(transparent)]
    TopK(#[from] TopKError),
}

impl From<CloError> for RuntimeError {
    fn from(e: CloError) -> RuntimeError {
        match e {
            CloError::Runtime(e) => e,
            CloError::Decode(e) => e.into(),
            CloError::TopK(e) => e.into(),
            other => RuntimeError::InvalidInput {
                what: "clo",
                reason: other.to_string(),
            },
        }
    }
}

/// The compiled kernels, shared by every layer.
struct Kernels {
    hit: Kernel,
    plan: Kernel,
    gather: Kernel,
    gather_staged: Kernel,
    append: Kernel,
    advance: Kernel,
    encode_many: Kernel,
    encode_queries: Kernel,
    encode_key: Kernel,
    score: Kernel,
    topk: TopK,
    attend: FlashDecode,
}

/// One layer's memory.
struct Layer<T: Element> {
    k_host: MappedBuffer<T>,
    v_host: MappedBuffer<T>,
    w: DeviceBuffer<f32>,
    codes: DeviceBuffer<u32>,
    norms: DeviceBuffer<f32>,
    tau: DeviceBuffer<f32>,
    importance: Vec<f32>,
    labels: DeviceBuffer<f32>,
    miss: DeviceBuffer<u32>,
    misses: DeviceBuffer<u32>,
    ids: DeviceBuffer<u32>,
    slot_ids: DeviceBuffer<u32>,
    fetch_tok: DeviceBuffer<u32>,
    fetch_pos: DeviceBuffer<u32>,
    fetch_count: DeviceBuffer<u32>,
    k_slot: DeviceBuffer<T>,
    v_slot: DeviceBuffer<T>,
    new_codes: DeviceBuffer<u32>,
    new_norms: DeviceBuffer<f32>,
    q: DeviceBuffer<T>,
    k_new: DeviceBuffer<T>,
    v_new: DeviceBuffer<T>,
    out: DeviceBuffer<T>,
    lse: DeviceBuffer<f32>,
}

/// Scratch every layer uses in turn (the selection on the side stream, the attention on
/// the main stream), and the cache length.
struct Scratch {
    len: DeviceBuffer<u32>,
    scores: DeviceBuffer<f32>,
    q_codes: DeviceBuffer<u32>,
    no_norms: DeviceBuffer<f32>,
    /// The key centre HATA's encoders take (`[batch, kv_heads, dim]`, unused: CLO hashes
    /// keys uncentred).
    no_centre: DeviceBuffer<f32>,
    topk: TopKScratch,
    decode: DecodeScratch,
}

/// The baselines' host-side buffers: the fetch lists copied back, and the staging rows.
struct Staging<T: Element> {
    count: PinnedBuffer<u32>,
    tok: PinnedBuffer<u32>,
    pos: PinnedBuffer<u32>,
    rows: PinnedBuffer<T>,
    row_ids: PinnedBuffer<u32>,
    rows_dev: DeviceBuffer<T>,
    row_ids_dev: DeviceBuffer<u32>,
}

/// The per-layer inputs of a step, written by the caller before [`CloModel::step`].
pub struct StepInputs<'a, T: Element> {
    /// Query heads `[batch, heads, dim]`.
    pub q: &'a mut DeviceBuffer<T>,
    /// The new token's keys `[batch, kv_heads, dim]`.
    pub k_new: &'a mut DeviceBuffer<T>,
    /// The new token's values `[batch, kv_heads, dim]`.
    pub v_new: &'a mut DeviceBuffer<T>,
}

/// One layer's slots on the GPU.
pub struct SlotView<'a, T: Element> {
    /// The token of each of a KV head's `budget` slots (`[batch, kv_heads, budget]`,
    /// [`EMPTY`] for none).
    pub ids: &'a DeviceBuffer<u32>,
    /// The slots' keys `[batch, budget + recent, kv_heads, dim]` (the ring last).
    pub k: &'a DeviceBuffer<T>,
    /// The slots' values, as the keys.
    pub v: &'a DeviceBuffer<T>,
}

/// A stack of CLO layers over element type `T` (bf16 or f16).
pub struct CloModel<T: Element> {
    cfg: CloConfig,
    device: Device,
    side: Stream,
    kernels: Kernels,
    layers: Vec<Layer<T>>,
    scratch: Scratch,
    staging: Staging<T>,
    len: u32,
    steps: u32,
    graph: Option<Graph>,
}

fn launch(grid: (u32, u32, u32), threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid,
        block: (threads, 1, 1),
        dyn_shared_bytes: 0,
    }
}

fn check_config(cfg: &CloConfig, params: &[LayerParams]) -> Result<(), String> {
    let c = cfg;
    if c.dim != 64 && c.dim != 128 {
        return Err(format!("head dimension {} (64 or 128)", c.dim));
    }
    if c.rbit != 128 && c.rbit != 256 {
        return Err(format!("{} code bits (128 or 256)", c.rbit));
    }
    if c.kv_heads == 0 || !c.heads.is_multiple_of(c.kv_heads) || c.heads / c.kv_heads > 16 {
        return Err(format!(
            "{} query heads over {} KV heads (a multiple, at most 16 per KV head)",
            c.heads, c.kv_heads
        ));
    }
    if c.layers == 0 || c.batch == 0 {
        return Err("layers and batch must be positive".into());
    }
    if c.budget == 0 || c.budget > MAX_BUDGET || c.recent == 0 {
        return Err(format!(
            "budget {} (1 ..= {MAX_BUDGET}) and recent {} (at least 1)",
            c.budget, c.recent
        ));
    }
    let elements = c.batch as u64 * c.capacity as u64 * c.kv_heads as u64 * c.dim as u64;
    if c.capacity < c.sink + c.budget + c.recent || elements >= u32::MAX as u64 {
        return Err(format!(
            "capacity {} (at least sink + budget + recent = {}, and under 2^32 elements per cache)",
            c.capacity,
            c.sink + c.budget + c.recent
        ));
    }
    if !(-1.0..=1.0).contains(&c.eta) || c.p < 0.0 {
        return Err(format!("η = {} (in [-1, 1]) and p = {} (≥ 0)", c.eta, c.p));
    }
    if params.len() != c.layers as usize {
        return Err(format!(
            "{} layer parameters for {} layers",
            params.len(),
            c.layers
        ));
    }
    let want = (c.kv_heads * c.dim * c.rbit) as usize;
    for (l, p) in params.iter().enumerate() {
        if p.weights.len() != want || p.importance.len() != c.heads as usize {
            return Err(format!(
                "layer {l}: {} hash weights ([kv_heads, dim, rbit] needs {want}) and {} importances (one per query head, {})",
                p.weights.len(),
                p.importance.len(),
                c.heads
            ));
        }
    }
    Ok(())
}

impl Kernels {
    fn new(device: &Device, c: &CloConfig, dtype: Dtype) -> Result<Kernels, CloError> {
        let g = c.heads / c.kv_heads;
        Ok(Kernels {
            hit: clo_hit::spec().t(dtype).d(c.dim).g(g).build(device)?,
            plan: clo_plan::spec().build(device)?,
            gather: clo_gather::spec()
                .t(dtype)
                .d(c.dim)
                .r(GATHER_ROWS)
                .staged(false)
                .build(device)?,
            gather_staged: clo_gather::spec()
                .t(dtype)
                .d(c.dim)
                .r(GATHER_ROWS)
                .staged(true)
                .build(device)?,
            append: clo_append::spec()
                .t(dtype)
                .d(c.dim)
                .words(c.rbit / 32)
                .build(device)?,
            advance: clo_advance::spec().build(device)?,
            encode_many: hash_encode::spec()
                .t(dtype)
                .d(c.dim)
                .rbit(c.rbit)
                .v(VECTORS_PER_WARP)
                .build(device)?,
            encode_queries: hash_encode_group::spec()
                .t(dtype)
                .d(c.dim)
                .rbit(c.rbit)
                .g(g)
                .build(device)?,
            encode_key: hash_encode_group::spec()
                .t(dtype)
                .d(c.dim)
                .rbit(c.rbit)
                .g(1)
                .build(device)?,
            score: hash_score::spec().rbit(c.rbit).g(g).build(device)?,
            topk: TopK::new(device)?,
            attend: FlashDecode::new(device, dtype, c.dim, false)?,
        })
    }
}

impl<T: Element + Float> Layer<T> {
    fn new(device: &Device, c: &CloConfig, p: &LayerParams) -> Result<Layer<T>, CloError> {
        let (b, h, hk, d) = (
            c.batch as usize,
            c.heads as usize,
            c.kv_heads as usize,
            c.dim as usize,
        );
        let (cap, words, rows) = (c.capacity as usize, (c.rbit / 32) as usize, b * hk);
        let per_row = rows * c.budget as usize;
        let slot_len = b * c.slots() as usize * hk * d;
        let tau: Vec<f32> = p
            .importance
            .iter()
            .map(|&s| threshold(c.eta, c.p, s as f64) as f32)
            .collect();
        Ok(Layer {
            k_host: device.mapped(b * cap * hk * d)?,
            v_host: device.mapped(b * cap * hk * d)?,
            w: device.upload(&p.weights)?,
            codes: device.zeros(b * cap * hk * words)?,
            norms: device.zeros(b * cap * hk)?,
            tau: device.upload(&tau)?,
            importance: p.importance.clone(),
            labels: device.zeros(b * h * d)?,
            miss: device.zeros(rows)?,
            misses: device.zeros(rows)?,
            ids: device.zeros(per_row)?,
            slot_ids: device.upload(&vec![EMPTY; per_row])?,
            fetch_tok: device.zeros(per_row)?,
            fetch_pos: device.zeros(per_row)?,
            fetch_count: device.zeros(rows)?,
            k_slot: device.zeros(slot_len)?,
            v_slot: device.zeros(slot_len)?,
            new_codes: device.zeros(rows * words)?,
            new_norms: device.zeros(rows)?,
            q: device.zeros(b * h * d)?,
            k_new: device.zeros(rows * d)?,
            v_new: device.zeros(rows * d)?,
            out: device.zeros(b * h * d)?,
            lse: device.zeros(b * h)?,
        })
    }
}

impl<T: Element + Float> CloModel<T> {
    /// A model with empty caches: `params` holds each layer's hash weights and head
    /// importances. Compiles the kernels and allocates every buffer a step uses.
    pub fn new(device: &Device, cfg: CloConfig, params: &[LayerParams]) -> Result<Self, CloError> {
        check_config(&cfg, params).map_err(CloError::Config)?;
        let c = cfg;
        let rows = c.batch * c.kv_heads;
        let layers = params
            .iter()
            .map(|p| Layer::new(device, &c, p))
            .collect::<Result<Vec<_>, _>>()?;
        let per_row = (rows * c.budget) as usize;
        let d = c.dim as usize;
        Ok(CloModel {
            kernels: Kernels::new(device, &c, T::DTYPE)?,
            layers,
            scratch: Scratch {
                len: device.zeros(1)?,
                scores: device.zeros((rows * c.capacity) as usize)?,
                q_codes: device.zeros((c.batch * c.heads * c.rbit / 32) as usize)?,
                no_norms: device.zeros(1)?,
                no_centre: device.zeros((rows * c.dim) as usize)?,
                topk: TopKScratch::new(device, rows, c.capacity)?,
                decode: DecodeScratch::new(device, 1, d)?,
            },
            staging: Staging {
                count: device.pinned(rows as usize)?,
                tok: device.pinned(per_row)?,
                pos: device.pinned(per_row)?,
                rows: device.pinned(2 * per_row * d)?,
                row_ids: device.pinned(per_row)?,
                rows_dev: device.zeros(2 * per_row * d)?,
                row_ids_dev: device.zeros(per_row)?,
            },
            side: device.new_stream()?,
            device: device.clone(),
            cfg,
            len: 0,
            steps: 0,
            graph: None,
        })
    }

    /// The settings.
    pub fn config(&self) -> &CloConfig {
        &self.cfg
    }

    /// Tokens cached.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Steps decoded since the last prefill.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    fn layer(&self, l: usize) -> Result<&Layer<T>, CloError> {
        self.layers
            .get(l)
            .ok_or_else(|| CloError::Config(format!("layer {l} of {}", self.layers.len())))
    }

    /// Layer `l`'s host cache (keys, values; `[batch, capacity, kv_heads, dim]`), to fill
    /// before [`CloModel::prefill_in_place`]. Waits for the kernels that used it.
    pub fn host_kv_mut(&mut self, l: usize) -> Result<(&mut [T], &mut [T]), CloError> {
        self.layer(l)?;
        let layer = &mut self.layers[l];
        Ok((&mut layer.k_host[..], &mut layer.v_host[..]))
    }

    /// Layer `l`'s host cache, read-only.
    pub fn host_kv(&self, l: usize) -> Result<(&[T], &[T]), CloError> {
        let layer = self.layer(l)?;
        Ok((&layer.k_host[..], &layer.v_host[..]))
    }

    /// Fills every layer's host cache with a prefill (`kv[l]` = keys and values
    /// `[batch, len, kv_heads, dim]`) and prepares the GPU side ([`CloModel::prefill_in_place`]).
    pub fn prefill(&mut self, kv: &[(&[T], &[T])], len: u32) -> Result<(), CloError> {
        let c = self.cfg;
        if kv.len() != c.layers as usize {
            return Err(CloError::Config(format!(
                "prefill K/V for {} layers, the model has {}",
                kv.len(),
                c.layers
            )));
        }
        self.check_prefill(len)?;
        let row = (c.kv_heads * c.dim) as usize;
        let want = c.batch as usize * len as usize * row;
        for (l, (k, v)) in kv.iter().enumerate() {
            check_kv_len(
                "prefill",
                (k.len(), v.len()),
                want,
                "[batch, len, kv_heads, dim]",
            )
            .map_err(CloError::Config)?;
            let (kh, vh) = self.host_kv_mut(l)?;
            for b in 0..c.batch as usize {
                let (src, dst) = (b * len as usize * row, b * c.capacity as usize * row);
                let n = len as usize * row;
                kh[dst..dst + n].copy_from_slice(&k[src..src + n]);
                vh[dst..dst + n].copy_from_slice(&v[src..src + n]);
            }
        }
        self.prefill_in_place(len)
    }

    fn check_prefill(&self, len: u32) -> Result<(), CloError> {
        let c = self.cfg;
        if len < c.sink + c.budget + c.recent || len >= c.capacity {
            return Err(CloError::Config(format!(
                "a prefill of {len} tokens (at least sink + budget + recent = {}, below the capacity {})",
                c.sink + c.budget + c.recent,
                c.capacity
            )));
        }
        Ok(())
    }

    /// Takes the first `len` tokens of every layer's host cache as the prefill: hashes the
    /// keys on the GPU (codes and norms), then [`CloModel::rewind`]s to `len`. Call after
    /// writing the caches through [`CloModel::host_kv_mut`].
    pub fn prefill_in_place(&mut self, len: u32) -> Result<(), CloError> {
        self.check_prefill(len)?;
        let c = self.cfg;
        for layer in &mut self.layers {
            let keys = self.device.upload(&layer.k_host[..])?;
            let n = c.batch * c.capacity * c.kv_heads;
            hash_encode::launch(
                &self.kernels.encode_many,
                &encode::launch_config(n, c.kv_heads),
                &keys,
                &layer.w,
                &self.scratch.no_centre,
                false,
                &mut layer.codes,
                &mut layer.norms,
                n,
                c.kv_heads,
                1,
                c.capacity * c.kv_heads,
                c.capacity * c.kv_heads,
                0,
                c.capacity * c.kv_heads,
                0,
                true,
            )?;
        }
        self.len = 0;
        self.rewind(len)
    }

    /// Goes back to `len` cached tokens (at most the current length): the ring takes the
    /// `recent` tokens before `len` again, the slots and labels empty, the miss counts and
    /// the step count start over. Tokens past `len` are overwritten as decoding appends.
    /// (A benchmark decodes the same stretch again with other settings this way.)
    pub fn rewind(&mut self, len: u32) -> Result<(), CloError> {
        self.check_prefill(len)?;
        if self.len != 0 && len > self.len {
            return Err(CloError::Config(format!(
                "rewind to {len} tokens, but only {} are cached",
                self.len
            )));
        }
        let c = self.cfg;
        let stream = self.device.default_stream();
        let (cap, hk, d) = (c.capacity as usize, c.kv_heads as usize, c.dim as usize);
        let rows = (c.batch * c.kv_heads) as usize;
        let ring: Vec<(usize, usize)> = (0..c.batch as usize)
            .flat_map(|b| {
                (len - c.recent..len).map(move |pos| {
                    let slot = (c.budget + pos % c.recent) as usize;
                    (
                        (b * cap + pos as usize) * hk * d,
                        (b * c.slots() as usize + slot) * hk * d,
                    )
                })
            })
            .collect();
        for layer in &mut self.layers {
            stream.copy_htod_rows(&layer.k_host, &mut layer.k_slot, &ring, hk * d)?;
            stream.copy_htod_rows(&layer.v_host, &mut layer.v_slot, &ring, hk * d)?;
            self.device
                .write(&mut layer.slot_ids, &vec![EMPTY; rows * c.budget as usize])?;
            self.device.write(
                &mut layer.labels,
                &vec![0.0; (c.batch * c.heads) as usize * d],
            )?;
            self.device.write(&mut layer.misses, &vec![0; rows])?;
        }
        self.device.write(&mut self.scratch.len, &[len])?;
        self.len = len;
        self.steps = 0;
        Ok(())
    }

    /// Changes `η` and `p` (every layer's thresholds, from the importances it was built
    /// with); a captured step graph stays valid (it reads the thresholds from device memory).
    pub fn set_thresholds(&mut self, eta: f64, p: f64) -> Result<(), CloError> {
        if !(-1.0..=1.0).contains(&eta) || p < 0.0 {
            return Err(CloError::Config(format!(
                "η = {eta} (in [-1, 1]) and p = {p} (≥ 0)"
            )));
        }
        self.cfg.eta = eta;
        self.cfg.p = p;
        for layer in &mut self.layers {
            let tau: Vec<f32> = layer
                .importance
                .iter()
                .map(|&s| threshold(eta, p, s as f64) as f32)
                .collect();
            self.device.write(&mut layer.tau, &tau)?;
        }
        Ok(())
    }

    /// Layer `l`'s step inputs, to write before each [`CloModel::step`] (the graph reads
    /// these buffers).
    pub fn inputs_mut(&mut self, l: usize) -> Result<StepInputs<'_, T>, CloError> {
        self.layer(l)?;
        let layer = &mut self.layers[l];
        Ok(StepInputs {
            q: &mut layer.q,
            k_new: &mut layer.k_new,
            v_new: &mut layer.v_new,
        })
    }

    /// Layer `l`'s output of the last step: `[batch, heads, dim]` and the natural-log LSE
    /// `[batch, heads]`.
    pub fn output(&self, l: usize) -> Result<(&DeviceBuffer<T>, &DeviceBuffer<f32>), CloError> {
        let layer = self.layer(l)?;
        Ok((&layer.out, &layer.lse))
    }

    /// Layer `l`'s slot contents (see [`SlotView`]).
    pub fn slots(&self, l: usize) -> Result<SlotView<'_, T>, CloError> {
        let layer = self.layer(l)?;
        Ok(SlotView {
            ids: &layer.slot_ids,
            k: &layer.k_slot,
            v: &layer.v_slot,
        })
    }

    /// Layer `l`'s last selection (`[batch, kv_heads, budget]`, ascending per row; fresh
    /// only for the rows that missed) and its miss flags (`[batch, kv_heads]`, 0 or 1).
    pub fn selection(
        &self,
        l: usize,
    ) -> Result<(&DeviceBuffer<u32>, &DeviceBuffer<u32>), CloError> {
        let layer = self.layer(l)?;
        Ok((&layer.ids, &layer.miss))
    }

    /// Misses since the prefill, per layer and (batch, KV head) (copies back and waits).
    pub fn misses(&self) -> Result<Vec<Vec<u32>>, CloError> {
        self.layers
            .iter()
            .map(|l| Ok(self.device.download(&l.misses)?))
            .collect()
    }

    /// The fraction of (layer, batch, KV head, step) lookups that hit (copies back and waits).
    pub fn hit_rate(&self) -> Result<f64, CloError> {
        let misses: u64 = self.misses()?.iter().flatten().map(|&m| m as u64).sum();
        let lookups =
            self.steps as u64 * (self.cfg.layers * self.cfg.batch * self.cfg.kv_heads) as u64;
        Ok(if lookups == 0 {
            1.0
        } else {
            1.0 - misses as f64 / lookups as f64
        })
    }

    /// Decodes one token through every layer with the inputs written through
    /// [`CloModel::inputs_mut`]. With [`Transfer::ZeroCopy`] the first step after
    /// construction runs its launches one by one (sizing every scratch buffer) and captures
    /// them as a graph; every later step is one replay, and the host returns at once. The
    /// baselines run eagerly and wait for the device once per layer.
    pub fn step(&mut self, transfer: Transfer) -> Result<(), CloError> {
        if self.len >= self.cfg.capacity {
            return Err(CloError::Full(self.cfg.capacity));
        }
        if self.len == 0 {
            return Err(CloError::Config("step before prefill".into()));
        }
        let main = self.device.default_stream();
        match transfer {
            Transfer::ZeroCopy => {
                if let Some(graph) = self.graph.as_mut() {
                    graph.launch(&main)?;
                } else {
                    self.enqueue_zero_copy(&main)?;
                    let graph =
                        main.capture(|s| self.enqueue_zero_copy(s).map_err(RuntimeError::from))?;
                    self.graph = Some(graph);
                }
            }
            Transfer::HostGather | Transfer::RowCopies => self.baseline_step(&main, transfer)?,
        }
        self.len += 1;
        self.steps += 1;
        Ok(())
    }

    /// Every launch of a zero-copy step: layer `l`'s selection and gather on the side stream
    /// (after layer `l − 2`'s attention, so the side stream prefetches one layer ahead), its
    /// attention on `main` after them; the side stream joins back before the length moves.
    fn enqueue_zero_copy(&mut self, main: &Stream) -> Result<(), CloError> {
        let side = self.side.clone();
        side.wait(&main.record()?)?;
        let mut attended: Vec<Event> = Vec::with_capacity(self.layers.len());
        for l in 0..self.layers.len() {
            if l >= 2 {
                side.wait(&attended[l - 2])?;
            }
            self.select(l, &side)?;
            self.gather(l, &side)?;
            main.wait(&side.record()?)?;
            self.attend(l)?;
            attended.push(main.record()?);
        }
        main.wait(&side.record()?)?;
        self.advance(main)
    }

    /// Ends a step on `s`: the cache length in device memory moves on by one.
    fn advance(&mut self, s: &Stream) -> Result<(), CloError> {
        clo_advance::launch_on(
            &self.kernels.advance,
            s,
            &launch((1, 1, 1), 32),
            &mut self.scratch.len,
        )?;
        Ok(())
    }

    /// Layer `l`'s append, hit test, selection and slot plan, on `s`.
    fn select(&mut self, l: usize, s: &Stream) -> Result<(), CloError> {
        let c = self.cfg;
        let (k, sc, layer) = (&self.kernels, &mut self.scratch, &mut self.layers[l]);
        let rows = c.batch * c.kv_heads;
        hash_encode_group::launch_on(
            &k.encode_key,
            s,
            &group_launch(c.kv_heads, c.batch, c.rbit),
            &layer.k_new,
            &layer.w,
            &sc.no_centre,
            false,
            &mut layer.new_codes,
            &mut layer.new_norms,
            c.kv_heads,
            c.kv_heads,
            c.kv_heads,
            0,
            true,
        )?;
        clo_append::launch_on(
            &k.append,
            s,
            &launch((c.batch, 1, 1), THREADS),
            &sc.len,
            &layer.k_new,
            &layer.v_new,
            &layer.new_codes,
            &layer.new_norms,
            &mut layer.k_host,
            &mut layer.v_host,
            &mut layer.k_slot,
            &mut layer.v_slot,
            &mut layer.codes,
            &mut layer.norms,
            c.capacity,
            c.slots(),
            c.budget,
            c.recent,
            c.kv_heads,
        )?;
        clo_hit::launch_on(
            &k.hit,
            s,
            &launch((c.kv_heads, c.batch, 1), 32 * (c.heads / c.kv_heads)),
            &layer.q,
            &mut layer.labels,
            &layer.tau,
            &mut layer.miss,
            &mut layer.misses,
            c.kv_heads,
        )?;
        hash_encode_group::launch_on(
            &k.encode_queries,
            s,
            &group_launch(c.kv_heads, c.batch, c.rbit),
            &layer.q,
            &layer.w,
            &sc.no_centre,
            false,
            &mut sc.q_codes,
            &mut sc.no_norms,
            c.kv_heads,
            c.heads,
            c.heads,
            0,
            false,
        )?;
        // the recent ring `[len + 1 − recent, len + 1)` (already in the slots) and the empty
        // `[len + 1, cap)` are taken out; the length moves on at the end of the step
        hash_score::launch_on(
            &k.score,
            s,
            &score::launch_config(c.capacity, c.kv_heads, c.batch),
            &sc.q_codes,
            &layer.codes,
            &layer.norms,
            &mut sc.scores,
            &sc.len,
            1,
            c.capacity,
            c.capacity,
            c.kv_heads,
            c.sink,
            c.recent,
            f32::NEG_INFINITY,
            c.use_norms,
        )?;
        k.topk.run_on(
            s,
            &sc.scores,
            rows,
            c.capacity,
            c.budget,
            &mut layer.ids,
            &mut sc.topk,
        )?;
        clo_plan::launch_on(
            &k.plan,
            s,
            &launch((c.kv_heads, c.batch, 1), PLAN_THREADS),
            &layer.miss,
            &layer.ids,
            &mut layer.slot_ids,
            &mut layer.fetch_tok,
            &mut layer.fetch_pos,
            &mut layer.fetch_count,
            c.budget,
            c.kv_heads,
        )?;
        Ok(())
    }

    fn gather_launch(&self) -> LaunchConfig {
        let c = self.cfg;
        launch(
            (
                c.budget.div_ceil(GATHER_WARPS * GATHER_ROWS),
                c.kv_heads,
                c.batch,
            ),
            GATHER_WARPS * 32,
        )
    }

    /// Layer `l`'s zero-copy gather of its fetch list, on `s`.
    fn gather(&mut self, l: usize, s: &Stream) -> Result<(), CloError> {
        let c = self.cfg;
        let cfg = self.gather_launch();
        let layer = &mut self.layers[l];
        clo_gather::launch_on(
            &self.kernels.gather,
            s,
            &cfg,
            &layer.k_host,
            &layer.v_host,
            &layer.fetch_tok,
            &layer.fetch_pos,
            &layer.fetch_count,
            &mut layer.k_slot,
            &mut layer.v_slot,
            c.capacity,
            c.slots(),
            c.budget,
            c.kv_heads,
            0,
        )?;
        Ok(())
    }

    /// Layer `l`'s attention over its slots and ring, on the device's stream.
    fn attend(&mut self, l: usize) -> Result<(), CloError> {
        let c = self.cfg;
        let shape = DecodeShape {
            batch: c.batch,
            heads: c.heads,
            kv_heads: c.kv_heads,
            seq: c.slots(),
            dim: c.dim,
        };
        let layer = &mut self.layers[l];
        self.kernels.attend.run(
            &shape,
            &layer.q,
            &layer.k_slot,
            &layer.v_slot,
            None,
            c.slots(),
            1.0 / (c.dim as f32).sqrt(),
            &mut layer.out,
            &mut layer.lse,
            &mut self.scratch.decode,
        )?;
        Ok(())
    }

    /// A baseline step: the same selection and plan, the rows moved by the host.
    fn baseline_step(&mut self, main: &Stream, transfer: Transfer) -> Result<(), CloError> {
        for l in 0..self.layers.len() {
            self.select(l, main)?;
            let st = &mut self.staging;
            let layer = &self.layers[l];
            let rows = layer.fetch_count.len();
            let per_row = layer.fetch_tok.len();
            main.copy_dtoh_async(&layer.fetch_count, 0, &mut st.count, 0, rows)?;
            main.copy_dtoh_async(&layer.fetch_tok, 0, &mut st.tok, 0, per_row)?;
            main.copy_dtoh_async(&layer.fetch_pos, 0, &mut st.pos, 0, per_row)?;
            main.synchronize()?;
            match transfer {
                Transfer::HostGather => self.host_gather(l, main)?,
                _ => self.row_copies(l, main)?,
            }
            self.attend(l)?;
        }
        self.advance(main)
    }

    /// Baseline (a) for layer `l`: the host copies the fetched rows into pinned staging (keys,
    /// then values), one memcpy moves them (and their staging indices), and the staged
    /// gather puts them in their slots.
    fn host_gather(&mut self, l: usize, main: &Stream) -> Result<(), CloError> {
        let c = self.cfg;
        let (cap, hk, d, budget) = (
            c.capacity as usize,
            c.kv_heads as usize,
            c.dim as usize,
            c.budget as usize,
        );
        let cfg = self.gather_launch();
        let (st, layer) = (&mut self.staging, &mut self.layers[l]);
        let (count, tok) = (&st.count[..], &st.tok[..]);
        let (k_host, v_host) = (&layer.k_host[..], &layer.v_host[..]);
        let total: usize = count.iter().map(|&n| n as usize).sum();
        {
            let (rows, ids) = (&mut st.rows[..], &mut st.row_ids[..]);
            let mut n = 0usize;
            for (r, &cnt) in count.iter().enumerate() {
                let (b, h) = (r / hk, r % hk);
                for e in 0..cnt as usize {
                    let src = ((b * cap + tok[r * budget + e] as usize) * hk + h) * d;
                    rows[n * d..(n + 1) * d].copy_from_slice(&k_host[src..src + d]);
                    rows[(total + n) * d..(total + n + 1) * d]
                        .copy_from_slice(&v_host[src..src + d]);
                    ids[r * budget + e] = n as u32;
                    n += 1;
                }
            }
        }
        if total == 0 {
            return Ok(());
        }
        let per_row = st.row_ids_dev.len();
        main.copy_htod_async(&st.row_ids, 0, &mut st.row_ids_dev, 0, per_row)?;
        main.copy_htod_async(&st.rows, 0, &mut st.rows_dev, 0, 2 * total * d)?;
        clo_gather::launch_on(
            &self.kernels.gather_staged,
            main,
            &cfg,
            &st.rows_dev,
            &st.rows_dev,
            &st.row_ids_dev,
            &layer.fetch_pos,
            &layer.fetch_count,
            &mut layer.k_slot,
            &mut layer.v_slot,
            c.capacity,
            c.slots(),
            c.budget,
            c.kv_heads,
            (total * d) as u32,
        )?;
        Ok(())
    }

    /// Baseline (b) for layer `l`: one memcpy per fetched key row and per value row.
    fn row_copies(&mut self, l: usize, main: &Stream) -> Result<(), CloError> {
        let c = self.cfg;
        let (cap, hk, d, budget, slots) = (
            c.capacity as usize,
            c.kv_heads as usize,
            c.dim as usize,
            c.budget as usize,
            c.slots() as usize,
        );
        let st = &self.staging;
        let mut pairs = Vec::new();
        for (r, &cnt) in st.count.iter().enumerate() {
            let (b, h) = (r / hk, r % hk);
            for e in 0..cnt as usize {
                let tok = st.tok[r * budget + e] as usize;
                let pos = st.pos[r * budget + e] as usize;
                pairs.push((
                    ((b * cap + tok) * hk + h) * d,
                    ((b * slots + pos) * hk + h) * d,
                ));
            }
        }
        let layer = &mut self.layers[l];
        main.copy_htod_rows(&layer.k_host, &mut layer.k_slot, &pairs, d)?;
        main.copy_htod_rows(&layer.v_host, &mut layer.v_slot, &pairs, d)?;
        Ok(())
    }
}
