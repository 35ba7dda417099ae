//! Host-side planning of a compression: how many entries a chunk keeps for a target ratio,
//! the rounds that get it there, and where the sink, chunk and tail rows of a cache lie.

/// One round of soft matching on every chunk: `before` entries per chunk, `merges` of them
/// (a's) merged into others, so `before − merges` remain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    /// Entries per chunk when the round starts.
    pub before: u32,
    /// Entries per chunk the round removes (at most `before / 2`: only a's merge).
    pub merges: u32,
}

impl Round {
    /// Entries per chunk after the round.
    pub fn after(&self) -> u32 {
        self.before - self.merges
    }
}

/// Entries a chunk of `chunk` tokens keeps at reduction `ratio` (0 ≤ ratio < 1): the
/// smallest count whose reduction does not exceed `ratio` by more than rounding,
/// `⌈chunk·(1 − ratio)⌉`, at least 1.
pub fn keep_for(chunk: u32, ratio: f64) -> u32 {
    // a hair below the exact product, so 64·(1 − 0.75) = 16 even where it rounds to 16.000001
    ((chunk as f64 * (1.0 - ratio)) - 1e-9).ceil().max(1.0) as u32
}

/// The rounds that take a chunk from `chunk` entries down to `keep` (`1 ≤ keep ≤ chunk`)
/// when a round removes at most the share `fraction` of the chunk's current entries
/// (`0 < fraction ≤ ½`; a round can never remove more than half, since only a's merge):
/// each removes `min(max(1, ⌊current·fraction⌋), current − keep)`. With `fraction = ½`,
/// 50% takes one round, 75% two and 80% three; with ¼ three, five and six; with ⅛ (the
/// default, [`DEFAULT_ROUND_FRACTION`]) six, eleven and thirteen at c = 128. Empty when `keep == chunk`.
pub fn rounds(chunk: u32, keep: u32, fraction: f64) -> Vec<Round> {
    let fraction = fraction.clamp(0.0, 0.5);
    let mut out = Vec::new();
    let mut m = chunk;
    while m > keep.max(1) {
        let step = ((m as f64 * fraction).floor() as u32).clamp(1, m / 2);
        let merges = step.min(m - keep);
        out.push(Round { before: m, merges });
        m -= merges;
    }
    out
}

/// The share of a chunk's entries a round removes at most, by default: ⅛. Chosen with the
/// float64 reference (`chelsea_setting_sweep` in `fidelity.rs`; output error against dense
/// attention with the `log n` bias, sink 4) over chunks 64–512, recent 16/64, shares
/// ⅛ / ¼ / ½ and both similarities, beside keeping the most recent tokens and keeping evenly
/// spaced ones at the same reduction. Plain cosine with ⅛ and chunks of 128 is the one
/// setting that beats both baselines at 50% and 80% on both workloads measured: b1 h8/2
/// S = 1024 D = 64 (the emulator demo shape, seed 0) 0.05 / 0.36 against recent 0.17 / 0.39
/// and evenly spaced 0.19 / 1.11, and S = 32K D = 64: 0.14 / 0.53 against 0.31 / 0.71 and
/// 0.35 / 0.65 (chunks of 256 there: 0.07 / 0.47; of 512: 0.08 / 0.25). Over more seeds:
/// at S = 32K seeds 1 and 2 also beat both (0.10 / 0.42 and 0.44 / 0.59); on the demo
/// shape 7 of seeds 0–9 beat both, the mean over the ten being 0.29 / 0.65 against recent
/// 0.57 / 0.76 and evenly spaced 0.69 / 1.03 (seeds 4, 5 and 8 lose to recent: 1K tokens
/// leave few similar keys per chunk), the best of every setting swept. On the GPU's b1
/// h32/8 S = 32K D = 128 workload (`bench-results/h200-2026-12-03-decode/bench-chelsea.log`,
/// with the `log n` bias, 50 / 75 / 80%) chunks of 512 give 0.22 / 0.50 / 0.56 against
/// recent 0.57 / 0.85 / 0.96 and evenly spaced 0.54 / 0.80 / 1.09, where chunks of 256
/// lose to both at 80% (0.97) and chunks of 64 to recent at 50%: use 512 on long caches.
/// The former default
/// (¼, standardised) lost to keeping recent tokens at 50% on the demo shape (0.169 against
/// 0.168) and at 80% on S = 32K with chunks of 64–128 (0.70–0.91 against 0.71). Smaller
/// shares let only the most similar pairs of a round merge before the chunk is
/// re-partitioned, at twice the rounds of ¼. Sweeps: `bench-results/cpu-fidelity-2026-12-03/`.
pub const DEFAULT_ROUND_FRACTION: f64 = 0.125;

/// Where the rows of a cache of `len` raw tokens go when it is compressed: `sink` tokens
/// exempt at the start, `chunks` full chunks, then an uncompressed tail of the partial last
/// chunk and the `recent` most recent tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Leading tokens kept as they are (`min(sink, len)`).
    pub sink: u32,
    /// Full chunks compressed.
    pub chunks: u32,
    /// Tokens after the chunks, kept as they are (partial chunk + recent window).
    pub tail: u32,
}

impl Layout {
    /// The layout of `len` tokens with chunks of `chunk`, `sink` and `recent` exempt.
    pub fn of(len: u32, chunk: u32, sink: u32, recent: u32) -> Layout {
        let sink = sink.min(len);
        let middle = (len - sink).saturating_sub(recent);
        let chunks = middle / chunk.max(1);
        Layout {
            sink,
            chunks,
            tail: len - sink - chunks * chunk,
        }
    }

    /// Entries after compression to `keep` per chunk.
    pub fn compressed_len(&self, keep: u32) -> u32 {
        self.sink + self.chunks * keep + self.tail
    }
}

/// The per-chunk reduction (for [`keep_for`] and `ChelseaConfig::ratio`) that brings a cache
/// of `len` tokens, laid out as [`Layout::of`], to the *overall* reduction `target`: at most
/// `⌊(1 − target)·len⌋` entries, the exempt sink and tail tokens counted. Returns it with the
/// overall reduction it reaches, which is below `target` only when keeping one entry per chunk
/// is still too many (or there are no chunks): the shortfall a caller should report.
pub fn chunk_ratio_for(len: u32, chunk: u32, sink: u32, recent: u32, target: f64) -> (f64, f64) {
    let lay = Layout::of(len, chunk, sink, recent);
    let chunk = chunk.max(1);
    if lay.chunks == 0 || len == 0 {
        return (0.0, 0.0);
    }
    let allowed = ((1.0 - target.clamp(0.0, 1.0)) * len as f64 + 1e-9).floor() as i64;
    let fixed = (lay.sink + lay.tail) as i64;
    let keep = ((allowed - fixed) / lay.chunks as i64).clamp(1, chunk as i64) as u32;
    let reached = 1.0 - lay.compressed_len(keep) as f64 / len as f64;
    (1.0 - keep as f64 / chunk as f64, reached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ratio_reaches_the_overall_target_when_it_can() {
        // 1024 tokens, chunks of 64, sink 4, recent 64: 14 chunks, 4 + 124 tokens exempt
        for target in [0.5, 0.75, 0.8] {
            let (ratio, reached) = chunk_ratio_for(1024, 64, 4, 64, target);
            let keep = keep_for(64, ratio);
            let lay = Layout::of(1024, 64, 4, 64);
            assert_eq!(lay.compressed_len(keep) as f64, (1.0 - reached) * 1024.0);
            assert!(reached >= target - 1e-12, "{target}: reached {reached}");
            // one more entry per chunk would miss the target
            assert!(lay.compressed_len(keep + 1) as f64 > (1.0 - target) * 1024.0);
        }
        // 90% of 1024 keeps at most 102 entries, fewer than the 128 exempt: a shortfall,
        // with one entry per chunk
        let (ratio, reached) = chunk_ratio_for(1024, 64, 4, 64, 0.9);
        assert_eq!(keep_for(64, ratio), 1);
        assert!(reached < 0.9);
        assert_eq!(reached, 1.0 - (128.0 + 14.0) / 1024.0);
        // no chunk to compress: nothing to reduce
        assert_eq!(chunk_ratio_for(100, 64, 4, 64, 0.5), (0.0, 0.0));
    }
}
