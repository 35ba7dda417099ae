//! Timing of Chelsea against dense attention in the same run: what the `chelsea` bench and
//! `kiln demo` report. Compression throughput (and its share of a causal prefill attention
//! of the same length, our `Prefill`), and decode attention over the merged cache against
//! dense flash-decoding over the full cache.

use half::bf16;
use kiln::prelude::Float;
use kiln::tune::{Store, TuneOptions};
use kiln::{time, Device, DeviceBuffer, RuntimeError};

use super::compress::{
    ChelseaCache, ChelseaConfig, ChelseaError, Similarity, DEFAULT_ROUND_FRACTION,
};
use crate::attention::decode::{time_dense, DecodeShape};
use crate::attention::prefill::{Prefill, PrefillCall};
use crate::workload::Rng;

/// Bytes a timed set of inputs spans at least: copies rotate until then, so the measured
/// runs read from device memory, not from the L2 (50 MiB on H100, 60 MiB on H200).
pub const ROTATE_BYTES: usize = 256 << 20;

/// The settings of one measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpeedCase {
    /// Sequences.
    pub batch: u32,
    /// Cached tokens per sequence.
    pub seq: u32,
    /// Reduction of each chunk (0.8 for the headline).
    pub ratio: f64,
    /// Tokens per chunk.
    pub chunk: u32,
}

/// Median times in milliseconds and what they cover.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpeedRow {
    /// The case measured.
    pub case: SpeedCase,
    /// Entries per (sequence, KV head) after compression.
    pub entries: u32,
    /// Compressing the prefilled cache (all rounds, sinks and tail included).
    pub compress_ms: f64,
    /// Causal prefill attention over the same length (`Prefill`, same heads, bf16); `None`
    /// when not measured.
    pub prefill_ms: Option<f64>,
    /// Dense flash-decoding over the full cache.
    pub dense_ms: f64,
    /// Flash-decoding over the merged cache with the `log n` bias.
    pub merged_ms: f64,
    /// The same without the bias.
    pub merged_plain_ms: f64,
    /// Keys per split of the merged decode (with the bias) and of the dense one, as tuned.
    pub splits: (u32, u32),
    /// Appending one token to the merged cache, median (three row-copy launches of a few KiB:
    /// about the fixed cost of a launch as these timings see it, since each timed run starts
    /// on an idle device). Every `chunk`-th append also compresses a chunk, which the median
    /// does not show.
    pub append_ms: f64,
}

impl SpeedRow {
    /// Tokens compressed per second.
    pub fn tokens_per_s(&self) -> f64 {
        self.case.batch as f64 * self.case.seq as f64 / (self.compress_ms * 1e-3)
    }

    /// Compression time as a share of prefill attention time.
    pub fn prefill_share(&self) -> Option<f64> {
        self.prefill_ms.map(|p| self.compress_ms / p)
    }

    /// How many times faster decode over the merged cache (with the bias) is than dense.
    pub fn speedup(&self) -> f64 {
        self.dense_ms / self.merged_ms
    }
}

/// Heads 32 / 8, D = 128, bf16, sink 4, recent 64: times compression, decode over the
/// result and dense decode, each a median of `reps` after `warmup` runs, inputs rotated
/// over copies spanning [`ROTATE_BYTES`]; the prefill with `prefill_reps` (`None`: skip).
/// Both decodes first tune their split size afresh (`FlashDecode::tune_rotating`, kept in
/// the tuning store), timing over the same rotating copies as the measurement: the merged
/// cache is about a fifth as long, and a split size picked for the dense length would leave
/// the card half idle; one picked on a cache left in the L2 would favour the L2.
pub fn measure(
    device: &Device,
    case: SpeedCase,
    (warmup, reps): (usize, usize),
    prefill_reps: Option<(usize, usize)>,
    seed: u64,
) -> Result<SpeedRow, ChelseaError> {
    let (heads, hk, d) = (32u32, 8u32, 128u32);
    let (b, s) = (case.batch, case.seq);
    let mut rng = Rng::new(seed);
    let kv_len = b as usize * s as usize * hk as usize * d as usize;
    let copies = ROTATE_BYTES.div_ceil(2 * kv_len * 2).max(1);
    let mut random = |n: usize| -> Result<DeviceBuffer<bf16>, RuntimeError> {
        // a random block repeated: the timings do not depend on the values
        let block: Vec<bf16> = (0..n.min(1 << 22))
            .map(|_| bf16::from_f32(rng.normal()))
            .collect();
        let all: Vec<bf16> = block.iter().copied().cycle().take(n).collect();
        device.upload(&all)
    };
    let mut dense = Vec::with_capacity(copies);
    for _ in 0..copies {
        dense.push((random(kv_len)?, random(kv_len)?));
    }
    let q = random((b * heads * d) as usize)?;
    let cfg = ChelseaConfig {
        batch: b,
        heads,
        kv_heads: hk,
        dim: d,
        chunk: case.chunk,
        ratio: case.ratio,
        sink: 4,
        recent: 64,
        capacity: s,
        round_fraction: DEFAULT_ROUND_FRACTION,
        similarity: Similarity::default(),
    };
    let mut first = ChelseaCache::<bf16>::new(device, cfg)?;
    first.compress(&dense[0].0, &dense[0].1, s)?;
    let entries = first.len();
    let cfg = ChelseaConfig {
        capacity: entries,
        ..cfg
    };
    // the merged caches rotate too: as many as span ROTATE_BYTES
    let merged_bytes = 4 * (b * entries * hk * d) as usize;
    let merged_copies = ROTATE_BYTES
        .div_ceil(merged_bytes)
        .clamp(1, copies.max(1) * 8);
    let mut caches = Vec::with_capacity(merged_copies);
    for i in 0..merged_copies {
        let mut c = ChelseaCache::<bf16>::new(device, cfg)?;
        let (k, v) = &dense[i % copies];
        c.compress(k, v, s)?;
        caches.push(c);
    }
    drop(first);
    let mut out: DeviceBuffer<bf16> = device.zeros((b * heads * d) as usize)?;
    let mut lse: DeviceBuffer<f32> = device.zeros((b * heads) as usize)?;
    let median = |r: Result<kiln::Timing, RuntimeError>| r.map(|t| t.median_ms);
    // both decodes use tuned split sizes (the merged cache is far shorter than the dense one)
    // tuned afresh (a stored winner of another shape in the same bucket does not count), and
    // rotating over the caches as the timed runs do
    let options = TuneOptions {
        progress: false,
        force: true,
    };
    let (head, rest) = caches.split_first_mut().expect("at least one cache");
    head.tune_decode_rotating(rest, &q, &mut out, &mut lse, &options)?;
    let mut turn = 0usize;
    let compress_ms = median(time(device, warmup.min(2), reps.min(10), || {
        turn += 1;
        let (k, v) = &dense[turn % copies];
        caches[turn % merged_copies]
            .compress(k, v, s)
            .map_err(RuntimeError::from)
    }))?;
    // every cache answers once before the timing: its decodes look their tuned split size up
    // in the store on the first call (a decode loop pays that once, not every step)
    for c in caches.iter_mut() {
        for bias in [true, false] {
            c.attend(&q, &mut out, &mut lse, bias)?;
        }
    }
    let merged_split = caches[0].decode_split(true);
    let mut attend = |bias: bool| {
        let mut turn = 0usize;
        median(time(device, warmup, reps, || {
            turn += 1;
            caches[turn % merged_copies]
                .attend(&q, &mut out, &mut lse, bias)
                .map_err(RuntimeError::from)
        }))
    };
    let merged_ms = attend(true)?;
    let merged_plain_ms = attend(false)?;
    // appends go to a cache with room beyond the merged length: a raw chunk past the recent
    // window, the most an append can hold before it compresses
    let mut growing = ChelseaCache::<bf16>::new(
        device,
        ChelseaConfig {
            capacity: entries + cfg.chunk + cfg.recent,
            ..cfg
        },
    )?;
    growing.compress(&dense[0].0, &dense[0].1, s)?;
    let row = (b * hk * d) as usize;
    let (k_new, v_new) = (random(row)?, random(row)?);
    let append_ms = median(time(device, warmup, reps, || {
        growing.append(&k_new, &v_new).map_err(RuntimeError::from)
    }))?;
    drop(growing);
    let shape = DecodeShape {
        batch: b,
        heads,
        kv_heads: hk,
        seq: s,
        dim: d,
    };
    let scale = 1.0 / (d as f32).sqrt();
    let dense_caches: Vec<(&DeviceBuffer<bf16>, &DeviceBuffer<bf16>)> =
        dense.iter().map(|(k, v)| (k, v)).collect();
    let (dense_ms, dense_split) =
        time_dense(device, &shape, &q, &dense_caches, (warmup, reps), &options)?;
    drop(caches);
    let prefill_ms = match prefill_reps {
        None => None,
        Some((pw, pr)) => {
            // queries and outputs [B, H, S, D] (zeros: the work does not depend on the
            // values); keys and values are the cache's buffers, read as [B, H_kv, S, D]. A
            // batch whose queries pass 2^32 elements (what a Kiln kernel indexes) runs as
            // one call per sequence, the same work.
            let whole = (b * heads) as usize * s as usize * d as usize <= u32::MAX as usize;
            let per_call = if whole { b } else { 1 };
            let call = PrefillCall {
                batch: per_call,
                heads,
                kv_heads: hk,
                s_q: s,
                s_kv: s,
                dim: d,
                causal: true,
            };
            let n = (per_call * heads) as usize * s as usize * d as usize;
            let qp: DeviceBuffer<bf16> = device.zeros(n)?;
            let mut op: DeviceBuffer<bf16> = device.zeros(n)?;
            let mut lp: DeviceBuffer<f32> = device.zeros((per_call * heads * s) as usize)?;
            let single = if whole {
                None
            } else {
                let kv = (hk * s * d) as usize;
                Some((device.zeros::<bf16>(kv)?, device.zeros::<bf16>(kv)?))
            };
            let (k, v) = single
                .as_ref()
                .map_or((&dense[0].0, &dense[0].1), |(k, v)| (k, v));
            let prefill = Prefill::new(device, bf16::DTYPE, Store::default_location());
            Some(median(time(device, pw, pr, || {
                for _ in 0..b / per_call {
                    prefill
                        .run(&call, &qp, k, v, scale, &mut op, &mut lp, None)
                        .map_err(|e| RuntimeError::InvalidInput {
                            what: "prefill",
                            reason: e.to_string(),
                        })?;
                }
                Ok(())
            }))?)
        }
    };
    Ok(SpeedRow {
        case,
        entries,
        compress_ms,
        prefill_ms,
        dense_ms,
        merged_ms,
        merged_plain_ms,
        splits: (merged_split, dense_split),
        append_ms,
    })
}
