//! PAT: adaptive tensor parallelism for long-tail generation. A batch of generations on N
//! GPUs starts data-parallel (TP1×DP4: the most throughput while the batch is large) and
//! switches to tensor parallelism (TP4×DP1: the lowest step latency) when the long tail is
//! all that is left, if the predicted time saved exceeds the switch's cost.
//!
//! The parts: the 1-GPU **simulation mode** — the long-tail workload ([`workload`]),
//! step-latency profiles and the roofline model standing in for measured ones ([`profile`]),
//! the fitted predictor with its held-out error ([`predictor`]), and the decision rule with
//! the switch's cost split into weight resharding, KV migration and recomputation
//! ([`simulate`]); the **decoder made of Kiln kernels** ([`decoder`]: a LLaMA-3.1-style
//! layer stack, tensor-parallel over a `CommGroup` at TP 1, 2 and 4 with TP-invariant
//! results, a per-sequence KV cache and continuous batching; its element-wise and
//! data-movement kernels in [`kernels`]; the float64 reference in [`reference`]; checked in
//! [`checks`]); the **switch** on it ([`reshard`]: weights resharded in place layer by layer
//! with a stated and measured memory bound, each unfinished sequence's KV migrated with
//! send/recv or recomputed by a prefill); and the **adaptive run** ([`adaptive`]: static and
//! adaptive layouts through one driver, PAT's rule every few steps, the switch's measured
//! split, the predictor's error per step; [`switch_check`] checks that every run generates
//! the same tokens). `benches/pat.rs` profiles the decoder's step latency
//! ([`profile::ProfilePoint`]s) and, with `KILN_PAT_MODE=adaptive`, runs the three layouts
//! on the visible GPUs. Not built: shrinking TP (an all-gather of the weights; PAT only
//! grows it), and any measurement on GPUs of the switch and the adaptive run so far (the
//! emulator checks them; its times mean nothing).

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
