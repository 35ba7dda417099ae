//! Chelsea: KV-cache merging by chunked soft matching, for decoding. After prefill (and
//! again each time decoding has appended a chunk), every chunk of `c` tokens of every
//! (sequence, KV head) is split by position into A (even) and B (odd); each a finds its
//! most similar b (cosine of the keys), the best-matched a's merge into their b (keys and
//! values averaged by size, sizes added) and the chunk is compacted. Attention over the
//! merged cache may add `ln n_j` to the logit of an entry that stands for `n_j` tokens.
//!
//! # Design choices
//!
//! - **Rounds.** A round removes at most half of a chunk (only a's merge), and at most
//!   the share [`compress::ChelseaConfig::round_fraction`] of it (default ⅛). To reach a
//!   target reduction, a chunk keeps `keep = ⌈c·(1 − ratio)⌉` entries and each round removes
//!   `min(max(1, ⌊current·fraction⌋), current − keep)` ([`plan::rounds`]): at ¼, 50% is
//!   three rounds, 75% five, 80% six (c = 64: 64 → 48 → 36 → 27 → 21 → 16 → 13); at ⅛ and
//!   c = 128, six, eleven and thirteen. Merging only the most similar pairs before
//!   re-partitioning keeps dissimilar tokens (heavy hitters among them) apart, where ½
//!   forces every a to merge at 50%. Chunks keep their original boundaries: the rounds
//!   re-partition each chunk's current entries (A = even positions again), so one launch of
//!   [`kernels::chelsea_round`] per round covers every chunk, with the same entry count per
//!   chunk and hence per (sequence, KV head).
//! - **Similarity.** Plain cosine of the keys by default; cosine of the keys standardised
//!   per channel over the chunk's current entries ([`reference::Similarity::Standardised`])
//!   is a setting. Real K caches (and the planted workload) have a few large-magnitude
//!   channels shared by every key; they dominate the norm, so plain cosine barely separates
//!   tokens (0.53 for a random pair, 0.78 for the best in a chunk of 64) and standardising
//!   weighs each channel by how much it varies in the chunk. Measured, though, plain cosine
//!   with small rounds (⅛) and chunks of 128 beats keeping recent or evenly spaced tokens at
//!   50% and 80% on both the demo shape and S = 32K, which no standardised setting with
//!   chunks of 64–128 does ([`plan::DEFAULT_ROUND_FRACTION`] has the numbers).
//! - **Exempt tokens.** The first `sink` tokens and the last `recent` are never merged;
//!   neither is a partial last chunk (it waits, raw, until decoding completes it). Every
//!   (sequence, KV head) has the same length, so the compressed cache is again
//!   `[B, S', H_kv, D]` with sizes `[B, S', H_kv]` (f32), and flash-decoding runs on it
//!   unchanged.
//! - **Incremental.** Decode tokens are appended raw; when the raw tail beyond the recent
//!   window holds a full chunk, that chunk is compressed on its own and the rest of the
//!   tail moves up behind it ([`compress::ChelseaCache::append`]).
//! - **Similarity on the tensor cores.** Keys are bf16/f16 (standardised keys are stored as
//!   the element type too), so their products are exact in
//!   f32 and `mma.sync` with f32 accumulation gives the f32 similarity up to the order of the
//!   additions (the float64 reference agrees up to f32 rounding: a near-tie may go the other
//!   way), with the b's streamed through shared memory 64 at a time (never a chunk's matrix).
//!   Merges accumulate in f32 and are stored back as the element type after each round.
//! - **Ties.** An a's best b: the lower b. The top-r: the lower a.
//! - **Bias.** `FlashDecode::with_counts` adds `ln n_j` (4 more bytes read per key); the
//!   dense path is unchanged.

pub mod checks;
pub mod compress;
pub mod demo;
pub mod fidelity;
pub mod kernels;
pub mod plan;
pub mod reference;
pub mod speed;
