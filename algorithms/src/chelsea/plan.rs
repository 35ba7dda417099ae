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

/// The rounds that take a chunk from `chunk` entries down to `keep` (`1 ≤ keep ≤ chunk`):
/// each removes `min(current / 2, current − keep)`, so 50% takes one round, 75% two and
/// 80% three. Empty when `keep == chunk`.
pub fn rounds(chunk: u32, keep: u32) -> Vec<Round> {
    let mut out = Vec::new();
    let mut m = chunk;
    while m > keep.max(1) {
        let merges = (m / 2).min(m - keep);
        out.push(Round { before: m, merges });
        m -= merges;
    }
    out
}

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
