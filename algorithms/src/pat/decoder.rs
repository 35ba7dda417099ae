//! PAT's decoder: a LLaMA-3.1-style stack made of Kiln kernels, tensor-parallel over the ranks
//! of a [`CommGroup`] (one process drives every rank, see [`kiln::comm`]), with a
//! per-sequence contiguous KV cache and continuous batching.
//!
//! Per layer and rank (TP ranks; rank `r` owns query heads `r·H/TP ..`, KV heads
//! `r·H_kv/TP ..` and FFN columns `r·F/TP ..`):
//!
//! 1. [`add_rms_norm`] (the residual add of the previous block fused with the pre-norm);
//! 2. the **column-sharded** QKV projection ([`Gemm`], f32 out), [`qkv_split`] into q, k, v
//!    (rounded to `T`), [`rope`] on q and k;
//! 3. [`kv_append`] of the new keys and values into each sequence's slot of the cache
//!    `[slots, cap, H_kv/TP, D]`, then attention: [`Prefill`] (causal flash attention, after
//!    [`transpose_heads`]) for a prompt, or flash-decoding ([`FlashDecode`] with entry sizes:
//!    every sequence has its own length, positions past it have size 0 and are masked) for a
//!    step of the whole batch;
//! 4. the **row-sharded** O projection and, after [`add_rms_norm`], the column-sharded
//!    gate/up projection, [`swiglu`] and the row-sharded down projection, each followed by the
//!    all-reduce of its partial sums;
//! 5. after the last layer, the final norm, the LM head (vocabulary-sharded, gathered) and
//!    [`argmax_rows`] for the greedy next token.
//!
//! # Exact tensor parallelism
//!
//! Column-sharded results are the same numbers at every TP (each output element is one GEMM
//! dot product over the same K, in the same order; attention heads are independent, and the
//! flash-decoding split size is fixed from the global shape). A row-sharded projection is a
//! sum over K, which an all-reduce splits differently at each TP (TP = 1 sums all of K in one
//! GEMM's accumulator; TP = 2 adds two halves; NCCL's ring picks its own order). With
//! [`Reduction::FixedTree`] (the default) the sum is cut into a fixed number of K pieces
//! ([`DecoderConfig::pieces`], 4 by default: the largest TP), one GEMM each, added by
//! [`tree_sum`] in the fixed order `(p0 + p1) + (p2 + p3)` — a rank first over its own pieces,
//! then over every rank's, gathered by an all-gather. So TP = 1, 2 and 4 add the same numbers
//! in the same order and the decoders' logits and greedy tokens are **bit for bit equal**
//! (checked in [`super::checks`]). The price: `pieces / TP` GEMMs per row-sharded projection
//! on a rank instead of one, and an all-gather of `TP ×` the partial sums where an all-reduce
//! moves `2(TP − 1)/TP ×` (small at decode: `B × hidden` f32). [`Reduction::AllReduce`] is the
//! plain scheme (one GEMM per rank, [`CommGroup::all_reduce_sum`]); its logits differ from
//! TP = 1 by rounding, which the checks measure.
//!
//! # Continuous batching
//!
//! [`TpDecoder::add`] prefills a sequence into the next free slot and returns its first token;
//! [`TpDecoder::step`] decodes one token for every active sequence, each at its own position,
//! and retires those that reached their length or [`DecoderOptions::eos`]: the last active slot's cache moves into the
//! freed slot ([`kv_move`]), so the active sequences are always slots `0 .. B` and the decode
//! reads only those. Data-parallel replicas are independent [`TpDecoder`]s on disjoint groups.

use std::sync::Arc;

use super::kernels::{
    add_rms_norm, argmax_rows, clear_counts, embed, gather_rows, kv_append, kv_move, qkv_split,
    rope, swiglu, take_cols, transpose_heads, tree_sum, ARGMAX_THREADS, MOVE_THREADS, NORM_THREADS,
};
use crate::attention::decode::{default_chunk, DecodeScratch, DecodeShape, FlashDecode};
use crate::attention::hopper::WgmmaPrefill;
use crate::attention::prefill::{Prefill, PrefillCall, DEFAULT_BK};
use crate::gemm::Gemm;
use crate::verify::{Real, Rng};
use kiln::comm::CommGroup;
use kiln::tune::Store;
use kiln::{Device, DeviceBuffer, Kernel, LaunchConfig, RuntimeError};

/// The shape of the decoder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecoderConfig {
    /// Decoder layers.
    pub layers: usize,
    /// Model width (a multiple of 16, at most 8192).
    pub hidden: u32,
    /// Query heads.
    pub heads: u32,
    /// KV heads (a divisor of `heads`, at most 16 query heads each).
    pub kv_heads: u32,
    /// Head dimension: 64 or 128.
    pub head_dim: u32,
    /// FFN width (of the gate and of the up projection).
    pub ffn: u32,
    /// Vocabulary size.
    pub vocab: u32,
    /// RoPE base (`θ`).
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// K pieces of a row-sharded projection under [`Reduction::FixedTree`]: 1, 2 or 4, a
    /// multiple of every TP the decoder runs at.
    pub pieces: u32,
}

impl DecoderConfig {
    /// LLaMA-3.1-8B's shape (32 layers of hidden 4096, 32/8 heads of 128, FFN 14336, vocabulary
    /// 128256, θ 500000), with `layers` layers (fewer fit beside a long KV cache).
    pub fn llama_3_1_8b(layers: usize) -> DecoderConfig {
        DecoderConfig {
            layers,
            hidden: 4096,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            ffn: 14336,
            vocab: 128_256,
            rope_base: 500_000.0,
            eps: 1e-5,
            pieces: 4,
        }
    }

    /// A small decoder of the same structure for the emulator: 2 layers of hidden 256, 8/4
    /// heads of 64, FFN 512, vocabulary 512.
    pub fn small() -> DecoderConfig {
        DecoderConfig {
            layers: 2,
            hidden: 256,
            heads: 8,
            kv_heads: 4,
            head_dim: 64,
            ffn: 512,
            vocab: 512,
            rope_base: 500_000.0,
            eps: 1e-5,
            pieces: 4,
        }
    }

    /// Parameters of the model (embedding and LM head included).
    pub fn parameters(&self) -> u64 {
        let (h, d) = (self.hidden as u64, self.head_dim as u64);
        let attn =
            h * (self.heads as u64 + 2 * self.kv_heads as u64) * d + self.heads as u64 * d * h;
        let mlp = 3 * h * self.ffn as u64;
        self.layers as u64 * (attn + mlp + 2 * h) + 2 * self.vocab as u64 * h + h
    }

    /// Why this shape cannot run at tensor-parallel degree `tp` with `reduction`, if it
    /// cannot.
    pub fn validate(&self, tp: u32, reduction: Reduction) -> Result<(), DecoderError> {
        let bad = |m: String| Err(DecoderError::Config(m));
        let c = self;
        if c.layers == 0 {
            return bad("no layers".into());
        }
        if c.hidden == 0 || !c.hidden.is_multiple_of(16) || c.hidden > 8192 {
            return bad(format!(
                "hidden {} must be a positive multiple of 16, at most 8192 (one RMSNorm block per row)",
                c.hidden
            ));
        }
        if c.head_dim != 64 && c.head_dim != 128 {
            return bad(format!("head dimension {} (64 or 128)", c.head_dim));
        }
        if c.kv_heads == 0 || !c.heads.is_multiple_of(c.kv_heads) || c.heads / c.kv_heads > 16 {
            return bad(format!(
                "{} query heads over {} KV heads: a multiple, at most 16 per KV head",
                c.heads, c.kv_heads
            ));
        }
        if !matches!(tp, 1 | 2 | 4) {
            return bad(format!("tensor-parallel degree {tp} (1, 2 or 4)"));
        }
        if !c.kv_heads.is_multiple_of(tp) {
            return bad(format!(
                "{} KV heads do not split over {tp} ranks",
                c.kv_heads
            ));
        }
        if !matches!(c.pieces, 1 | 2 | 4) {
            return bad(format!("{} K pieces (1, 2 or 4)", c.pieces));
        }
        let pieces = match reduction {
            Reduction::FixedTree => {
                if !c.pieces.is_multiple_of(tp) {
                    return bad(format!(
                        "{} K pieces do not split over {tp} ranks: the fixed reduction tree needs pieces a multiple of TP",
                        c.pieces
                    ));
                }
                c.pieces
            }
            Reduction::AllReduce => tp,
        };
        let q_width = c.heads * c.head_dim;
        for (what, k) in [("heads × head_dim", q_width), ("ffn", c.ffn)] {
            if k == 0 || !k.is_multiple_of(16 * pieces) {
                return bad(format!(
                    "{what} = {k} must split into {pieces} pieces of a multiple of 16 (the GEMM's K)"
                ));
            }
        }
        if c.vocab == 0 || !c.vocab.is_multiple_of(16 * tp) {
            return bad(format!(
                "vocabulary {} must split into {tp} shards of a multiple of 16",
                c.vocab
            ));
        }
        if !(c.rope_base.is_finite() && c.rope_base > 1.0 && c.eps.is_finite() && c.eps > 0.0) {
            return bad(format!(
                "RoPE base {} must exceed 1 and eps {} be positive",
                c.rope_base, c.eps
            ));
        }
        Ok(())
    }
}

/// How the partial sums of a row-sharded projection are added across ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// `pieces` K pieces added in a fixed tree (an all-gather, then [`tree_sum`]): the same
    /// result at every TP, bit for bit.
    FixedTree,
    /// One GEMM per rank and [`CommGroup::all_reduce_sum`]: fewer launches, TP-dependent
    /// rounding.
    AllReduce,
}

/// Why the decoder refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    /// The shape, the options or a request do not fit.
    #[error("pat decoder: {0}")]
    Config(String),
    /// Compiling, launching or communicating failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl From<DecoderError> for RuntimeError {
    fn from(e: DecoderError) -> RuntimeError {
        match e {
            DecoderError::Runtime(r) => r,
            DecoderError::Config(reason) => RuntimeError::InvalidInput {
                what: "pat decoder",
                reason,
            },
        }
    }
}

impl From<DecoderError> for crate::verify::VerifyError {
    fn from(e: DecoderError) -> Self {
        crate::verify::VerifyError::Runtime(e.into())
    }
}

macro_rules! rt {
    ($e:expr) => {
        $e.map_err(RuntimeError::from)?
    };
}

/// One layer's weights, unsharded, row-major with output features as rows (`[out, in]`, a
/// linear layer's weight, what [`Gemm`] reads as column-major B).
#[derive(Clone, Debug)]
pub struct LayerWeights<T> {
    /// Pre-attention RMSNorm weight `[hidden]`.
    pub attn_norm: Vec<T>,
    /// `[heads·D, hidden]`.
    pub wq: Vec<T>,
    /// `[kv_heads·D, hidden]`.
    pub wk: Vec<T>,
    /// `[kv_heads·D, hidden]`.
    pub wv: Vec<T>,
    /// `[hidden, heads·D]`.
    pub wo: Vec<T>,
    /// Pre-MLP RMSNorm weight `[hidden]`.
    pub mlp_norm: Vec<T>,
    /// `[ffn, hidden]`.
    pub w_gate: Vec<T>,
    /// `[ffn, hidden]`.
    pub w_up: Vec<T>,
    /// `[hidden, ffn]`.
    pub w_down: Vec<T>,
}

/// The whole model's weights on the host, unsharded.
#[derive(Clone, Debug)]
pub struct DecoderWeights<T> {
    /// The shape.
    pub config: DecoderConfig,
    /// Token embedding `[vocab, hidden]`.
    pub embed: Vec<T>,
    /// Per layer.
    pub layers: Vec<LayerWeights<T>>,
    /// Final RMSNorm weight `[hidden]`.
    pub final_norm: Vec<T>,
    /// LM head `[vocab, hidden]`.
    pub lm_head: Vec<T>,
}

impl<T: Real> DecoderWeights<T> {
    /// Random weights from `seed`: uniform, scaled so every projection keeps unit variance
    /// (`√(3 / fan_in)`), norm weights `1 ± 0.2`, embeddings uniform in ±1.
    pub fn random(config: &DecoderConfig, seed: u64) -> DecoderWeights<T> {
        let mut rng = Rng::new(seed);
        let c = config;
        let (h, d) = (c.hidden as usize, c.head_dim as usize);
        let (q, kv, f, v) = (
            c.heads as usize * d,
            c.kv_heads as usize * d,
            c.ffn as usize,
            c.vocab as usize,
        );
        let mat = |rng: &mut Rng, n: usize, fan_in: usize| -> Vec<T> {
            let s = (3.0 / fan_in as f32).sqrt();
            (0..n).map(|_| T::from_f32(s * rng.f32())).collect()
        };
        let norm = |rng: &mut Rng| -> Vec<T> {
            (0..h).map(|_| T::from_f32(1.0 + 0.2 * rng.f32())).collect()
        };
        let layers = (0..c.layers)
            .map(|_| LayerWeights {
                attn_norm: norm(&mut rng),
                wq: mat(&mut rng, q * h, h),
                wk: mat(&mut rng, kv * h, h),
                wv: mat(&mut rng, kv * h, h),
                wo: mat(&mut rng, h * q, q),
                mlp_norm: norm(&mut rng),
                w_gate: mat(&mut rng, f * h, h),
                w_up: mat(&mut rng, f * h, h),
                w_down: mat(&mut rng, h * f, f),
            })
            .collect::<Vec<_>>();
        let embed = (0..v * h).map(|_| T::from_f32(rng.f32())).collect();
        let lm_head = mat(&mut rng, v * h, h);
        let final_norm = norm(&mut rng);
        DecoderWeights {
            config: *config,
            embed,
            layers,
            final_norm,
            lm_head,
        }
    }
}

/// Rows `rows` of a row-major matrix `cols` wide.
fn rows_of<T: Copy>(m: &[T], cols: usize, rows: std::ops::Range<usize>) -> Vec<T> {
    m[rows.start * cols..rows.end * cols].to_vec()
}

/// Columns `range` of a row-major matrix `cols` wide, as a matrix of their own.
fn cols_of<T: Copy>(m: &[T], cols: usize, range: std::ops::Range<usize>) -> Vec<T> {
    m.chunks(cols)
        .flat_map(|row| row[range.clone()].iter().copied())
        .collect()
}

/// Options of a [`TpDecoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecoderOptions {
    /// Sequences the batch holds at most (cache slots).
    pub slots: u32,
    /// Tokens a sequence holds at most (prompt and generated).
    pub max_seq: u32,
    /// How row-sharded sums are added across ranks.
    pub reduction: Reduction,
    /// Download each step's logits ([`StepOutput::logits`]; for checks).
    pub record_logits: bool,
    /// A token that ends a sequence early (kept as its last token), if any; otherwise a
    /// sequence ends after its `max_new` tokens.
    pub eos: Option<u32>,
}

pub(super) struct Kernels {
    pub(super) norm: Kernel,
    pub(super) rope: Kernel,
    pub(super) swiglu: Kernel,
    pub(super) split: Kernel,
    pub(super) append: Kernel,
    pub(super) mv: Kernel,
    pub(super) transpose: Kernel,
    pub(super) take: Kernel,
    pub(super) sum_t: Kernel,
    pub(super) sum_f32: Kernel,
    pub(super) embed: Kernel,
    pub(super) argmax: Kernel,
    pub(super) clear: Kernel,
    pub(super) gather: Kernel,
}

impl Kernels {
    fn build(dev: &Device, dtype: kiln::prelude::Dtype, dim: u32) -> Result<Kernels, RuntimeError> {
        Ok(Kernels {
            norm: add_rms_norm::spec().t(dtype).build(dev)?,
            rope: rope::spec().t(dtype).d(dim).build(dev)?,
            swiglu: swiglu::spec().t(dtype).build(dev)?,
            split: qkv_split::spec().t(dtype).build(dev)?,
            append: kv_append::spec().t(dtype).build(dev)?,
            mv: kv_move::spec().t(dtype).build(dev)?,
            transpose: transpose_heads::spec().t(dtype).build(dev)?,
            take: take_cols::spec().t(dtype).build(dev)?,
            sum_t: tree_sum::spec().t(dtype).build(dev)?,
            sum_f32: tree_sum::spec().t(kiln::prelude::Dtype::F32).build(dev)?,
            embed: embed::spec().t(dtype).build(dev)?,
            argmax: argmax_rows::spec().build(dev)?,
            clear: clear_counts::spec().build(dev)?,
            gather: gather_rows::spec().t(dtype).build(dev)?,
        })
    }
}

pub(super) fn elems(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid: ((n as u32).div_ceil(MOVE_THREADS).max(1), 1, 1),
        block: (MOVE_THREADS, 1, 1),
        dyn_shared_bytes: 0,
    }
}

fn blocks(n: u32, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid: (n, 1, 1),
        block: (threads, 1, 1),
        dyn_shared_bytes: 0,
    }
}

pub(super) struct RankLayer<T: kiln::Element> {
    pub(super) attn_norm: DeviceBuffer<T>,
    pub(super) wqkv: DeviceBuffer<T>,
    pub(super) wo: Vec<DeviceBuffer<T>>,
    pub(super) mlp_norm: DeviceBuffer<T>,
    pub(super) wgu: DeviceBuffer<T>,
    pub(super) wdown: Vec<DeviceBuffer<T>>,
    pub(super) k_cache: DeviceBuffer<T>,
    pub(super) v_cache: DeviceBuffer<T>,
}

/// A rank's per-call buffers, for `rows` tokens (padded to `m`).
pub(super) struct Work<T: kiln::Element> {
    m: usize,
    rows: usize,
    ids: DeviceBuffer<u32>,
    pos: DeviceBuffer<u32>,
    slot: DeviceBuffer<u32>,
    residual: DeviceBuffer<T>,
    delta: DeviceBuffer<T>,
    y: DeviceBuffer<T>,
    qkv: DeviceBuffer<f32>,
    q: DeviceBuffer<T>,
    k: DeviceBuffer<T>,
    v: DeviceBuffer<T>,
    o: DeviceBuffer<T>,
    lse: DeviceBuffer<f32>,
    /// Head-major q, k, v and o of a prompt (flash prefill's layout).
    heads_major: [DeviceBuffer<T>; 4],
    a_o: Vec<DeviceBuffer<T>>,
    a_down: Vec<DeviceBuffer<T>>,
    parts: Vec<DeviceBuffer<f32>>,
    local: DeviceBuffer<f32>,
    gathered: DeviceBuffer<f32>,
    gu: DeviceBuffer<f32>,
    gu_t: DeviceBuffer<T>,
    act: DeviceBuffer<T>,
    lm_in: DeviceBuffer<T>,
    logits: DeviceBuffer<f32>,
    logits_all: DeviceBuffer<f32>,
    best: DeviceBuffer<u32>,
    best_val: DeviceBuffer<f32>,
}

/// Per-rank sizes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    pub(super) tp: usize,
    pub(super) hidden: usize,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) dim: usize,
    pub(super) ffn: usize,
    pub(super) vocab: usize,
    /// K pieces per rank of a row-sharded projection.
    pub(super) pieces: usize,
    pub(super) cap: usize,
    pub(super) slots: usize,
}

impl Dims {
    /// A rank's sizes at tensor-parallel degree `tp` (validated by the caller).
    pub(super) fn new(c: &DecoderConfig, tp: usize, options: &DecoderOptions) -> Dims {
        Dims {
            tp,
            hidden: c.hidden as usize,
            heads: c.heads as usize / tp,
            kv_heads: c.kv_heads as usize / tp,
            dim: c.head_dim as usize,
            ffn: c.ffn as usize / tp,
            vocab: c.vocab as usize / tp,
            pieces: match options.reduction {
                Reduction::FixedTree => c.pieces as usize / tp,
                Reduction::AllReduce => 1,
            },
            cap: options.max_seq as usize,
            slots: options.slots as usize,
        }
    }
    fn qkv(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.dim
    }
    fn piece_o(&self) -> usize {
        self.heads * self.dim / self.pieces
    }
    fn piece_down(&self) -> usize {
        self.ffn / self.pieces
    }
}

impl<T: Real> Work<T> {
    /// Buffers for `rows` tokens; `lm_rows` rows go through the LM head (all for decode, one
    /// for a prompt, padded to 16).
    fn new(dev: &Device, d: &Dims, rows: usize, lm_rows: usize) -> Result<Work<T>, RuntimeError> {
        let m = rows.div_ceil(16) * 16;
        let lm = lm_rows.div_ceil(16) * 16;
        Ok(Work {
            m,
            rows,
            ids: dev.zeros(rows)?,
            pos: dev.zeros(rows)?,
            slot: dev.zeros(rows)?,
            residual: dev.zeros(m * d.hidden)?,
            delta: dev.zeros(m * d.hidden)?,
            y: dev.zeros(m * d.hidden)?,
            qkv: dev.zeros(m * d.qkv())?,
            q: dev.zeros(rows * d.heads * d.dim)?,
            k: dev.zeros(rows * d.kv_heads * d.dim)?,
            v: dev.zeros(rows * d.kv_heads * d.dim)?,
            o: dev.zeros(rows * d.heads * d.dim)?,
            lse: dev.zeros(rows * d.heads)?,
            heads_major: [
                dev.zeros(rows * d.heads * d.dim)?,
                dev.zeros(rows * d.kv_heads * d.dim)?,
                dev.zeros(rows * d.kv_heads * d.dim)?,
                dev.zeros(rows * d.heads * d.dim)?,
            ],
            a_o: (0..d.pieces)
                .map(|_| dev.zeros(m * d.piece_o()))
                .collect::<Result<_, _>>()?,
            a_down: (0..d.pieces)
                .map(|_| dev.zeros(m * d.piece_down()))
                .collect::<Result<_, _>>()?,
            parts: (0..d.pieces)
                .map(|_| dev.zeros(m * d.hidden))
                .collect::<Result<_, _>>()?,
            local: dev.zeros(m * d.hidden)?,
            gathered: dev.zeros(d.tp * m * d.hidden)?,
            gu: dev.zeros(m * 2 * d.ffn)?,
            gu_t: dev.zeros(m * 2 * d.ffn)?,
            act: dev.zeros(m * d.ffn)?,
            lm_in: dev.zeros(lm * d.hidden)?,
            logits: dev.zeros(lm * d.vocab)?,
            logits_all: dev.zeros(d.tp * lm * d.vocab)?,
            best: dev.zeros(lm)?,
            best_val: dev.zeros(lm)?,
        })
    }
}

pub(super) struct Rank<T: kiln::Element> {
    pub(super) device: Device,
    pub(super) kernels: Kernels,
    pub(super) gemm: Gemm,
    pub(super) prefill: Prefill,
    pub(super) decode: FlashDecode,
    pub(super) scratch: DecodeScratch,
    pub(super) embed: DeviceBuffer<T>,
    pub(super) final_norm: DeviceBuffer<T>,
    pub(super) lm_head: DeviceBuffer<T>,
    pub(super) layers: Vec<RankLayer<T>>,
    pub(super) counts: DeviceBuffer<f32>,
    /// The decode step's buffers, for the batch size they were made for.
    pub(super) step_work: Option<Work<T>>,
}

/// A sequence in the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    /// The caller's id.
    pub id: usize,
    /// Tokens in the KV cache (the prompt and every generated token fed back so far).
    pub len: u32,
    /// Generated tokens.
    pub generated: Vec<u32>,
    /// Tokens to generate in all.
    pub max_new: usize,
}

/// What one decode step produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutput {
    /// `(id, token)` per sequence that took part, in slot order.
    pub tokens: Vec<(usize, u32)>,
    /// The sequences that finished this step, with all their generated tokens.
    pub retired: Vec<(usize, Vec<u32>)>,
    /// Per sequence that took part (slot order), the full-vocabulary logits, when recorded.
    pub logits: Option<Vec<Vec<f32>>>,
}

/// The decoder over the ranks of one tensor-parallel group (one data-parallel replica).
pub struct TpDecoder<T: Real> {
    pub(super) group: Arc<CommGroup>,
    pub(super) config: DecoderConfig,
    pub(super) options: DecoderOptions,
    pub(super) dims: Dims,
    pub(super) ranks: Vec<Rank<T>>,
    pub(super) active: Vec<Sequence>,
    pub(super) retired: Vec<(usize, Vec<u32>)>,
    /// The prompt's last-row logits of the latest [`TpDecoder::add`], when recorded.
    pub prompt_logits: Option<Vec<f32>>,
    /// The flash-decoding split size, when fixed ([`TpDecoder::fix_decode_chunk`]).
    pub(super) chunk: Option<u32>,
}

impl<T: Real> TpDecoder<T> {
    /// Shards `weights` over the ranks of `group` (TP = its size) and makes the caches.
    pub fn new(
        group: Arc<CommGroup>,
        weights: &DecoderWeights<T>,
        options: DecoderOptions,
    ) -> Result<TpDecoder<T>, DecoderError> {
        let c = weights.config;
        let tp = group.ranks();
        c.validate(tp as u32, options.reduction)?;
        if options.slots == 0 || options.max_seq == 0 {
            return Err(DecoderError::Config(format!(
                "{} slots of {} tokens: both must be positive",
                options.slots, options.max_seq
            )));
        }
        let (h, d) = (c.hidden as usize, c.head_dim as usize);
        let dims = Dims::new(&c, tp, &options);
        let pieces = dims.pieces;
        let expect = |what: &str, got: usize, want: usize| -> Result<(), DecoderError> {
            if got == want {
                Ok(())
            } else {
                Err(DecoderError::Config(format!(
                    "weights: `{what}` holds {got} values, the shape needs {want}"
                )))
            }
        };
        expect("embed", weights.embed.len(), c.vocab as usize * h)?;
        expect("lm_head", weights.lm_head.len(), c.vocab as usize * h)?;
        expect("final_norm", weights.final_norm.len(), h)?;
        expect("layers", weights.layers.len(), c.layers)?;
        let (qw, kvw, f) = (
            c.heads as usize * d,
            c.kv_heads as usize * d,
            c.ffn as usize,
        );
        for l in &weights.layers {
            expect("wq", l.wq.len(), qw * h)?;
            expect("wk", l.wk.len(), kvw * h)?;
            expect("wv", l.wv.len(), kvw * h)?;
            expect("wo", l.wo.len(), h * qw)?;
            expect("w_gate", l.w_gate.len(), f * h)?;
            expect("w_up", l.w_up.len(), f * h)?;
            expect("w_down", l.w_down.len(), h * f)?;
            expect("attn_norm", l.attn_norm.len(), h)?;
            expect("mlp_norm", l.mlp_norm.len(), h)?;
        }
        let mut ranks = Vec::with_capacity(tp);
        for r in 0..tp {
            let dev = group.device(r).clone();
            let (qr, kvr, fr) = (dims.heads * d, dims.kv_heads * d, dims.ffn);
            let cache = dims.slots * dims.cap * dims.kv_heads * d;
            let mut layers = Vec::with_capacity(c.layers);
            for l in &weights.layers {
                let mut wqkv = rows_of(&l.wq, h, r * qr..(r + 1) * qr);
                wqkv.extend(rows_of(&l.wk, h, r * kvr..(r + 1) * kvr));
                wqkv.extend(rows_of(&l.wv, h, r * kvr..(r + 1) * kvr));
                let mut wgu = rows_of(&l.w_gate, h, r * fr..(r + 1) * fr);
                wgu.extend(rows_of(&l.w_up, h, r * fr..(r + 1) * fr));
                let piece = |m: &[T],
                             k: usize,
                             width: usize|
                 -> Result<Vec<DeviceBuffer<T>>, RuntimeError> {
                    (0..pieces)
                        .map(|p| {
                            let at = (r * pieces + p) * width;
                            dev.upload(&cols_of(m, k, at..at + width))
                        })
                        .collect()
                };
                layers.push(RankLayer {
                    attn_norm: dev.upload(&l.attn_norm)?,
                    wqkv: dev.upload(&wqkv)?,
                    wo: piece(&l.wo, qw, dims.piece_o())?,
                    mlp_norm: dev.upload(&l.mlp_norm)?,
                    wgu: dev.upload(&wgu)?,
                    wdown: piece(&l.w_down, f, dims.piece_down())?,
                    k_cache: dev.zeros(cache)?,
                    v_cache: dev.zeros(cache)?,
                });
            }
            let vr = dims.vocab;
            let mut decode = rt!(FlashDecode::with_counts(&dev, T::DTYPE, d as u32, false));
            decode.store = Store::in_dir(None);
            ranks.push(Rank {
                kernels: Kernels::build(&dev, T::DTYPE, d as u32)?,
                gemm: Gemm::new(&dev, T::DTYPE, Store::in_dir(None)),
                prefill: Prefill::new(&dev, T::DTYPE, Store::in_dir(None)),
                decode,
                scratch: DecodeScratch::new(&dev, 1, d)?,
                embed: dev.upload(&weights.embed)?,
                final_norm: dev.upload(&weights.final_norm)?,
                lm_head: dev.upload(&rows_of(&weights.lm_head, h, r * vr..(r + 1) * vr))?,
                layers,
                counts: dev.zeros(dims.slots * dims.cap * dims.kv_heads)?,
                step_work: None,
                device: dev,
            });
        }
        Ok(TpDecoder {
            group,
            config: c,
            options,
            dims,
            ranks,
            active: Vec::new(),
            retired: Vec::new(),
            prompt_logits: None,
            chunk: None,
        })
    }

    /// The tensor-parallel degree.
    pub fn tp(&self) -> usize {
        self.dims.tp
    }

    /// The options it was made with (after a switch: the slots of every replica merged).
    pub fn options(&self) -> &DecoderOptions {
        &self.options
    }

    /// Fixes flash-decoding's split size to `chunk` keys (`None`: chosen per step from the
    /// batch and the longest context). The default choice depends on the whole batch, so a
    /// sequence's attention is rounded differently in a batch of another size; a fixed split
    /// makes every sequence's tokens independent of which others share its replica — what
    /// a run that compares layouts, or switches between them, needs to stay token for token
    /// equal.
    pub fn fix_decode_chunk(&mut self, chunk: Option<u32>) {
        self.chunk = chunk;
    }

    /// The shape.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// The active sequences, by slot.
    pub fn active(&self) -> &[Sequence] {
        &self.active
    }

    /// Takes the sequences retired so far (`(id, generated tokens)`), in retirement order.
    pub fn take_retired(&mut self) -> Vec<(usize, Vec<u32>)> {
        std::mem::take(&mut self.retired)
    }

    /// Waits for every rank.
    pub fn synchronize(&self) -> Result<(), RuntimeError> {
        self.group.synchronize()
    }

    /// Prefills `prompt` into the next slot and returns the sequence's first token (greedy
    /// over the last prompt position). The sequence generates `max_new` tokens in all (it
    /// retires at once when that is 1).
    pub fn add(&mut self, id: usize, prompt: &[u32], max_new: usize) -> Result<u32, DecoderError> {
        if max_new == 0 {
            return Err(DecoderError::Config(
                "a sequence needs a prompt and at least one token to generate".into(),
            ));
        }
        let token = self.prefill_slot(prompt, max_new - 1)?;
        self.active.push(Sequence {
            id,
            len: prompt.len() as u32,
            generated: vec![token],
            max_new,
        });
        self.retire_finished()?;
        Ok(token)
    }

    /// Takes over `seq`, a sequence another decoder was generating, by recomputing its KV
    /// cache: a prefill of `context` (its prompt followed by every generated token but the
    /// last, `seq.len` tokens) into the next slot. It then continues from its last token as
    /// if it had always been here. Returns the token the prefill chose for the position
    /// after `context` — `seq`'s last generated token, up to the rounding by which a
    /// prefill's keys and values may differ from those the decode steps wrote.
    pub fn resume(&mut self, seq: Sequence, context: &[u32]) -> Result<u32, DecoderError> {
        if context.len() != seq.len as usize || seq.generated.is_empty() {
            return Err(DecoderError::Config(format!(
                "sequence {}: a context of {} tokens for a cache of {} and {} generated tokens",
                seq.id,
                context.len(),
                seq.len,
                seq.generated.len()
            )));
        }
        let left = seq.max_new.saturating_sub(seq.generated.len());
        let token = self.prefill_slot(context, left)?;
        self.active.push(seq);
        self.retire_finished()?;
        Ok(token)
    }

    /// Prefills `tokens` into the next free slot (room for `more` positions after them) and
    /// returns the greedy token after them.
    fn prefill_slot(&mut self, tokens: &[u32], more: usize) -> Result<u32, DecoderError> {
        let c = self.config;
        if self.active.len() >= self.dims.slots {
            return Err(DecoderError::Config(format!(
                "the batch is full ({} slots)",
                self.dims.slots
            )));
        }
        if tokens.is_empty() {
            return Err(DecoderError::Config(
                "a sequence needs a prompt and at least one token to generate".into(),
            ));
        }
        if tokens.len() + more > self.dims.cap {
            return Err(DecoderError::Config(format!(
                "{} prompt tokens + {} generated need {} cache positions, the cache holds {}",
                tokens.len(),
                more + 1,
                tokens.len() + more,
                self.dims.cap
            )));
        }
        if let Some(t) = tokens.iter().find(|&&t| t >= c.vocab) {
            return Err(DecoderError::Config(format!(
                "token {t} is outside the vocabulary of {}",
                c.vocab
            )));
        }
        let slot = self.active.len() as u32;
        let s = tokens.len();
        let d = self.dims;
        let mut works = Vec::with_capacity(d.tp);
        for rank in &self.ranks {
            let dev = &rank.device;
            let mut w = Work::<T>::new(dev, &d, s, 1)?;
            dev.write(&mut w.ids, tokens)?;
            dev.write(&mut w.pos, &(0..s as u32).collect::<Vec<_>>())?;
            dev.write(&mut w.slot, &vec![slot; s])?;
            works.push(w);
        }
        for rank in &mut self.ranks {
            clear_counts::launch(
                &rank.kernels.clear,
                &elems(d.cap * d.kv_heads),
                &mut rank.counts,
                slot,
                d.cap as u32,
                d.kv_heads as u32,
            )?;
        }
        Ok(self.forward(&mut works, Phase::Prompt)?[0])
    }

    /// For profiling: adds a sequence whose cache already holds `context` positions of
    /// random keys and values (what a prefill of that length would leave, as far as a step's
    /// time goes: it depends on the lengths, not the values) and whose last token is `token`;
    /// it generates `max_new` tokens in all, `token` counted.
    pub fn add_random_context(
        &mut self,
        id: usize,
        context: u32,
        max_new: usize,
        token: u32,
        seed: u64,
    ) -> Result<(), DecoderError> {
        let d = self.dims;
        if self.active.len() >= d.slots {
            return Err(DecoderError::Config(format!(
                "the batch is full ({} slots)",
                d.slots
            )));
        }
        if context == 0
            || max_new == 0
            || context as usize + max_new - 1 > d.cap
            || token >= self.config.vocab
        {
            return Err(DecoderError::Config(format!(
                "a context of {context} + {max_new} tokens (cache {}), token {token} (vocabulary {})",
                d.cap, self.config.vocab
            )));
        }
        let slot = self.active.len() as u32;
        let rows = context as usize;
        // a block of random values repeated: drawing every value of a long context for many
        // sequences would take the host longer than the steps it profiles
        let mut rng = Rng::new(seed);
        let block: Vec<T> = (0..4093).map(|_| T::from_f32(rng.f32())).collect();
        let kv: Vec<T> = block
            .iter()
            .copied()
            .cycle()
            .take(rows * d.kv_heads * d.dim)
            .collect();
        for rank in &mut self.ranks {
            let dev = rank.device.clone();
            let k_new = dev.upload(&kv)?;
            let slots = dev.upload(&vec![slot; rows])?;
            let pos = dev.upload(&(0..context).collect::<Vec<u32>>())?;
            clear_counts::launch(
                &rank.kernels.clear,
                &elems(d.cap * d.kv_heads),
                &mut rank.counts,
                slot,
                d.cap as u32,
                d.kv_heads as u32,
            )?;
            for layer in &mut rank.layers {
                kv_append::launch(
                    &rank.kernels.append,
                    &elems(rows * d.kv_heads * d.dim),
                    &k_new,
                    &k_new,
                    &mut layer.k_cache,
                    &mut layer.v_cache,
                    &mut rank.counts,
                    &slots,
                    &pos,
                    context,
                    d.kv_heads as u32,
                    d.dim as u32,
                    d.cap as u32,
                )?;
            }
        }
        self.active.push(Sequence {
            id,
            len: context,
            generated: vec![token],
            max_new,
        });
        self.retire_finished()
    }

    /// Drops every active sequence (their tokens are not kept).
    pub fn clear(&mut self) {
        self.active.clear();
    }

    /// One decode step for every active sequence: feeds its last token at its own position,
    /// appends the greedy next token, and retires the sequences that are done (compacting the
    /// batch). Nothing to do (an empty batch) is an empty output.
    pub fn step(&mut self) -> Result<StepOutput, DecoderError> {
        let b = self.active.len();
        if b == 0 {
            return Ok(StepOutput::default());
        }
        let d = self.dims;
        let ids: Vec<u32> = self
            .active
            .iter()
            .map(|s| *s.generated.last().expect("a sequence has its first token"))
            .collect();
        let pos: Vec<u32> = self.active.iter().map(|s| s.len).collect();
        let slots: Vec<u32> = (0..b as u32).collect();
        let mut works = Vec::with_capacity(d.tp);
        for rank in &mut self.ranks {
            let w = match rank.step_work.take() {
                Some(w) if w.rows == b => w,
                _ => Work::<T>::new(&rank.device, &d, b, b)?,
            };
            works.push(w);
        }
        for (rank, w) in self.ranks.iter().zip(works.iter_mut()) {
            rank.device.write(&mut w.ids, &ids)?;
            rank.device.write(&mut w.pos, &pos)?;
            rank.device.write(&mut w.slot, &slots)?;
        }
        let n_keys = pos.iter().max().copied().unwrap_or(0) + 1;
        let result = self.forward(&mut works, Phase::Step { n_keys });
        let logits = if self.options.record_logits {
            Some(self.logits_of(&works[0], b)?)
        } else {
            None
        };
        for (rank, w) in self.ranks.iter_mut().zip(works) {
            rank.step_work = Some(w);
        }
        let tokens = result?;
        let mut out = StepOutput {
            logits,
            ..StepOutput::default()
        };
        for (s, &t) in self.active.iter_mut().zip(&tokens) {
            s.len += 1;
            s.generated.push(t);
            out.tokens.push((s.id, t));
        }
        let before = self.retired.len();
        self.retire_finished()?;
        out.retired = self.retired[before..].to_vec();
        Ok(out)
    }

    /// Runs `add` for every request, then steps until every sequence has finished; returns
    /// each request's generated tokens, in request order. `requests` are `(prompt, max_new)`.
    pub fn generate(
        &mut self,
        requests: &[(Vec<u32>, usize)],
    ) -> Result<Vec<Vec<u32>>, DecoderError> {
        if requests.len() + self.active.len() > self.dims.slots {
            return Err(DecoderError::Config(format!(
                "{} requests for {} free slots",
                requests.len(),
                self.dims.slots - self.active.len()
            )));
        }
        let first = self.retired.len();
        let base = usize::MAX / 2;
        for (i, (prompt, max_new)) in requests.iter().enumerate() {
            self.add(base + i, prompt, *max_new)?;
        }
        while !self.active.is_empty() {
            self.step()?;
        }
        let mut outs = vec![Vec::new(); requests.len()];
        let done: Vec<_> = self.retired.drain(first..).collect();
        for (id, tokens) in done {
            if let Some(i) = id.checked_sub(base) {
                outs[i] = tokens;
            }
        }
        Ok(outs)
    }

    fn logits_of(&self, w: &Work<T>, rows: usize) -> Result<Vec<Vec<f32>>, RuntimeError> {
        let d = self.dims;
        let dev = &self.ranks[0].device;
        let all = if d.tp > 1 {
            dev.download(&w.logits_all)?
        } else {
            dev.download(&w.logits)?
        };
        let lm = w.logits.len() / d.vocab;
        Ok((0..rows)
            .map(|r| {
                (0..d.tp)
                    .flat_map(|s| {
                        let at = (s * lm + r) * d.vocab;
                        all[at..at + d.vocab].iter().copied()
                    })
                    .collect()
            })
            .collect())
    }

    /// Retires the sequences that generated all their tokens: the last active slot's cache
    /// moves into each freed slot.
    fn retire_finished(&mut self) -> Result<(), DecoderError> {
        let d = self.dims;
        let mut s = self.active.len();
        while s > 0 {
            s -= 1;
            let seq = &self.active[s];
            let ended =
                self.options.eos.is_some() && seq.generated.last().copied() == self.options.eos;
            if seq.generated.len() < seq.max_new && !ended {
                continue;
            }
            let last = self.active.len() - 1;
            if s != last {
                let rows = self.active[last].len;
                for rank in &mut self.ranks {
                    for layer in &mut rank.layers {
                        kv_move::launch(
                            &rank.kernels.mv,
                            &elems(d.cap * d.kv_heads * d.dim),
                            &mut layer.k_cache,
                            &mut layer.v_cache,
                            &mut rank.counts,
                            last as u32,
                            s as u32,
                            rows,
                            d.kv_heads as u32,
                            d.dim as u32,
                            d.cap as u32,
                        )?;
                    }
                }
            }
            let done = self.active.swap_remove(s);
            self.retired.push((done.id, done.generated));
        }
        Ok(())
    }

    /// The layer stack over the tokens in `works` (a prompt or a decode step), the final norm,
    /// the LM head and the greedy tokens (one per LM row).
    fn forward(&mut self, works: &mut [Work<T>], phase: Phase) -> Result<Vec<u32>, DecoderError> {
        let c = self.config;
        let d = self.dims;
        let hidden = d.hidden as u32;
        let rows = works[0].rows;
        let m = works[0].m;
        // the split size of flash-decoding from the global shape, so every TP splits alike
        if let Phase::Step { n_keys } = phase {
            let global = DecodeShape {
                batch: rows as u32,
                heads: c.heads,
                kv_heads: c.kv_heads,
                seq: d.cap as u32,
                dim: d.dim as u32,
            };
            let mps = self.ranks[0].device.multiprocessors();
            let chunk = self
                .chunk
                .unwrap_or_else(|| default_chunk(&global, n_keys, mps));
            // the merge is pinned too: the fused one rounds differently, and a tuned choice
            // (per rank's local shape) could differ between ranks and layouts
            for rank in &mut self.ranks {
                rank.decode.chunk = Some(chunk);
                rank.decode.fused = Some(false);
            }
        }
        for (rank, w) in self.ranks.iter().zip(works.iter_mut()) {
            embed::launch(
                &rank.kernels.embed,
                &elems(m * d.hidden),
                &rank.embed,
                &w.ids,
                &mut w.residual,
                rows as u32,
                hidden,
            )?;
        }
        for l in 0..c.layers {
            // attention block
            for (rank, w) in self.ranks.iter_mut().zip(works.iter_mut()) {
                let k = &rank.kernels;
                let layer = &mut rank.layers[l];
                add_rms_norm::launch(
                    &k.norm,
                    &blocks(m as u32, NORM_THREADS),
                    &w.delta,
                    &mut w.residual,
                    &layer.attn_norm,
                    &mut w.y,
                    hidden,
                    c.eps,
                    l > 0,
                )?;
                rt!(rank.gemm.run(
                    &w.y,
                    &layer.wqkv,
                    &mut w.qkv,
                    m as u32,
                    d.qkv() as u32,
                    hidden,
                    true,
                    None
                ));
                let (hr, kvr, dim) = (d.heads as u32, d.kv_heads as u32, d.dim as u32);
                qkv_split::launch(
                    &k.split,
                    &elems(rows * d.qkv()),
                    &w.qkv,
                    &mut w.q,
                    &mut w.k,
                    &mut w.v,
                    rows as u32,
                    hr,
                    kvr,
                    dim,
                )?;
                for (x, heads) in [(&mut w.q, hr), (&mut w.k, kvr)] {
                    rope::launch(
                        &k.rope,
                        &elems(rows * heads as usize * d.dim / 2),
                        x,
                        &w.pos,
                        rows as u32,
                        heads,
                        c.rope_base,
                    )?;
                }
                kv_append::launch(
                    &k.append,
                    &elems(rows * d.kv_heads * d.dim),
                    &w.k,
                    &w.v,
                    &mut layer.k_cache,
                    &mut layer.v_cache,
                    &mut rank.counts,
                    &w.slot,
                    &w.pos,
                    rows as u32,
                    kvr,
                    dim,
                    d.cap as u32,
                )?;
                let scale = 1.0 / (d.dim as f32).sqrt();
                match phase {
                    Phase::Step { n_keys } => {
                        let shape = DecodeShape {
                            batch: rows as u32,
                            heads: hr,
                            kv_heads: kvr,
                            seq: d.cap as u32,
                            dim,
                        };
                        rt!(rank.decode.run_with_counts(
                            &shape,
                            &w.q,
                            &layer.k_cache,
                            &layer.v_cache,
                            None,
                            Some(&rank.counts),
                            n_keys,
                            scale,
                            &mut w.o,
                            &mut w.lse,
                            &mut rank.scratch,
                        ));
                    }
                    Phase::Prompt => {
                        let dev = &rank.device;
                        let s = rows as u32;
                        let [qh, kh, vh, oh] = &mut w.heads_major;
                        for (src, dst, heads) in [
                            (&w.q, &mut *qh, hr),
                            (&w.k, &mut *kh, kvr),
                            (&w.v, &mut *vh, kvr),
                        ] {
                            transpose_heads::launch(
                                &k.transpose,
                                &elems(src.len()),
                                src,
                                dst,
                                s,
                                heads,
                                dim,
                                true,
                            )?;
                        }
                        let call = PrefillCall {
                            batch: 1,
                            heads: hr,
                            kv_heads: kvr,
                            s_q: s,
                            s_kv: s,
                            dim,
                            causal: true,
                        };
                        // the Hopper kernel on sm_90, else a fixed key tile (not a tuned one:
                        // the bucket depends on the heads per rank)
                        let bk = if dev.is_gpu() && WgmmaPrefill::supported(dev) {
                            None
                        } else {
                            Some(DEFAULT_BK)
                        };
                        rt!(rank
                            .prefill
                            .run(&call, qh, kh, vh, scale, oh, &mut w.lse, bk));
                        transpose_heads::launch(
                            &k.transpose,
                            &elems(oh.len()),
                            &*oh,
                            &mut w.o,
                            s,
                            hr,
                            dim,
                            false,
                        )?;
                    }
                }
            }
            self.row_sharded(works, Block::Attention(l), rows)?;
            // MLP block
            for (rank, w) in self.ranks.iter_mut().zip(works.iter_mut()) {
                let k = &rank.kernels;
                let layer = &rank.layers[l];
                add_rms_norm::launch(
                    &k.norm,
                    &blocks(m as u32, NORM_THREADS),
                    &w.delta,
                    &mut w.residual,
                    &layer.mlp_norm,
                    &mut w.y,
                    hidden,
                    c.eps,
                    true,
                )?;
                let f2 = 2 * d.ffn as u32;
                rt!(rank
                    .gemm
                    .run(&w.y, &layer.wgu, &mut w.gu, m as u32, f2, hidden, true, None));
                let len = m * 2 * d.ffn;
                tree_sum::launch(
                    &k.sum_t,
                    &elems(len),
                    &w.gu,
                    &w.gu,
                    &w.gu,
                    &w.gu,
                    &mut w.gu_t,
                    1,
                    len as u32,
                    0,
                )?;
                swiglu::launch(
                    &k.swiglu,
                    &elems(m * d.ffn),
                    &w.gu_t,
                    &mut w.act,
                    m as u32,
                    d.ffn as u32,
                )?;
            }
            self.row_sharded(works, Block::Mlp(l), m)?;
        }
        // final norm, LM head, greedy
        let lm_rows = match phase {
            Phase::Prompt => 1,
            Phase::Step { .. } => rows,
        };
        for (rank, w) in self.ranks.iter().zip(works.iter_mut()) {
            let k = &rank.kernels;
            add_rms_norm::launch(
                &k.norm,
                &blocks(m as u32, NORM_THREADS),
                &w.delta,
                &mut w.residual,
                &rank.final_norm,
                &mut w.y,
                hidden,
                c.eps,
                true,
            )?;
            let lm = w.lm_in.len() / d.hidden;
            let (row0, valid) = match phase {
                Phase::Prompt => (rows as u32 - 1, 1),
                Phase::Step { .. } => (0, rows as u32),
            };
            take_cols::launch(
                &k.take,
                &elems(w.lm_in.len()),
                &w.y,
                &mut w.lm_in,
                valid,
                row0,
                hidden,
                0,
                hidden,
            )?;
            rt!(rank.gemm.run(
                &w.lm_in,
                &rank.lm_head,
                &mut w.logits,
                lm as u32,
                d.vocab as u32,
                hidden,
                true,
                None
            ));
        }
        if d.tp > 1 {
            let (send, mut recv): (Vec<&DeviceBuffer<f32>>, Vec<&mut DeviceBuffer<f32>>) = works
                .iter_mut()
                .map(|w| (&w.logits, &mut w.logits_all))
                .unzip();
            self.group.all_gather(&send, &mut recv)?;
        }
        // every rank holds the same logits; the host reads rank 0's choice
        let rank = &self.ranks[0];
        let w = &mut works[0];
        let lm = w.lm_in.len() / d.hidden;
        let logits = if d.tp > 1 { &w.logits_all } else { &w.logits };
        argmax_rows::launch(
            &rank.kernels.argmax,
            &blocks(lm_rows as u32, ARGMAX_THREADS),
            logits,
            &mut w.best,
            &mut w.best_val,
            d.tp as u32,
            lm as u32,
            d.vocab as u32,
        )?;
        if self.options.record_logits {
            if let Phase::Prompt = phase {
                self.prompt_logits = self.logits_of(w, 1)?.pop();
            }
        }
        let best = rank.device.download(&w.best)?;
        let tokens = best[..lm_rows].to_vec();
        if let Some(bad) = tokens.iter().find(|&&t| t >= c.vocab) {
            return Err(DecoderError::Runtime(RuntimeError::InvalidInput {
                what: "pat decoder",
                reason: format!(
                    "the greedy token is {bad}: the logits are not finite (a NaN reached the LM head)"
                ),
            }));
        }
        Ok(tokens)
    }

    /// A row-sharded projection (O or down) of every rank's input, its partial sums added
    /// across ranks into each rank's `delta` (as `T`, `[m, hidden]`). `rows_valid` rows of
    /// the input are real (the rest of the `m` GEMM rows are zero).
    fn row_sharded(
        &mut self,
        works: &mut [Work<T>],
        block: Block,
        rows_valid: usize,
    ) -> Result<(), DecoderError> {
        let d = self.dims;
        let m = works[0].m;
        let len = m * d.hidden;
        let hidden = d.hidden as u32;
        for (rank, w) in self.ranks.iter().zip(works.iter_mut()) {
            let k = &rank.kernels;
            let (src, src_cols, width, weights, a) = match block {
                Block::Attention(l) => (
                    &w.o,
                    d.heads * d.dim,
                    d.piece_o(),
                    &rank.layers[l].wo,
                    &mut w.a_o,
                ),
                Block::Mlp(l) => (
                    &w.act,
                    d.ffn,
                    d.piece_down(),
                    &rank.layers[l].wdown,
                    &mut w.a_down,
                ),
            };
            for p in 0..d.pieces {
                take_cols::launch(
                    &k.take,
                    &elems(m * width),
                    src,
                    &mut a[p],
                    rows_valid as u32,
                    0,
                    src_cols as u32,
                    (p * width) as u32,
                    width as u32,
                )?;
                rt!(rank.gemm.run(
                    &a[p],
                    &weights[p],
                    &mut w.parts[p],
                    m as u32,
                    hidden,
                    width as u32,
                    true,
                    None
                ));
            }
        }
        let sum = |kernel: &Kernel,
                   parts: [&DeviceBuffer<f32>; 4],
                   out_t: Option<&mut DeviceBuffer<T>>,
                   out_f: Option<&mut DeviceBuffer<f32>>,
                   n: usize,
                   stride: usize|
         -> Result<(), RuntimeError> {
            let cfg = elems(len);
            let [a, b, c2, e] = parts;
            match (out_t, out_f) {
                (Some(o), _) => tree_sum::launch(
                    kernel,
                    &cfg,
                    a,
                    b,
                    c2,
                    e,
                    o,
                    n as u32,
                    len as u32,
                    stride as u32,
                ),
                (None, Some(o)) => tree_sum::launch(
                    kernel,
                    &cfg,
                    a,
                    b,
                    c2,
                    e,
                    o,
                    n as u32,
                    len as u32,
                    stride as u32,
                ),
                (None, None) => Ok(()),
            }
        };
        let four = |parts: &[DeviceBuffer<f32>]| -> [usize; 4] {
            let n = parts.len();
            [0, 1.min(n - 1), 2.min(n - 1), 3.min(n - 1)]
        };
        match (self.options.reduction, d.tp) {
            (_, 1) => {
                for (rank, w) in self.ranks.iter().zip(works.iter_mut()) {
                    let i = four(&w.parts);
                    let p = [
                        &w.parts[i[0]],
                        &w.parts[i[1]],
                        &w.parts[i[2]],
                        &w.parts[i[3]],
                    ];
                    sum(
                        &rank.kernels.sum_t,
                        p,
                        Some(&mut w.delta),
                        None,
                        d.pieces,
                        0,
                    )?;
                }
            }
            (Reduction::FixedTree, tp) => {
                for (rank, w) in self.ranks.iter().zip(works.iter_mut()) {
                    let i = four(&w.parts);
                    let p = [
                        &w.parts[i[0]],
                        &w.parts[i[1]],
                        &w.parts[i[2]],
                        &w.parts[i[3]],
                    ];
                    sum(
                        &rank.kernels.sum_f32,
                        p,
                        None,
                        Some(&mut w.local),
                        d.pieces,
                        0,
                    )?;
                }
                let (send, mut recv): (Vec<&DeviceBuffer<f32>>, Vec<&mut DeviceBuffer<f32>>) =
                    works
                        .iter_mut()
                        .map(|w| (&w.local, &mut w.gathered))
                        .unzip();
                self.group.all_gather(&send, &mut recv)?;
                for (rank, w) in self.ranks.iter().zip(works.iter_mut()) {
                    let g = &w.gathered;
                    sum(
                        &rank.kernels.sum_t,
                        [g, g, g, g],
                        Some(&mut w.delta),
                        None,
                        tp,
                        len,
                    )?;
                }
            }
            (Reduction::AllReduce, _) => {
                let mut bufs: Vec<&mut DeviceBuffer<f32>> =
                    works.iter_mut().map(|w| &mut w.parts[0]).collect();
                self.group.all_reduce_sum(&mut bufs)?;
                for (rank, w) in self.ranks.iter().zip(works.iter_mut()) {
                    let p0 = &w.parts[0];
                    sum(
                        &rank.kernels.sum_t,
                        [p0, p0, p0, p0],
                        Some(&mut w.delta),
                        None,
                        1,
                        0,
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// Data parallelism × tensor parallelism: the devices cut into `devices.len() / tp`
/// consecutive groups of `tp` ranks (TP1×DP4 on four GPUs is four groups of one), each made
/// once; a [`TpDecoder`] on each group is an independent replica with its own batch.
pub fn replica_groups(devices: &[Device], tp: usize) -> Result<Vec<Arc<CommGroup>>, DecoderError> {
    if tp == 0 || devices.is_empty() || !devices.len().is_multiple_of(tp) {
        return Err(DecoderError::Config(format!(
            "{} devices do not split into groups of {tp}",
            devices.len()
        )));
    }
    devices
        .chunks(tp)
        .map(|g| Ok(Arc::new(CommGroup::new(g)?)))
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Prompt,
    Step { n_keys: u32 },
}

#[derive(Clone, Copy, Debug)]
enum Block {
    Attention(usize),
    Mlp(usize),
}
