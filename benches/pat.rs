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

mod support;

use half::bf16;
use kiln::algorithms::pat::decoder::{
    DecoderConfig, DecoderOptions, DecoderWeights, Reduction, TpDecoder,
};
use kiln::algorithms::pat::predictor::Predictor;
use kiln::algorithms::pat::profile::{roofline_step_ms, Card, ModelDims, ProfilePoint};
use kiln::runtime::comm::CommGroup;
use kiln::runtime::Device;
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dev) = gpu() else { return Ok(()) };
    let layers: usize = std::env::var("KILN_PAT_LAYERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let config = DecoderConfig::llama_3_1_8b(layers);
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
    let dims = ModelDims {
        layers: layers as u32,
        hidden: config.hidden,
        heads: config.heads,
        kv_heads: config.kv_heads,
        head_dim: config.head_dim,
        ffn: config.ffn,
        vocab: config.vocab,
    };
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
        // prefill of one 2048-token prompt (the second run: the first compiles)
        let prompt: Vec<u32> = (0..2048u32).map(|i| (i * 7919) % config.vocab).collect();
        let mut ms = f64::NAN;
        for _ in 0..2 {
            dec.clear();
            let t = Instant::now();
            dec.add(0, &prompt, 1)?;
            dec.synchronize()?;
            ms = t.elapsed().as_secs_f64() * 1e3;
        }
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
    let path = results_path("pat-profile", &dev, "json");
    std::fs::write(&path, serde_json::to_string_pretty(&out)?)?;
    println!("wrote {}", path.display());
    Ok(())
}
