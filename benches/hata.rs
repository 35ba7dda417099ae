//! HATA's decode step against dense decoding, on the same card in the same run: the whole
//! step as a user calls it (append the new token, hash the query heads, score every cached
//! key, top-k, attention over the selected keys; one graph replay, or dense below the
//! crossover), the same sparse step launched kernel by kernel and as a graph, vs the tile
//! layer's dense flash-decoding over the whole cache, and vs PyTorch SDPA
//! (`benches/baselines/attention.py`, read through `KILN_BASELINE_JSON`); S = 2K, 4K, 8K, 32K, 128K,
//! 256K, B = 1 and 8, heads 32/8, D = 128, rbit 128, budgets 1.6% of S and 2048 keys, with
//! the time of each stage; appending the new token is timed apart. Then fidelity on the
//! planted-structure workload (S = 32K): recall of the exact top-k and output error against
//! dense attention at budgets 512 / 1024 / 2048 / 1.6%, for HATA with random Gaussian hash
//! weights and with weights trained (20 epochs, on the GPU) on a held-out sequence of the
//! same workload, and for the exact top-k and recency selectors. The "GB/s" of a HATA row is the
//! dense K/V bytes divided by its time (an effective rate, above the roofline when sparse
//! wins). Writes `hata-<device>.json`. Run: `cargo bench --bench hata` (needs a GPU); `-- <text>`
//! keeps the shapes whose name contains the text (and the fidelity part only if "fidelity" does,
//! the crossover search for the shapes it names). The crossover search times whole
//! steps sparse and dense at 2K–64K cached tokens for each batch and budget and stores where
//! sparse starts to win; the speed shapes' layers then start from it.

mod support;

use kiln::runtime::tune::{Store, Trial};
use kiln_algorithms::hata::crossover::tune_crossover;
use kiln_algorithms::hata::decoder::Budget;
use kiln_algorithms::hata::fidelity::{budget_label, evaluate, table, train_held_out, verdict};
use kiln_algorithms::hata::speed::{bench_config, measure};
use kiln_algorithms::workload::{generate, Rng, WorkloadSpec};
use support::baseline::{AttnShape, Baselines};
use support::{gpu, report_with, selected, Roof, Row};

/// Untimed runs before each part is timed.
const WARMUP: usize = 10;
/// Timed runs per part (the median is reported).
const REPS: usize = 20;

fn main() {
    let Some(dev) = gpu() else { return };
    let baselines = Baselines::from_env().unwrap_or_else(|e| {
        println!("baseline file unreadable: {e}");
        None
    });
    // one untimed pass first: the first shape a fresh process timed came out up to 28% slow on
    // an H100 (every stage, the append included), the GPU not yet at its working clocks
    if let Err(e) = measure(&dev, 8, 32768, Budget::Ratio(0.016), (WARMUP, REPS), 9) {
        println!("warm-up pass: {e}");
    }
    // the dense crossover of each batch and budget, measured first: the layers of the speed
    // shapes below start from it (HataLayer::new reads it from the tuning store)
    for batch in [1u32, 8] {
        for budget in [Budget::Ratio(0.016), Budget::Count(2048)] {
            let name = format!(
                "hata crossover b{batch} h32/8 d128 budget {}",
                budget_label(&budget)
            );
            if selected(&name) {
                let cfg = bench_config(batch, 0, budget);
                let lengths = [2048, 4096, 8192, 16384, 32768, 65536];
                match tune_crossover(
                    &dev,
                    cfg,
                    &lengths,
                    (WARMUP, REPS),
                    &Store::default_location(),
                ) {
                    Ok(e) => {
                        let times: Vec<String> = e
                            .trials
                            .chunks(2)
                            .map(|p| {
                                let ms = |t: &Trial| t.outcome.clone().unwrap_or(f64::NAN);
                                format!(
                                    "{}: {:.4}/{:.4}",
                                    p[0].point.get("LEN"),
                                    ms(&p[0]),
                                    ms(&p[1])
                                )
                            })
                            .collect();
                        println!(
                            "{name}: dense below {} tokens per sequence (sparse/dense step ms by length: {})",
                            e.winner.get("DENSE_BELOW"),
                            times.join(", ")
                        );
                    }
                    Err(e) => println!("{name}: {e}"),
                }
            }
        }
    }
    let mut rows = Vec::new();
    let mut stages = Vec::new();
    for batch in [1u32, 8] {
        for seq in [2048u32, 4096, 8192, 32768, 131072, 262144] {
            for budget in [Budget::Ratio(0.016), Budget::Count(2048)] {
                // a 2048-key budget leaves out too little of a short cache to be a sparse step
                if matches!(budget, Budget::Count(n) if seq < 4 * n) {
                    continue;
                }
                let name = format!(
                    "hata b{batch} h32/8 s{seq} d128 budget {}",
                    budget_label(&budget)
                );
                if !selected(&name) {
                    continue;
                }
                let t = match measure(&dev, batch, seq, budget, (WARMUP, REPS), 9) {
                    Ok(t) => t,
                    Err(e) => {
                        println!("{name}: {e}");
                        continue;
                    }
                };
                let sdpa = baselines
                    .as_ref()
                    .and_then(|b| {
                        b.get(&AttnShape::decode(batch as usize, 32, 8, seq as usize, 128).name())
                    })
                    .map(|b| b.median_ms);
                println!(
                    "{name}: layer step {:.4} ms ({}) vs dense {:.4} ms: {:.2}x; sparse graph step {:.4} ms: {:.2}x, launched one by one {:.4} ms (score {:.4}, select {:.4}, attend {:.4}: {:.4}; append {:.4}){}",
                    t.layer_step,
                    if t.layer_dense { "dense below the crossover" } else { "sparse, graph" },
                    t.dense, t.speedup(), t.graph_step, t.sparse_speedup(), t.eager_step,
                    t.score, t.select, t.attend, t.step, t.append,
                    sdpa.map(|s| format!(", SDPA {s:.4} ms: {:.2}x", s / t.layer_step)).unwrap_or_default()
                );
                stages.push(serde_json::json!({
                    "shape": name, "layer_step_ms": t.layer_step, "layer_dense": t.layer_dense,
                    "graph_step_ms": t.graph_step, "eager_step_ms": t.eager_step,
                    "step_ms": t.step, "score_ms": t.score, "select_ms": t.select,
                    "attend_ms": t.attend, "append_ms": t.append, "dense_ms": t.dense,
                    "sdpa_ms": sdpa, "speedup_vs_dense": t.speedup(),
                    "sparse_speedup_vs_dense": t.sparse_speedup(),
                }));
                let kv = 4.0 * (batch as f64 * seq as f64 * 8.0 * 128.0);
                let dense_name = format!("kiln dense decode b{batch} s{seq}");
                rows.push(Row {
                    name: format!("kiln {name}"),
                    work: kv,
                    median_ms: t.layer_step,
                    rate: kv / t.layer_step / 1e6,
                    vs: Some((dense_name.clone(), t.speedup())),
                    roof: Roof::DeviceMemory,
                });
                rows.push(Row {
                    name: dense_name,
                    work: kv,
                    median_ms: t.dense,
                    rate: kv / t.dense / 1e6,
                    vs: sdpa.map(|s| ("torch-sdpa".to_string(), s / t.dense)),
                    roof: Roof::DeviceMemory,
                });
            }
        }
    }
    // fidelity on the planted-structure workload, random Gaussian hash weights
    if !selected("fidelity") {
        report_with("hata", &dev, &rows, serde_json::json!({ "stages": stages }));
        return;
    }
    let spec = WorkloadSpec::decode(1, 32, 8, 32768, 128);
    let mut fidelity = serde_json::Value::Null;
    match generate(&spec) {
        Ok(wl) => {
            let mut rng = Rng::new(3);
            let random: Vec<f32> = (0..8 * 128 * 128).map(|_| rng.normal()).collect();
            // trained on 4 held-out sequences, on centred keys and (for comparison) raw keys
            let train =
                |center: bool| match train_held_out(Some(&dev), &spec, (4, center), 128, 20, 5) {
                    Ok(w) => w,
                    Err(e) => {
                        println!("training: {e}");
                        random.clone()
                    }
                };
            let (trained, trained_raw) = (train(true), train(false));
            let budgets = [
                Budget::Count(512),
                Budget::Count(1024),
                Budget::Count(2048),
                Budget::Ratio(0.016),
            ];
            let mut all = Vec::new();
            for (center, weights) in [(true, &trained), (false, &trained_raw)] {
                let sets = [("random W", &random[..]), ("trained W", &weights[..])];
                match evaluate(&dev, &wl, &sets, 128, &budgets, (16, 64), center) {
                    Ok(r) => {
                        println!(
                            "fidelity, workload b1 h32/8 s32768 d128, rbit 128, keys {} (trained 20 epochs on 4 held-out sequences):\n{}{}",
                            if center { "centred" } else { "raw" },
                            table(&r),
                            verdict(&r)
                        );
                        all.extend(r.iter().map(|x| serde_json::json!({"center_keys": center, "selector": x.selector, "budget": x.budget, "keys": x.keys, "recall": x.recall, "qk_recall": x.qk_recall, "output_error": x.output_error})));
                    }
                    Err(e) => println!("fidelity: {e}"),
                }
            }
            fidelity = serde_json::Value::Array(all);
        }
        Err(e) => println!("workload: {e}"),
    }
    report_with(
        "hata",
        &dev,
        &rows,
        serde_json::json!({ "stages": stages, "fidelity": fidelity }),
    );
}
