//! Chelsea: KV-cache merging by chunked soft matching, for decoding. After prefill (and
//! again each time decoding has appended a chunk), every chunk of `c` tokens of every
//! (sequence, KV head) is split by position into A (even) and B (odd); each a finds its
//! most similar b (cosine of the keys), the best-matched a's merge into their b (keys and
//! values averaged by size, sizes added) and the chunk is compacted. Attention over the
//! merged cache may add `ln n_j` to the logit of an entry that stands for `n_j` tokens.
//!
//! # Design choices
//!
//! - **Rounds.** A round removes at most half of a chunk (only a's merge). To reach a
//!   target reduction, a chunk keeps `keep = ⌈c·(1 − ratio)⌉` entries and each round removes
//!   `min(current / 2, current − keep)` ([`plan::rounds`]): 50% is one round, 75% two, 80%
//!   three (c = 64: 64 → 32 → 16 → 13 entries). Chunks keep their original boundaries: the
//!   rounds re-partition each chunk's current entries (A = even positions again), so one
//!   launch of [`kernels::chelsea_round`] per round covers every chunk, with the same entry
//!   count per chunk and hence per (sequence, KV head).
//! - **Exempt tokens.** The first `sink` tokens and the last `recent` are never merged;
//!   neither is a partial last chunk (it waits, raw, until decoding completes it). Every
//!   (sequence, KV head) has the same length, so the compressed cache is again
//!   `[B, S', H_kv, D]` with sizes `[B, S', H_kv]` (f32), and flash-decoding runs on it
//!   unchanged.
//! - **Incremental.** Decode tokens are appended raw; when the raw tail beyond the recent
//!   window holds a full chunk, that chunk is compressed on its own and the rest of the
//!   tail moves up behind it ([`compress::ChelseaCache::append`]).
//! - **Similarity on the tensor cores.** Keys are bf16/f16, so their products are exact in
//!   f32: `mma.sync` with f32 accumulation gives the same similarity a SIMT f32 loop would,
//!   with the b's streamed through shared memory 64 at a time (never a chunk's matrix).
//!   Merges accumulate in f32 and are stored back as the element type after each round.
//! - **Ties.** An a's best b: the lower b. The top-r: the lower a.
//! - **Bias.** `FlashDecode::with_counts` adds `ln n_j` (4 more bytes read per key); the
//!   dense path is unchanged.

pub mod compress;
pub mod fidelity;
pub mod kernels;
pub mod plan;
pub mod reference;
pub mod speed;
