//! Timing of HATA's decode step against dense flash-decoding on the same cache: what the
//! `hata` bench and `kiln demo` report.

use half::bf16;
use kiln::tune::TuneOptions;
use kiln::{time, Device, DeviceBuffer, RuntimeError};

use super::decoder::{Budget, HataConfig, HataError, HataLayer};
use crate::attention::decode::{time_dense, DecodeShape};
use crate::workload::Rng;

/// Median times in milliseconds of one decode step's parts, of whole steps, and of dense
/// decoding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepTimes {
    /// Hash the query heads and score every cached key.
    pub score: f64,
    /// Top-k of the scores.
    pub select: f64,
    /// Flash-decoding over the selected keys.
    pub attend: f64,
    /// Score, select and attend launched one by one (the append apart).
    pub step: f64,
    /// Appending the new token (hash of one key per KV head and the copy into the cache).
    pub append: f64,
    /// A whole sparse step (append included) launched kernel by kernel.
    pub eager_step: f64,
    /// The same whole sparse step as one graph replay.
    pub graph_step: f64,
    /// [`HataLayer::step`] as a user calls it: the graph-captured sparse step, or, below the
    /// default dense crossover, the append and dense decoding.
    pub layer_step: f64,
    /// Whether the layer's own choice at this shape was to decode dense.
    pub layer_dense: bool,
    /// Dense flash-decoding over the whole cache (no append).
    pub dense: f64,
}

impl StepTimes {
    /// How many times faster than dense decoding a user's step is (its append included).
    pub fn speedup(&self) -> f64 {
        self.dense / self.layer_step
    }

    /// How many times faster than dense decoding the sparse graph step is, wherever it
    /// would be chosen.
    pub fn sparse_speedup(&self) -> f64 {
        self.dense / self.graph_step
    }
}

fn as_runtime(e: HataError) -> RuntimeError {
    match e {
        HataError::Runtime(r) => r,
        other => RuntimeError::InvalidInput {
            what: "hata step",
            reason: other.to_string(),
        },
    }
}

/// The layer the speed measurements time: heads 32/8, D = 128, rbit 128, sink 16, recent 64,
/// norm-weighted scores, centred keys, with `batch` sequences of room for `capacity` tokens.
pub fn bench_config(batch: u32, capacity: u32, budget: Budget) -> HataConfig {
    HataConfig {
        batch,
        heads: 32,
        kv_heads: 8,
        dim: 128,
        rbit: 128,
        capacity,
        budget,
        sink: 16,
        recent: 64,
        use_norms: true,
        center_keys: true,
        dense: false,
    }
}

/// `n` random normal bf16 values, a block of at most 4M repeated: a timing does not depend
/// on the values, and a long cache fills fast.
pub fn random_block(rng: &mut Rng, n: usize) -> Vec<bf16> {
    let block: Vec<bf16> = (0..n.min(1 << 22))
        .map(|_| bf16::from_f32(rng.normal()))
        .collect();
    block.iter().copied().cycle().take(n).collect()
}

/// Times a step of `batch` sequences of `seq` cached tokens (heads 32/8, D = 128, rbit 128,
/// bf16, random data and hash weights; sink 16, recent 64), each part a median of `reps`
/// after `warmup` runs, with dense flash-decoding over the same cache in the same run. The
/// whole steps grow the cache by a few tokens (`4 · (warmup + reps)` in all). The
/// split sizes of the sparse attention, of the user's layer where it decodes dense
/// ([`HataLayer::tune_attend`]) and of the dense baseline ([`time_dense`]) are tuned first,
/// afresh for this shape.
pub fn measure(
    device: &Device,
    batch: u32,
    seq: u32,
    budget: Budget,
    (warmup, reps): (usize, usize),
    seed: u64,
) -> Result<StepTimes, HataError> {
    let cfg = bench_config(batch, seq + 4 * (warmup + reps) as u32 + 1, budget);
    let (hk, d, rbit) = (cfg.kv_heads, cfg.dim, cfg.rbit);
    let mut rng = Rng::new(seed);
    let mut random = |n: usize| random_block(&mut rng, n);
    let weights: Vec<f32> = random((hk * d * rbit) as usize)
        .iter()
        .map(|x| x.to_f32())
        .collect();
    let mut layer = HataLayer::<bf16>::new(device, cfg, &weights)?;
    let kv_len = (batch * seq * hk * d) as usize;
    let k = device.upload(&random(kv_len))?;
    let v = device.upload(&random(kv_len))?;
    layer.prefill(&k, &v, seq)?;
    let q = device.upload(&random((batch * 32 * d) as usize))?;
    let k_new = device.upload(&random((batch * hk * d) as usize))?;
    let mut out: DeviceBuffer<bf16> = device.zeros((batch * 32 * d) as usize)?;
    let mut lse: DeviceBuffer<f32> = device.zeros((batch * 32) as usize)?;
    // the sparse step's parts are timed at every length (the crossover is for the user's layer)
    layer.set_dense_below(0);
    layer.score(&q)?;
    layer.select()?;
    // both decodes' split sizes tuned afresh for this shape (a stored winner of another shape
    // in the same bucket does not count)
    let tuning = TuneOptions {
        progress: false,
        force: true,
    };
    layer.tune_attend(&q, &mut out, &mut lse, &tuning)?;
    // the layer as a user makes it, its dense attention tuned where it decodes dense
    let mut user = HataLayer::<bf16>::new(device, cfg, &weights)?;
    user.prefill(&k, &v, seq)?;
    let layer_dense = !user.is_sparse();
    if layer_dense {
        user.tune_attend(&q, &mut out, &mut lse, &tuning)?;
    }
    let median = |r: Result<kiln::Timing, RuntimeError>| r.map(|t| t.median_ms);
    let step = median(time(device, warmup, reps, || {
        layer.score(&q).map_err(as_runtime)?;
        layer.select().map_err(as_runtime)?;
        layer.attend(&q, &mut out, &mut lse).map_err(as_runtime)
    }))?;
    let score = median(time(device, warmup, reps, || {
        layer.score(&q).map_err(as_runtime)
    }))?;
    let select = median(time(device, warmup, reps, || {
        layer.select().map_err(as_runtime)
    }))?;
    let attend = median(time(device, warmup, reps, || {
        layer.attend(&q, &mut out, &mut lse).map_err(as_runtime)
    }))?;
    let append = median(time(device, warmup, reps, || {
        layer.append(&k_new, &k_new).map_err(as_runtime)
    }))?;
    let mut whole_step = |layer: &mut HataLayer<bf16>| {
        median(time(device, warmup, reps, || {
            layer
                .step(&q, &k_new, &k_new, &mut out, &mut lse)
                .map_err(as_runtime)
        }))
    };
    layer.set_graphs(false);
    let eager_step = whole_step(&mut layer)?;
    layer.set_graphs(true);
    let graph_step = whole_step(&mut layer)?;
    let layer_step = whole_step(&mut user)?;
    let shape = DecodeShape {
        batch,
        heads: 32,
        kv_heads: hk,
        seq,
        dim: d,
    };
    let (dense, _) = time_dense(device, &shape, &q, &[(&k, &v)], (warmup, reps), &tuning)?;
    Ok(StepTimes {
        score,
        select,
        attend,
        step,
        append,
        eager_step,
        graph_step,
        layer_step,
        layer_dense,
        dense,
    })
}
