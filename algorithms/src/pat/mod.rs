//! PAT: adaptive tensor parallelism for long-tail generation. A batch of generations on N
//! GPUs starts data-parallel (TP1×DP4: the most throughput while the batch is large) and
//! switches to tensor parallelism (TP4×DP1: the lowest step latency) when the long tail is
//! all that is left, if the predicted time saved exceeds the switch's cost.
//!
//! What exists so far: the 1-GPU **simulation mode** — the long-tail workload ([`workload`]),
//! step-latency profiles and the roofline model standing in for measured ones ([`profile`]),
//! the fitted predictor with its held-out error ([`predictor`]), and the decision rule with
//! the switch's cost split into weight resharding, KV migration and recomputation
//! ([`simulate`]) — and the **decoder made of Kiln kernels** ([`decoder`]: a LLaMA-3.1-style
//! layer stack, tensor-parallel over a `CommGroup` at TP 1, 2 and 4 with TP-invariant
//! results, a per-sequence KV cache and continuous batching; its element-wise and
//! data-movement kernels in [`kernels`]; the float64 reference in [`reference`]; checked in
//! [`checks`]), with a bench that fills [`profile::ProfilePoint`]s from its measured step
//! latencies (`benches/pat.rs`). Not built yet: NCCL weight resharding and KV migration
//! between layouts, the adaptive run on the decoder, and the multi-GPU measurements.

pub mod adaptive;
pub mod checks;
pub mod decoder;
pub mod demo;
pub mod kernels;
pub mod predictor;
pub mod profile;
pub mod reference;
pub mod reshard;
pub mod simulate;
pub mod switch_check;
pub mod workload;
