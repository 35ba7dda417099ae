//! Where sparse decoding starts to pay: the cache length below which a [`HataLayer`] step
//! decodes dense, measured on the device for one layer shape and budget and kept with the
//! autotuner's results, so that [`HataLayer::new`] starts from the measured crossover instead
//! of [`DEFAULT_DENSE_BELOW_TOKENS`].
//!
//! The search times whole steps (graph replays, as a user runs them) of a fresh layer at each
//! candidate length, decoding sparse and decoding dense, each with its attention tuned first.
//! The crossover is the shortest length from which sparse is at least as fast at every longer
//! length tried ([`crossover_from`]); below it the layer decodes dense.

use half::bf16;
use kiln::tune::{Entry, Point, Store, Trial, TuneKey, TuneOptions};
use kiln::{time, Device, RuntimeError};

use super::decoder::{Budget, HataConfig, HataError, HataLayer, DEFAULT_DENSE_BELOW_TOKENS};
use super::speed::random_block;
use crate::workload::Rng;

/// The tuning key of a shape's crossover: the layer's element type (bf16), heads, KV heads,
/// head dimension, code bits and budget, on this device; batch in the shape dimensions.
pub fn crossover_key(device: &Device, cfg: &HataConfig) -> TuneKey {
    let budget = match cfg.budget {
        Budget::Count(k) => format!("count {k}"),
        Budget::Ratio(r) => format!("ratio {r}"),
    };
    TuneKey::new(
        &format!(
            "kiln_algorithms::hata::HataLayer dense crossover [T=bf16, H={}, H_kv={}, D={}, RBIT={}, budget {budget}, norms {}]",
            cfg.heads, cfg.kv_heads, cfg.dim, cfg.rbit, cfg.use_norms as u8
        ),
        &device.name(),
        &device.arch().sm_name(),
        &[cfg.batch as u64],
    )
}

/// The stored crossover (cached tokens per sequence) for `cfg`'s shape on `device`, if one
/// was measured.
pub fn stored_crossover(device: &Device, cfg: &HataConfig, store: &Store) -> Option<u32> {
    store
        .lookup(&crossover_key(device, cfg))
        .map(|e| e.winner.get("DENSE_BELOW").clamp(0, u32::MAX as i64) as u32)
}

/// The default crossover of a batch of `batch` sequences: [`DEFAULT_DENSE_BELOW_TOKENS`]
/// over the batch.
pub fn default_crossover(batch: u32) -> u32 {
    DEFAULT_DENSE_BELOW_TOKENS.div_ceil(batch.max(1))
}

/// Step times at one length: `(length, sparse ms, dense ms)`.
pub type LengthTimes = (u32, f64, f64);

/// The crossover from step times at ascending lengths: the shortest length from which the
/// sparse step is at least as fast as the dense one at it and at every longer length, or
/// `u32::MAX` (always dense) when sparse loses at the longest. An empty list gives `None`.
pub fn crossover_from(times: &[LengthTimes]) -> Option<u32> {
    let mut at = u32::MAX;
    for &(len, sparse, dense) in times.iter().rev() {
        if sparse <= dense {
            at = len;
        } else {
            break;
        }
    }
    (!times.is_empty()).then_some(at)
}

/// Measures the crossover of `cfg`'s shape (its `capacity` and `dense` are ignored) at the
/// cached lengths `lengths` (tokens per sequence, each at least 1), each step time a median of
/// `reps` graph replays after `warmup`, on random data and hash weights; stores it under
/// [`crossover_key`] in `store` (layers made later on this device start from it) and returns
/// the entry (winner `DENSE_BELOW`; one trial per length and mode, `SPARSE` 1 or 0).
pub fn tune_crossover(
    device: &Device,
    cfg: HataConfig,
    lengths: &[u32],
    (warmup, reps): (usize, usize),
    store: &Store,
) -> Result<Entry, HataError> {
    let mut lengths = lengths.to_vec();
    lengths.sort_unstable();
    lengths.dedup();
    if lengths.is_empty() || lengths[0] == 0 {
        return Err(HataError::Config(
            "the crossover search needs lengths of at least one token".into(),
        ));
    }
    let steps = 2 * (warmup + reps) as u32 + 2;
    let mut rng = Rng::new(17);
    let mut random = |n: usize| random_block(&mut rng, n);
    let (b, h, hk, d) = (
        cfg.batch as usize,
        cfg.heads as usize,
        cfg.kv_heads as usize,
        cfg.dim as usize,
    );
    let weights: Vec<f32> = random(hk * d * cfg.rbit as usize)
        .iter()
        .map(|x| x.to_f32())
        .collect();
    let q = device.upload(&random(b * h * d))?;
    let k_new = device.upload(&random(b * hk * d))?;
    let mut out = device.zeros::<bf16>(b * h * d)?;
    let mut lse = device.zeros::<f32>(b * h)?;
    let tuning = TuneOptions {
        progress: false,
        force: true,
    };
    let mut times: Vec<LengthTimes> = Vec::new();
    let mut trials = Vec::new();
    for &len in &lengths {
        let capacity = len.checked_add(steps).ok_or_else(|| {
            HataError::Config(format!(
                "a crossover length of {len} tokens leaves no room for the timed steps"
            ))
        })?;
        let layer_cfg = HataConfig {
            capacity,
            dense: false,
            ..cfg
        };
        let kv = device.upload(&random(b * len as usize * hk * d))?;
        let mut per_mode = [0.0f64; 2];
        for (i, sparse) in [true, false].into_iter().enumerate() {
            let mut layer = HataLayer::<bf16>::new(device, layer_cfg, &weights)?;
            layer.set_dense_below(if sparse { 0 } else { u32::MAX });
            layer.prefill(&kv, &kv, len)?;
            if sparse && layer.is_sparse() {
                layer.score(&q)?;
                layer.select()?;
            }
            layer.tune_attend(&q, &mut out, &mut lse, &tuning)?;
            let t = time(device, warmup, reps, || {
                layer
                    .step(&q, &k_new, &k_new, &mut out, &mut lse)
                    .map_err(|e| match e {
                        HataError::Runtime(r) => r,
                        other => RuntimeError::InvalidInput {
                            what: "hata crossover step",
                            reason: other.to_string(),
                        },
                    })
            })?;
            per_mode[i] = t.median_ms;
            let point = Point(
                [
                    ("LEN".to_string(), len as i64),
                    ("SPARSE".to_string(), sparse as i64),
                ]
                .into_iter()
                .collect(),
            );
            trials.push(Trial {
                point,
                outcome: Ok(t.median_ms),
            });
        }
        times.push((len, per_mode[0], per_mode[1]));
    }
    let at = crossover_from(&times).unwrap_or(u32::MAX);
    let winner = Point(
        [("DENSE_BELOW".to_string(), at as i64)]
            .into_iter()
            .collect(),
    );
    // the sparse step at the crossover, or (always dense) the dense step at the longest
    // length; finite, as the store's JSON needs
    let winner_ms = times
        .iter()
        .find(|t| t.0 == at)
        .map_or(times[times.len() - 1].2, |t| t.1);
    let entry = Entry {
        key: crossover_key(device, &cfg),
        winner,
        winner_ms,
        trials,
    };
    store.save(&entry)?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crossover_is_where_sparse_wins_from_then_on() {
        let t = |v: &[(u32, f64, f64)]| crossover_from(v);
        assert_eq!(t(&[]), None);
        assert_eq!(
            t(&[(1024, 2.0, 1.0), (4096, 1.0, 1.5), (8192, 1.0, 3.0)]),
            Some(4096)
        );
        // a win at a short length does not count when a longer one loses again
        assert_eq!(
            t(&[(1024, 0.5, 1.0), (4096, 2.0, 1.5), (8192, 1.0, 3.0)]),
            Some(8192)
        );
        assert_eq!(t(&[(1024, 2.0, 1.0), (4096, 2.0, 1.5)]), Some(u32::MAX));
        assert_eq!(t(&[(1024, 1.0, 1.0)]), Some(1024));
    }

    #[test]
    fn a_search_stores_the_crossover_its_trials_give() {
        let dev = Device::emulator();
        let cfg = HataConfig {
            batch: 1,
            heads: 4,
            kv_heads: 2,
            dim: 64,
            rbit: 128,
            capacity: 0,
            budget: Budget::Count(8),
            sink: 2,
            recent: 4,
            use_norms: true,
            center_keys: true,
            dense: false,
        };
        let dir = std::env::temp_dir().join(format!("kiln-crossover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::in_dir(Some(&dir));
        let entry = tune_crossover(&dev, cfg, &[64, 32], (1, 2), &store).unwrap();
        // one trial per length and mode, ascending lengths
        let times: Vec<LengthTimes> = entry
            .trials
            .chunks(2)
            .map(|p| {
                assert_eq!(p[0].point.get("LEN"), p[1].point.get("LEN"));
                assert_eq!((p[0].point.get("SPARSE"), p[1].point.get("SPARSE")), (1, 0));
                let ms = |t: &Trial| *t.outcome.as_ref().unwrap();
                (p[0].point.get("LEN") as u32, ms(&p[0]), ms(&p[1]))
            })
            .collect();
        assert_eq!(times.iter().map(|t| t.0).collect::<Vec<_>>(), vec![32, 64]);
        let want = crossover_from(&times).unwrap();
        assert_eq!(entry.winner.get("DENSE_BELOW"), want as i64);
        assert_eq!(stored_crossover(&dev, &cfg, &store), Some(want));
        // another budget is another shape: nothing stored for it
        let other = HataConfig {
            budget: Budget::Count(16),
            ..cfg
        };
        assert_eq!(stored_crossover(&dev, &other, &store), None);
        let e = tune_crossover(&dev, cfg, &[], (1, 2), &store).unwrap_err();
        assert!(e.to_string().contains("at least one token"), "{e}");
        let e = tune_crossover(&dev, cfg, &[u32::MAX], (1, 2), &store).unwrap_err();
        assert!(e.to_string().contains("no room"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
