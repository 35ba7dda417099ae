//! PAT: adaptive tensor parallelism for long-tail generation. A batch of generations on N
//! GPUs starts data-parallel (TP1×DP4: the most throughput while the batch is large) and
//! switches to tensor parallelism (TP4×DP1: the lowest step latency) when the long tail is
//! all that is left, if the predicted time saved exceeds the switch's cost.
//!
//! What exists so far is the 1-GPU **simulation mode**: the long-tail workload
//! ([`workload`]), step-latency profiles and the roofline model standing in for one until the
//! decoder made of Kiln kernels is profiled on the multi-GPU kinds ([`profile`]), the fitted
//! predictor with its held-out error ([`predictor`]), and the decision rule with the switch's
//! cost split into weight resharding, KV migration and recomputation ([`simulate`]) — and the
//! decoder's element-wise kernels ([`kernels`]: residual add fused with RMSNorm, rotary
//! embeddings, SwiGLU; checked in [`checks`]). Not built yet: the decoder layer that strings
//! them together with the grouped-GEMM projections and the flash kernels, NCCL resharding and
//! migration, and the multi-GPU runs.

pub mod checks;
pub mod decoder;
pub mod demo;
pub mod kernels;
pub mod predictor;
pub mod profile;
pub mod reference;
pub mod simulate;
pub mod workload;
