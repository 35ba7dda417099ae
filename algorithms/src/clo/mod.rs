//! CLO: CPU-light KV-cache offloading for decoding. The whole KV cache of every layer lives
//! in pinned, **mapped** host memory; the GPU keeps HATA's hash codes of every key, and per
//! KV head a slot of `budget` selected rows plus a ring of the `recent` newest tokens.
//!
//! A decode step, per layer ([`model::CloModel::step`]):
//!
//! 1. **Append** the new token: its key and value go to the host cache (the GPU writes the
//!    mapped memory) and to the ring; its code and norm to the GPU's code store
//!    ([`kernels::clo_append`], after HATA's `hash_encode_group`).
//! 2. **Head-wise approximate cache** ([`kernels::clo_hit`]): each query head keeps a label
//!    `q_c`; it hits when `cos(q_t, q_c) ≥ τ_h`, `τ_h = cos(λ_h·arccos η + (1 − λ_h)·π)`,
//!    `λ_h = s_h^p` ([`model::threshold`]). **GQA rule:** a KV head's slot serves its whole
//!    group, so the group misses when any of its query heads misses, and then every head of
//!    the group relabels.
//! 3. **Select** (HATA's `hash_encode_group`, `hash_score`, top-k, over the capacity with the
//!    ring and the empty tail masked by the scoring, from the length in device memory), and **plan**
//!    ([`kernels::clo_plan`]): on a miss, rows still selected stay in their slots; only the
//!    new ones are listed for fetching, into the freed slots. A hit fetches nothing.
//! 4. **Zero-copy gather** ([`kernels::clo_gather`]): a warp per listed row reads it from
//!    mapped host memory with 16-byte loads into its slot. No CPU gather, no memcpy.
//! 5. **Attend** with `flash_decode` over the slot and the ring (`budget + recent` rows).
//!
//! Steps 1–4 of layer `l + 1` run on a second stream while layer `l` attends (the side
//! stream waits for layer `l − 1`'s attention before selecting layer `l + 1`: one layer of
//! prefetch). Everything that changes between steps (the cache length) is read from device
//! memory, so the first step is captured as a graph and every later step is one replay: the
//! host enqueues it and never waits. The baselines of [`model::Transfer`] run the same
//! selection but move the rows from the host (CPU gather + one memcpy; one memcpy per row),
//! which needs the fetch list on the host: a copy back and a wait per layer.
//!
//! # Choices where the method is open
//!
//! - GQA: miss if any head of the group misses (above).
//! - The ring: the newest `recent` tokens are always attended and never selected, so a hit
//!   still sees the tokens decoded since its selection.
//! - The selection scores the whole capacity every step, masked past the length, so that one
//!   graph serves every length; the top-k runs for hit heads too (its result is ignored),
//!   which costs GPU time but no PCIe traffic.
//! - Importance `s_h` and the query drift of the fidelity runs: see [`fidelity`].

pub mod checks;
pub mod demo;
pub mod fidelity;
pub mod kernels;
pub mod model;
pub mod reference;
pub mod speed;
