//! BigMac: a fine-grained MoE layer that communicates at a low width. Its DCCA structure
//! (descend `h → r·h` once, dispatch at `r·h`, experts `r·h → h → r·h`, combine at `r·h`,
//! ascend) and the fine-grained CDAC peer (dispatch at `h`, experts `h → r·h → h`) run on the
//! same kernels: [`kernels::moe_gate`] (softmax, top-k, optional auxiliary-loss-free bias),
//! AdaCluster's stable counting sort of the routing slots by expert, [`kernels::slot_maps`],
//! [`kernels::grouped_gemm`] (every expert in one launch, SiLU fused into the first
//! projection; a one-group call is BigMac's dense descend/ascend) and
//! [`kernels::moe_combine`]. On an sm_90 GPU every projection runs on the Hopper grouped
//! GEMM instead ([`hopper::grouped_gemm_wgmma`]: warpgroup MMA fed by the copy engine, after
//! a permutation of the entry rows into expert order). [`layer::MoeLayer`] is what a user
//! calls on one device; [`parallel::ParallelMoeLayer`] spreads the experts over the ranks of
//! a [`kiln_runtime::comm::CommGroup`] (NCCL on GPUs, host copies on the emulator) and
//! exchanges the tokens with all-to-alls at the dispatch width.
//!
//! # Design choices and limits
//!
//! - The gate runs on the full-width `x` in both structures (PIPELINES.md), f32 sums of `T`
//!   products; top-k ties go to the lower expert; weights are renormalised over the chosen
//!   experts by default (`MoeLayer::normalise`).
//! - The sort is stable, so an expert's rows keep token order and the output is
//!   deterministic; the combine sums a token's `k` slots in slot order.
//! - Widths are multiples of 64; at most 64 experts (two per lane in the gate); top-k one of
//!   1, 2, 4, 6, 8. Intermediates are stored as `T` between projections.
//! - Expert parallelism (`parallel`): each rank holds `E / N` experts (`E` divisible by `N`),
//!   one process drives every GPU; the count exchange waits on the host before the token
//!   all-to-all. Not built yet: overlap of communication with compute, backward.

pub mod checks;
pub mod demo;
pub mod hopper;
pub mod kernels;
pub mod layer;
pub mod parallel;
pub mod reference;
mod stages;
