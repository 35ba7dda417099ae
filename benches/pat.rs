//! PAT's step-latency profile, measured: the decoder made of Kiln kernels
//! (`kiln::algorithms::pat::decoder`, LLaMA-3.1-8B's layer shape with random bf16 weights,
//! `KILN_PAT_LAYERS` layers, 4 by default, the full vocabulary) on tensor-parallel groups of
//! 1, 2 and 4 of the visible GPUs (one process drives them all, NCCL between them). For every
//! (TP, batch, context) of the grid it fills the batch with sequences whose caches hold
//! `context` positions of random keys and values, runs 2 warm-up decode steps and times 5
//! (host wall clock per step, all ranks synchronised: a step ends with the greedy tokens on
//! the host, as continuous batching needs them), and keeps the median as a
//! [`ProfilePoint`] — the structure the predictor fits (`pat::predictor`), so PAT's
//! decisions can run on measurements instead of the roofline model (`pat::profile`). Also:
//! the predictor's held-out error on the measured grid, the roofline model's step time
//! beside each point, prefill throughput per TP (what recomputing a sequence's KV costs), and
//! the exact reduction (fixed tree over K pieces, the default) against a plain all-reduce at a
//! few points. Writes `pat-profile-<device>.json` (the points, loadable as
//! `Vec<ProfilePoint>` from `"points"`).
//! Run: `cargo bench --bench pat` (needs a GPU; a filter such as `tp2` keeps the matching
//! rows; `KILN_PAT_BATCHES=1,8,64` and `KILN_PAT_CONTEXTS=1024,8192` change the grid).
//!
//! `KILN_PAT_MODE=adaptive`: PAT's comparison on the real decoder (`pat::adaptive`) — a
//! long-tail batch (`KILN_PAT_SEQS` sequences, 128 by default, prompts of 512, log-normal
//! responses of median 600 and σ 1 capped at `KILN_PAT_MAX_LEN`, 8192 by default) generated
//! under static TP1×DP4, static TP4×DP1 and adaptive TP1×DP4 → TP4×DP1 (PAT's rule every 32
//! steps on a predictor fitted to a profile measured first, on these GPUs, at the batches
//! and contexts the run meets; the KV path per sequence by the cost model, whose prefill rate
//! and link bandwidth are measured first too: a 2048-token prefill at TP 4, a ring of
//! send/recv between the GPUs), all three
//! through the same driver after a short warm-up run of each (JIT). Prints and writes
//! `pat-adaptive-<device>.json`: generation latency of each, the switch's step and measured
//! split (weights / KV migrate / recompute, bytes moved, peak extra memory against its
//! bound), the predictor's held-out error on the profile and its error on the run's steps,
//! and whether the three runs' tokens are equal (they must be: the run fails otherwise).
//! Needs 4 GPUs for that report; with 2 or 3 it runs TP1×DP2 vs TP2 on 2 and says so, with
//! 1 it says why it cannot and stops.

mod support;

use half::bf16;
use kiln::algorithms::pat::adaptive::{
    model_dims, requests, Driver, Groups, KvChoice, Policy, RunRecord,
};
use kiln::algorithms::pat::decoder::{
    DecoderConfig, DecoderOptions, DecoderWeights, Reduction, TpDecoder,
};
use kiln::algorithms::pat::predictor::Predictor;
use kiln::algorithms::pat::profile::{roofline_step_ms, Card, ProfilePoint};
use kiln::algorithms::pat::simulate::Setup;
use kiln::algorithms::pat::workload::LongTail;
use kiln::runtime::comm::{CommGroup, Transfer};
use kiln::runtime::{Device, DeviceBuffer};
use std::sync::Arc;
use std::time::Instant;
use support::{gpu, results_path, selected};

fn list(var: &str, default: &[u32]) -> Vec<u32> {
    std::env::var(var)
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<u32>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median ms of a decode step at `batch` sequences of `context` cached tokens.
fn step_ms(
    dec: &mut TpDecoder<bf16>,
    batch: u32,
    context: u32,
) -> Result<f64, Box<dyn std::error::Error>> {
    dec.clear();
    for i in 0..batch {
        dec.add_random_context(i as usize, context, 16, 1 + i, 7 + i as u64)?;
    }
    dec.synchronize()?;
    let mut times = Vec::new();
    for rep in 0..7 {
        let t = Instant::now();
        dec.step()?;
        dec.synchronize()?;
        if rep >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(median(times))
}

fn number(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dev) = gpu() else { return Ok(()) };
    let layers = number("KILN_PAT_LAYERS", 4);
    let config = DecoderConfig::llama_3_1_8b(layers);
    match std::env::var("KILN_PAT_MODE").as_deref() {
        Ok("adaptive") => adaptive(&dev, &config),
        Ok("profile") | Err(_) => profile(&dev, &config),
        Ok(other) => {
            Err(format!("KILN_PAT_MODE={other}: `profile` (the default) or `adaptive`").into())
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The step-latency profile (the module documentation's first part).
fn profile(dev: &Device, config: &DecoderConfig) -> Res<()> {
    let layers = config.layers;
    let config = *config;
    let batches = list("KILN_PAT_BATCHES", &[1, 2, 4, 8, 16, 32, 64]);
    let contexts = list("KILN_PAT_CONTEXTS", &[512, 2048, 8192]);
    let visible = Device::gpu_count();
    let tps: Vec<u32> = [1u32, 2, 4]
        .into_iter()
        .filter(|&t| t as usize <= visible)
        .collect();
    println!(
        "PAT profile on {} ({visible} visible): {layers} layers of LLaMA-3.1-8B, batches {batches:?}, contexts {contexts:?}, TP {tps:?}",
        dev.name()
    );
    let started = Instant::now();
    let weights = DecoderWeights::<bf16>::random(&config, 1);
    println!("random weights in {:.1?}", started.elapsed());
    let dims = model_dims(&config);
    let card = Card::h200();
    let slots = *batches.iter().max().unwrap_or(&1);
    let max_seq = contexts.iter().max().unwrap_or(&512) + 64;
    let mut points = Vec::new();
    let mut json_rows = Vec::new();
    let mut prefill = Vec::new();
    println!(
        "{:>4} {:>6} {:>8} {:>10} {:>12} {:>10}",
        "tp", "batch", "context", "step ms", "roofline ms", "tokens/s"
    );
    for &tp in &tps {
        let group = Arc::new(CommGroup::gpus(tp as usize)?);
        let options = DecoderOptions {
            slots,
            max_seq,
            reduction: Reduction::FixedTree,
            record_logits: false,
            eos: None,
        };
        let mut dec = TpDecoder::new(group.clone(), &weights, options)?;
        for &context in &contexts {
            for &batch in &batches {
                let name = format!("tp{tp} b{batch} s{context}");
                if !selected(&name) {
                    continue;
                }
                let ms = step_ms(&mut dec, batch, context)?;
                let model = roofline_step_ms(&dims, &card, tp, batch, context);
                println!(
                    "{tp:>4} {batch:>6} {context:>8} {ms:>10.3} {model:>12.3} {:>10.0}",
                    batch as f64 / ms * 1e3
                );
                points.push(ProfilePoint {
                    tp,
                    batch,
                    context,
                    ms,
                });
                json_rows.push(serde_json::json!({
                    "tp": tp, "batch": batch, "context": context, "ms": ms,
                    "roofline_ms": model, "reduction": "fixed tree",
                }));
            }
        }
        let ms = prefill_ms_of(&mut dec, 2048)?;
        println!(
            "tp {tp}: prefill of 2048 tokens {ms:.2} ms ({:.0} tokens/s)",
            2048.0 / ms * 1e3
        );
        prefill.push(serde_json::json!({"tp": tp, "tokens": 2048, "ms": ms}));
        drop(dec);
        // the plain scheme at a few points (one GEMM per rank and projection, all-reduce):
        // what exact TP equality costs
        {
            let options = DecoderOptions {
                reduction: Reduction::AllReduce,
                ..options
            };
            let mut plain = TpDecoder::new(group, &weights, options)?;
            let context = contexts[contexts.len() / 2];
            for &batch in [1u32, 16, 64].iter().filter(|b| batches.contains(b)) {
                if !selected(&format!("tp{tp} b{batch} s{context}")) {
                    continue;
                }
                let ms = step_ms(&mut plain, batch, context)?;
                let exact = points
                    .iter()
                    .find(|p| p.tp == tp && p.batch == batch && p.context == context)
                    .map_or(f64::NAN, |p| p.ms);
                println!(
                    "tp {tp} b {batch} s {context}: plain all-reduce {ms:.3} ms, fixed tree {exact:.3} ms ({:.2}×)",
                    exact / ms
                );
                json_rows.push(serde_json::json!({
                    "tp": tp, "batch": batch, "context": context, "ms": ms,
                    "reduction": "all-reduce",
                }));
            }
        }
    }
    let heldout = Predictor::heldout_error(&points);
    match &heldout {
        Ok((med, max)) => println!(
            "predictor on the measured grid: held-out error median {:.1}%, max {:.1}%",
            100.0 * med,
            100.0 * max
        ),
        Err(e) => println!("predictor: {e}"),
    }
    let out = serde_json::json!({
        "bench": "pat",
        "device": dev.name(),
        "gpus": visible,
        "layers": layers,
        "model": "LLaMA-3.1-8B layer shape, random bf16 weights",
        "points": points,
        "rows": json_rows,
        "prefill": prefill,
        "heldout_error": heldout.ok().map(|(m, x)| serde_json::json!({"median": m, "max": x})),
    });
    let path = results_path("pat-profile", dev, "json");
    std::fs::write(&path, serde_json::to_string_pretty(&out)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The prefill of one `tokens`-token prompt, ms (the second run: the first compiles).
fn prefill_ms_of(dec: &mut TpDecoder<bf16>, tokens: u32) -> Res<f64> {
    let prompt: Vec<u32> = (0..tokens)
        .map(|i| (i * 7919) % dec.config().vocab)
        .collect();
    let mut ms = f64::NAN;
    for _ in 0..2 {
        dec.clear();
        let t = Instant::now();
        dec.add(0, &prompt, 1)?;
        dec.synchronize()?;
        ms = t.elapsed().as_secs_f64() * 1e3;
    }
    dec.clear();
    Ok(ms)
}

/// Bytes/s over one link while every rank sends `elems` bf16 values to the next at once
/// (the median of 5 after a warm-up): what the KV migration's transfers see.
fn ring_bandwidth(group: &CommGroup, elems: usize) -> Res<f64> {
    let n = group.ranks();
    let send = (0..n)
        .map(|r| group.device(r).zeros::<bf16>(elems))
        .collect::<Result<Vec<_>, _>>()?;
    let mut recv = (0..n)
        .map(|r| group.device(r).zeros::<bf16>(elems))
        .collect::<Result<Vec<_>, _>>()?;
    let ring: Vec<Transfer> = (0..n)
        .map(|r| Transfer {
            from: r,
            to: (r + 1) % n,
            send_offset: 0,
            recv_offset: 0,
            count: elems,
        })
        .collect();
    let mut times = Vec::new();
    for rep in 0..6 {
        let sends: Vec<&DeviceBuffer<bf16>> = send.iter().collect();
        let mut recvs: Vec<&mut DeviceBuffer<bf16>> = recv.iter_mut().collect();
        let t = Instant::now();
        group.send_recv(&sends, &mut recvs, &ring)?;
        group.synchronize()?;
        if rep > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * elems as f64 / median(times))
}

/// Powers of two from 1 up to `most`, and `most`.
fn doubling(most: u32) -> Vec<u32> {
    let mut v: Vec<u32> = (0..31)
        .map(|i| 1u32 << i)
        .take_while(|&b| b < most)
        .collect();
    v.push(most.max(1));
    v
}

fn run_json(r: &RunRecord) -> serde_json::Value {
    let error = r.predictor_error();
    serde_json::json!({
        "policy": r.policy,
        "total_ms": r.total_ms(),
        "prefill_ms": r.prefill_ms,
        "decode_ms": r.decode_ms,
        "steps": r.steps.len(),
        "switch": r.switch.as_ref().map(|s| serde_json::json!({
            "step": s.step,
            "predicted": {
                "weights_ms": s.predicted.weights_ms,
                "migrate_ms": s.predicted.migrate_ms,
                "recompute_ms": s.predicted.recompute_ms,
            },
            "weights_ms": s.measured.weights_ms,
            "migrate_ms": s.measured.migrate_ms,
            "recompute_ms": s.measured.recompute_ms,
            "migrated": s.measured.migrated,
            "recomputed": s.measured.recomputed,
            "recompute_disagreed": s.measured.recompute_disagreed,
            "kv_bytes_to_peers": s.measured.kv_bytes_to_peers,
            "weight_bytes_to_peers": s.measured.weight_bytes_to_peers,
            "peak_extra_bytes": s.measured.peak_extra_bytes,
            "bound_bytes": s.measured.bound_bytes,
        })),
        "predictor_error_on_steps": error.map(|(m, x)| serde_json::json!({"median": m, "max": x})),
        "step_times": r.steps.iter().map(|s| serde_json::json!({
            "step": s.step, "tp": s.tp, "batch": s.batch,
            "predicted_ms": s.predicted_ms, "measured_ms": s.measured_ms,
        })).collect::<Vec<_>>(),
    })
}

/// PAT's comparison (the module documentation's second part).
fn adaptive(dev: &Device, config: &DecoderConfig) -> Res<()> {
    let visible = Device::gpu_count();
    let n = match visible {
        0 | 1 => {
            println!(
                "skipped: PAT's adaptive run switches between layouts of several GPUs: it needs 2 at least (4 for the TP1×DP4 vs TP4 report), {visible} visible"
            );
            return Ok(());
        }
        2 | 3 => {
            println!(
                "note: {visible} GPUs visible: running TP1×DP2 vs TP2×DP1 on 2 (the TP1×DP4 vs TP4 report needs 4)"
            );
            2
        }
        _ => 4,
    };
    let workload = LongTail {
        sequences: number("KILN_PAT_SEQS", 128),
        max_len: number("KILN_PAT_MAX_LEN", 8192),
        ..LongTail::default()
    };
    let chunk = number("KILN_PAT_CHUNK", 256) as u32;
    println!(
        "PAT adaptive on {n} × {}: {} layers of LLaMA-3.1-8B, {} sequences, prompts of {}, log-normal responses (median {}, σ {}, cap {}), decode split {chunk}",
        dev.name(),
        config.layers,
        workload.sequences,
        workload.prompt,
        workload.median,
        workload.sigma,
        workload.max_len
    );
    let weights = DecoderWeights::<bf16>::random(config, 1);
    let devices = (0..n).map(Device::gpu).collect::<Result<Vec<_>, _>>()?;
    let groups = Groups::new(&devices, 1, n)?;
    // the profile the predictor is fitted to: TP 1 and TP n at the batches and contexts
    // the run meets
    let contexts: Vec<u32> = [512u32, 1024, 2048, 4096, 8192]
        .into_iter()
        .filter(|&c| c as usize <= workload.prompt + workload.max_len)
        .collect();
    let per_replica = workload.sequences.div_ceil(n) as u32;
    let mut points = Vec::new();
    let mut prefill_tp_n = f64::NAN;
    let started = Instant::now();
    for (tp, group, most) in [
        (1u32, &groups.start[0], per_replica),
        (n as u32, &groups.target[0], workload.sequences as u32),
    ] {
        let options = DecoderOptions {
            slots: most,
            max_seq: contexts.iter().max().copied().unwrap_or(512) + 64,
            reduction: Reduction::FixedTree,
            record_logits: false,
            eos: None,
        };
        let mut dec = TpDecoder::new(group.clone(), &weights, options)?;
        dec.fix_decode_chunk(Some(chunk));
        for &context in &contexts {
            for batch in doubling(most) {
                let ms = step_ms(&mut dec, batch, context)?;
                points.push(ProfilePoint {
                    tp,
                    batch,
                    context,
                    ms,
                });
            }
        }
        if tp as usize == n {
            prefill_tp_n = prefill_ms_of(&mut dec, 2048)?;
        }
    }
    // the switch's cost model from measurements: prefill rate under TP n, link bandwidth
    let dims = model_dims(config);
    let flops = 2e3 * dims.params() * 2048.0 / (n as f64 * prefill_tp_n);
    let link_bw = ring_bandwidth(&groups.world, 32 << 20)?;
    let card = Card {
        flops,
        link_bw,
        ..Card::h200()
    };
    println!(
        "cost model: prefill of 2048 tokens at TP {n} {prefill_tp_n:.2} ms ({:.0} TFLOP/s), ring send/recv {:.0} GB/s per link",
        flops / 1e12,
        link_bw / 1e9
    );
    let heldout = Predictor::heldout_error(&points);
    match &heldout {
        Ok((m, x)) => println!(
            "profile: {} points in {:.1?}; predictor held-out error median {:.1}%, max {:.1}%",
            points.len(),
            started.elapsed(),
            100.0 * m,
            100.0 * x
        ),
        Err(e) => println!("profile: {e}"),
    }
    let setup = Setup {
        model: model_dims(config),
        card,
        gpus: n as u32,
        predictor: Predictor::fit(&points)?,
        workload: workload.clone(),
        check_every: 32,
    };
    let driver = Driver {
        weights: &weights,
        groups: &groups,
        setup: &setup,
        kv: KvChoice::CostModel,
        decode_chunk: chunk,
        poison: false,
    };
    let policies = [Policy::StaticFrom, Policy::StaticTo, Policy::Adaptive];
    // warm-up: every policy once on a short batch (JIT, allocator pools)
    let mut warm = requests(&workload, config.vocab, 3);
    warm.truncate(2 * n);
    for r in &mut warm {
        r.max_new = r.max_new.min(40);
    }
    for p in policies {
        driver.run(p, &warm)?;
    }
    let batch = requests(&workload, config.vocab, 7);
    let mut runs = Vec::new();
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>7}  switch",
        "policy", "total ms", "prefill", "decode", "steps"
    );
    for p in policies {
        let r = driver.run(p, &batch)?;
        let switch = r.switch.as_ref().map_or("-".to_string(), |s| {
            let m = &s.measured;
            format!(
                "at step {}: {:.1} ms = weights {:.1} + KV migrate {:.1} ({} seqs, {:.1} MB to peers) + recompute {:.1} ({} seqs); peak extra {:.1} MB (bound {:.1} MB); predicted {:.1} ms",
                s.step,
                m.total_ms(),
                m.weights_ms,
                m.migrate_ms,
                m.migrated,
                m.kv_bytes_to_peers as f64 / 1e6,
                m.recompute_ms,
                m.recomputed,
                m.peak_extra_bytes as f64 / 1e6,
                m.bound_bytes as f64 / 1e6,
                s.predicted.total_ms()
            )
        });
        println!(
            "{:<30} {:>10.1} {:>10.1} {:>10.1} {:>7}  {switch}",
            r.policy,
            r.total_ms(),
            r.prefill_ms,
            r.decode_ms,
            r.steps.len()
        );
        if let Some((m, x)) = r.predictor_error() {
            println!(
                "{:<30} predictor error on its steps: median {:.1}%, max {:.1}%",
                "",
                100.0 * m,
                100.0 * x
            );
        }
        runs.push(r);
    }
    let best = runs[0].total_ms().min(runs[1].total_ms());
    let gain = 1.0 - runs[2].total_ms() / best;
    let equal = runs[1].tokens == runs[0].tokens && runs[2].tokens == runs[0].tokens;
    println!(
        "adaptive vs the better static layout: {:+.1}% generation latency; tokens of the three runs equal: {equal}",
        -100.0 * gain
    );
    let out = serde_json::json!({
        "bench": "pat-adaptive",
        "device": dev.name(),
        "gpus": n,
        "visible": visible,
        "backend": groups.world.backend_name(),
        "layers": config.layers,
        "model": "LLaMA-3.1-8B layer shape, random bf16 weights",
        "workload": {
            "sequences": workload.sequences, "prompt": workload.prompt,
            "median": workload.median, "sigma": workload.sigma, "max_len": workload.max_len,
        },
        "decode_chunk": chunk,
        "check_every": setup.check_every,
        "cost_model": {
            "prefill_ms_2048_tokens": prefill_tp_n, "prefill_flops": flops, "link_bytes_per_s": link_bw,
        },
        "profile": points,
        "heldout_error": heldout.ok().map(|(m, x)| serde_json::json!({"median": m, "max": x})),
        "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
        "adaptive_gain_vs_best_static": gain,
        "tokens_equal": equal,
    });
    let path = results_path("pat-adaptive", dev, "json");
    std::fs::write(&path, serde_json::to_string_pretty(&out)?)?;
    println!("wrote {}", path.display());
    if !equal {
        return Err(
            "the three runs' tokens differ: resharding, migration or recompute lost something"
                .into(),
        );
    }
    Ok(())
}
