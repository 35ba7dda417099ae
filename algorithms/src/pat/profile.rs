//! Step latencies of a decoder under a tensor-parallel layout: measured points (a
//! [`ProfilePoint`] list, JSON-serialisable so a GPU run's profile can be stored and reused)
//! and, until the decoder made of Kiln kernels is profiled on the device's multi-GPU kinds, a
//! roofline model of it on a card whose memory bandwidth Kiln measured — the costs the 1-GPU
//! simulation and the CI tests run on.

use serde::{Deserialize, Serialize};

use crate::verify::Rng;

/// The shapes of a decoder-only model (bf16 weights and KV cache).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelDims {
    /// Transformer layers.
    pub layers: u32,
    /// Model width.
    pub hidden: u32,
    /// Query heads.
    pub heads: u32,
    /// KV heads.
    pub kv_heads: u32,
    /// Head dimension.
    pub head_dim: u32,
    /// MLP width (SwiGLU: gate and up of this width, down back).
    pub ffn: u32,
    /// Vocabulary.
    pub vocab: u32,
}

impl ModelDims {
    /// LLaMA-3.1-8B's shapes.
    pub fn llama3_8b() -> ModelDims {
        ModelDims {
            layers: 32,
            hidden: 4096,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            ffn: 14336,
            vocab: 128256,
        }
    }

    /// Parameters (attention projections, SwiGLU MLP, embedding and head).
    pub fn params(&self) -> f64 {
        let (h, d) = (self.hidden as f64, self.head_dim as f64);
        let attn =
            h * d * (self.heads as f64 + 2.0 * self.kv_heads as f64) + self.heads as f64 * d * h;
        let mlp = 3.0 * h * self.ffn as f64;
        self.layers as f64 * (attn + mlp) + 2.0 * self.vocab as f64 * h
    }

    /// Bytes of bf16 weights.
    pub fn weight_bytes(&self) -> f64 {
        2.0 * self.params()
    }

    /// Bytes of bf16 K and V per token, all layers.
    pub fn kv_bytes_per_token(&self) -> f64 {
        2.0 * 2.0 * (self.layers * self.kv_heads * self.head_dim) as f64
    }
}

/// What a layout's step costs depend on, per GPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Card {
    /// Device memory bandwidth, bytes/s.
    pub mem_bw: f64,
    /// Dense bf16 tensor rate reached by prefill, FLOP/s.
    pub flops: f64,
    /// All-reduce / all-gather bus bandwidth between the GPUs, bytes/s.
    pub link_bw: f64,
    /// Latency of one all-reduce, s.
    pub link_latency: f64,
    /// Fixed cost per decoder layer of one step (launches), s.
    pub per_layer: f64,
}

impl Card {
    /// An H200: the 4.23 TB/s device copy and the prefill rate (218 TFLOP/s) Kiln measured
    /// there (`bench-results/h200-final/`); the link figures are **assumed** NVLink-4 values
    /// (360 GB/s bus bandwidth, 10 µs per all-reduce) until a multi-GPU run measures them.
    pub fn h200() -> Card {
        Card {
            mem_bw: 4.23e12,
            flops: 2.18e14,
            link_bw: 3.6e11,
            link_latency: 1.0e-5,
            per_layer: 6.0e-6,
        }
    }
}

/// One measured (or modelled) decode step: a tensor-parallel group of `tp` GPUs runs one
/// token for each of `batch` sequences with `context` tokens each on average.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfilePoint {
    /// GPUs in the tensor-parallel group.
    pub tp: u32,
    /// Sequences in the step.
    pub batch: u32,
    /// Mean context length.
    pub context: u32,
    /// Step latency, ms.
    pub ms: f64,
}

/// The roofline step latency, ms: every GPU reads its weight shard and its share of the KV
/// cache or does its share of the `2·params·batch` FLOPs, whichever takes longer, and a TP
/// group pays two all-reduces of the activations per layer.
pub fn roofline_step_ms(m: &ModelDims, c: &Card, tp: u32, batch: u32, context: u32) -> f64 {
    let t = tp as f64;
    let weights = m.weight_bytes() / t / c.mem_bw;
    let kv = batch as f64 * context as f64 * m.kv_bytes_per_token() / t / c.mem_bw;
    let compute = 2.0 * m.params() * batch as f64 / t / c.flops;
    let reduce = if tp > 1 {
        let bytes = 2.0 * (t - 1.0) / t * batch as f64 * m.hidden as f64 * 2.0;
        2.0 * m.layers as f64 * (c.link_latency + bytes / c.link_bw)
    } else {
        0.0
    };
    1e3 * ((weights + kv).max(compute) + reduce + m.layers as f64 * c.per_layer)
}

/// Prefill of `tokens` tokens on a TP group of `tp`, ms (compute-bound at the card's rate).
pub fn prefill_ms(m: &ModelDims, c: &Card, tp: u32, tokens: u64) -> f64 {
    1e3 * 2.0 * m.params() * tokens as f64 / (tp as f64 * c.flops)
}

/// A profile on the grid `tps × batches × contexts` from the roofline model, each point times
/// `1 + noise·N(0, 1)` (seeded) — measurement noise for the predictor to see through.
pub fn modelled_profile(
    m: &ModelDims,
    c: &Card,
    (tps, batches, contexts): (&[u32], &[u32], &[u32]),
    noise: f64,
    seed: u64,
) -> Vec<ProfilePoint> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for &tp in tps {
        for &batch in batches {
            for &context in contexts {
                let (u1, u2) = (
                    ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64,
                    ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64,
                );
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let ms = roofline_step_ms(m, c, tp, batch, context) * (1.0 + noise * z).max(0.5);
                out.push(ProfilePoint {
                    tp,
                    batch,
                    context,
                    ms,
                });
            }
        }
    }
    out
}
