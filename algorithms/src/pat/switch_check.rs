//! PAT's switch checked end to end on the real decoder, on whichever device is present: 4
//! emulated ranks ([`DecoderConfig::small`]), or 4 GPUs (2 when only 2 or 3 are visible;
//! the checks' wider shape, [`check_config`]). A long-tail batch is generated under static
//! TP1×DP`n`, static TP`n` and adaptive runs that switch at PAT's first decision (the
//! profile of [`forcing_setup`] makes TP `n` ten times faster, so the rule always switches
//! there) by migration, by recompute and mixed (on the emulator only the mixed one, see
//! [`adaptive_matches_static`]): every run's tokens must equal the static
//! TP1×DP`n` run's — resharding and migration lose nothing — and every switch's peak extra
//! memory must stay within its stated bound.

use super::adaptive::{model_dims, requests, Driver, Groups, KvChoice, Policy, Request, RunRecord};
use super::checks::check_config;
use super::decoder::{DecoderConfig, DecoderWeights};
use super::predictor::Predictor;
use super::profile::{Card, ProfilePoint};
use super::reshard::KvPath;
use super::simulate::Setup;
use super::workload::LongTail;
use crate::verify::{ensure, ensure_eq, VerifyError};
use kiln::Device;

/// The batch: 8 sequences of prompts of 4, log-normal lengths of median 3 capped at 16 on
/// the emulator; 16 of 64, median 24, cap 96 on GPUs. Odd ids get prompts half as long (see
/// [`fixture`]), so contexts differ at the switch.
pub fn workload(gpu: bool) -> LongTail {
    if gpu {
        LongTail {
            sequences: 16,
            prompt: 64,
            median: 24.0,
            sigma: 1.0,
            max_len: 96,
            seed: 2,
        }
    } else {
        LongTail {
            sequences: 8,
            prompt: 4,
            median: 3.0,
            sigma: 1.0,
            max_len: 16,
            seed: 2,
        }
    }
}

/// PAT's setup with a profile in which TP `gpus` steps ten times faster than TP 1 (so the
/// rule switches at its first decision, step 3), the decoder's shape for the switch's
/// modelled cost.
pub fn forcing_setup(config: &DecoderConfig, gpus: u32, workload: LongTail) -> Setup {
    let mut points = Vec::new();
    for (tp, base) in [(1u32, 1.0), (gpus, 0.1)] {
        for batch in [1u32, 2, 4, 8, 16] {
            for context in [1u32, 256] {
                points.push(ProfilePoint {
                    tp,
                    batch,
                    context,
                    ms: base * (1.0 + 0.1 * batch as f64),
                });
            }
        }
    }
    Setup {
        model: model_dims(config),
        card: Card::h200(),
        gpus,
        predictor: Predictor::fit(&points).expect("a full grid"),
        workload,
        check_every: 3,
    }
}

/// Everything the runs share.
pub struct Fixture {
    /// Random weights.
    pub weights: DecoderWeights<half::bf16>,
    /// TP1×DP`n` and TP`n`×DP1's groups.
    pub groups: Groups,
    /// [`forcing_setup`].
    pub setup: Setup,
    /// The batch.
    pub requests: Vec<Request>,
}

/// The fixture on `dev`'s kind of device; `None` on a host with a single GPU.
pub fn fixture(dev: &Device) -> Result<Option<Fixture>, VerifyError> {
    let gpu = dev.is_gpu();
    let devices: Vec<Device> = if gpu {
        let n = match Device::gpu_count() {
            0 | 1 => return Ok(None),
            2 | 3 => 2,
            _ => 4,
        };
        (0..n).map(Device::gpu).collect::<Result<_, _>>()?
    } else {
        (0..4).map(|_| Device::emulator()).collect()
    };
    let config = check_config(dev);
    let n = devices.len();
    let w = workload(gpu);
    Ok(Some(Fixture {
        weights: DecoderWeights::random(&config, 41),
        groups: Groups::new(&devices, 1, n)?,
        setup: forcing_setup(&config, n as u32, w.clone()),
        requests: requests(&w, config.vocab, 42)
            .into_iter()
            .map(|mut r| {
                if r.id % 2 == 1 {
                    r.prompt.truncate(w.prompt / 2);
                }
                r
            })
            .collect(),
    }))
}

/// The mixed KV choice: at the switch (step 3) the odd ids hold `prompt / 2 + 3` context
/// tokens and are recomputed, the even ones `prompt + 3` and migrate.
pub fn mixed(f: &Fixture) -> KvChoice {
    KvChoice::RecomputeBelow(f.setup.workload.prompt + 2)
}

/// One run of the fixture's batch (poisoned switch buffers, flash-decoding split 128).
pub fn run(f: &Fixture, policy: Policy, kv: KvChoice) -> Result<RunRecord, VerifyError> {
    let driver = Driver {
        weights: &f.weights,
        groups: &f.groups,
        setup: &f.setup,
        kv,
        decode_chunk: 128,
        poison: true,
    };
    Ok(driver.run(policy, &f.requests)?)
}

/// See the module documentation. On the emulator only static TP1×DP4 and the mixed
/// adaptive run (the unit tests of `pat::adaptive` run the others there; the emulator is
/// slow). Says so and passes on a host with a single GPU (the switch needs two).
pub fn adaptive_matches_static(dev: &Device) -> Result<(), VerifyError> {
    let Some(f) = fixture(dev)? else {
        println!("pat switch: skipped, it needs 2 GPUs at least (1 visible)");
        return Ok(());
    };
    let base = run(&f, Policy::StaticFrom, KvChoice::CostModel)?;
    let mut kvs = vec![mixed(&f)];
    if dev.is_gpu() {
        let wide = run(&f, Policy::StaticTo, KvChoice::CostModel)?;
        ensure_eq!(
            wide.tokens,
            base.tokens,
            "static {} vs {}",
            wide.policy,
            base.policy
        );
        kvs.extend([
            KvChoice::All(KvPath::Migrate),
            KvChoice::All(KvPath::Recompute),
        ]);
    }
    for kv in kvs {
        let r = run(&f, Policy::Adaptive, kv)?;
        let s = r
            .switch
            .as_ref()
            .ok_or_else(|| VerifyError::Mismatch(format!("{kv:?}: the rule never switched")))?;
        let m = &s.measured;
        println!(
            "pat switch {kv:?} at step {}: {:.2} ms = weights {:.2} + migrate {:.2} ({} seqs, {} B to peers) + recompute {:.2} ({} seqs, {} prefills chose another token); peak extra {} B of a bound of {} B",
            s.step,
            m.total_ms(),
            m.weights_ms,
            m.migrate_ms,
            m.migrated,
            m.kv_bytes_to_peers,
            m.recompute_ms,
            m.recomputed,
            m.recompute_disagreed,
            m.peak_extra_bytes,
            m.bound_bytes
        );
        ensure!(
            m.peak_extra_bytes <= m.bound_bytes,
            "{kv:?}: peak extra memory {} B over the bound {} B",
            m.peak_extra_bytes,
            m.bound_bytes
        );
        ensure_eq!(m.weight_bytes_to_peers, 0, "weights moved growing TP");
        ensure_eq!(
            r.tokens,
            base.tokens,
            "{} ({kv:?}) vs {}",
            r.policy,
            base.policy
        );
    }
    Ok(())
}
