//! Chelsea against dense attention, on the same card in the same run. Speed: S = 8K, 32K,
//! 64K, 128K, B = 1 and 8, heads 32/8, D = 128, bf16, chunks of 64, 80% reduction (sink 4,
//! recent 64): compression of the prefilled cache (tokens/s, and its time as a share of our
//! causal prefill attention `Prefill` over the same length), and decode attention over the
//! merged cache (with the `log n` bias, and without) against dense flash-decoding over the
//! full cache, both with tuned split sizes; inputs rotate over copies spanning 256 MiB so
//! every timed run reads device memory. Fidelity on the planted-structure workload (b1
//! h32/8 s32768 d128): output error against dense attention at 50%, 75% and 80% reduction,
//! with and without the bias, next to keeping the sinks + most recent tokens and the sinks +
//! evenly spaced tokens at the same memory, for chunks of 64, 256 and 512 with the default
//! method, and 64 and 256 with the first version's (half a chunk per round, plain cosine).
//! Writes `chelsea-<device>.json`.
//! Run: `cargo bench --bench chelsea` (needs a GPU; a shape filter such as `s32768` keeps
//! the matching speed rows).

mod support;

use kiln_algorithms::chelsea::compress::Similarity;
use kiln_algorithms::chelsea::fidelity::{evaluate, table, Setting};
use kiln_algorithms::chelsea::speed::{measure, SpeedCase};
use kiln_algorithms::workload::{generate, WorkloadSpec};
use support::{gpu, report_with, selected, Roof, Row};

fn main() {
    let Some(dev) = gpu() else { return };
    let mut rows = Vec::new();
    let mut speed = Vec::new();
    // chunks of 64 (cheapest to compress) and of 512 (the size whose fidelity beats the
    // simple baselines at every ratio)
    let cases = [64u32, 512]
        .into_iter()
        .flat_map(|c| [1u32, 8].map(move |b| (c, b)))
        .flat_map(|(c, b)| [8192u32, 32768, 65536, 131072].map(move |s| (c, b, s)));
    for (chunk, batch, seq) in cases {
        let shape = format!("b{batch} h32/8 s{seq} d128 chunk {chunk}");
        if !selected(&shape) {
            continue;
        }
        let case = SpeedCase {
            batch,
            seq,
            ratio: 0.8,
            chunk,
        };
        let prefill_reps = if seq >= 65536 { (1, 2) } else { (2, 5) };
        let t = match measure(&dev, case, (5, 30), Some(prefill_reps), 9) {
            Ok(t) => t,
            Err(e) => {
                println!("{shape}: {e}");
                continue;
            }
        };
        println!(
                "{shape}: {} entries; compress {:.3} ms ({:.3e} tokens/s, {:.2}% of prefill {:.1} ms); decode merged {:.4} ms (no bias {:.4}) vs dense {:.4} ms: {:.2}x; splits of {} / {} keys; append {:.4} ms",
                t.entries,
                t.compress_ms,
                t.tokens_per_s(),
                100.0 * t.prefill_share().unwrap_or(f64::NAN),
                t.prefill_ms.unwrap_or(f64::NAN),
                t.merged_ms,
                t.merged_plain_ms,
                t.dense_ms,
                t.speedup(),
                t.splits.0,
                t.splits.1,
                t.append_ms
            );
        speed.push(serde_json::json!({
            "shape": shape, "entries": t.entries, "compress_ms": t.compress_ms,
            "tokens_per_s": t.tokens_per_s(), "prefill_ms": t.prefill_ms,
            "prefill_share": t.prefill_share(), "dense_ms": t.dense_ms,
            "merged_ms": t.merged_ms, "merged_plain_ms": t.merged_plain_ms,
            "speedup": t.speedup(), "speedup_plain": t.dense_ms / t.merged_plain_ms,
            "split_keys_merged": t.splits.0, "split_keys_dense": t.splits.1,
            "append_ms": t.append_ms,
        }));
        let kv = |tokens: u32| 4.0 * batch as f64 * tokens as f64 * 8.0 * 128.0;
        let dense_name = format!("kiln dense decode {shape}");
        let prefill_name = format!("kiln causal prefill {shape}");
        // the biased path also reads 4 bytes of size per entry and KV head
        let biased = kv(t.entries) + 32.0 * batch as f64 * t.entries as f64;
        rows.push(Row {
            name: format!("chelsea decode (log n) {shape} 80%"),
            work: biased,
            median_ms: t.merged_ms,
            rate: biased / t.merged_ms / 1e6,
            vs: Some((dense_name.clone(), t.speedup())),
            roof: Roof::DeviceMemory,
        });
        rows.push(Row {
            name: format!("chelsea decode (no bias) {shape} 80%"),
            work: kv(t.entries),
            median_ms: t.merged_plain_ms,
            rate: kv(t.entries) / t.merged_plain_ms / 1e6,
            vs: Some((dense_name.clone(), t.dense_ms / t.merged_plain_ms)),
            roof: Roof::DeviceMemory,
        });
        rows.push(Row {
            name: dense_name,
            work: kv(seq),
            median_ms: t.dense_ms,
            rate: kv(seq) / t.dense_ms / 1e6,
            vs: None,
            roof: Roof::DeviceMemory,
        });
        // the bytes of the input cache and of the merged one per compression (each round also
        // reads and writes its own input, so the true traffic is higher than this rate)
        rows.push(Row {
            name: format!("chelsea compress {shape} 80%"),
            work: kv(seq) + kv(t.entries),
            median_ms: t.compress_ms,
            rate: (kv(seq) + kv(t.entries)) / t.compress_ms / 1e6,
            vs: t
                .prefill_ms
                .map(|p| (prefill_name.clone(), p / t.compress_ms)),
            roof: Roof::DeviceMemory,
        });
        if let Some(p) = t.prefill_ms {
            let flops = 4.0 * batch as f64 * 32.0 * (seq as f64).powi(2) * 128.0 / 2.0;
            rows.push(Row {
                name: prefill_name,
                work: flops,
                median_ms: p,
                rate: flops / p / 1e9,
                vs: None,
                roof: Roof::TensorCores,
            });
        }
    }
    let spec = WorkloadSpec::decode(1, 32, 8, 32768, 128);
    let mut fidelity = Vec::new();
    match generate(&spec) {
        Ok(wl) => {
            // the defaults (at most a quarter of a chunk merges per round, standardised
            // similarity) at chunks of 64, 256 and 512, and the first version's method
            // (half a chunk per round, plain cosine) at 64 and 256 for comparison
            let first_version = |chunk| Setting {
                round_fraction: 0.5,
                similarity: Similarity::Cosine,
                ..Setting::with_chunk(chunk)
            };
            let settings = [
                Setting::with_chunk(64),
                Setting::with_chunk(256),
                Setting::with_chunk(512),
                first_version(64),
                first_version(256),
            ];
            for setting in settings {
                let what = setting.describe();
                match evaluate(&dev, &wl, setting, &[0.5, 0.75, 0.8]) {
                    Ok(r) => {
                        println!(
                            "fidelity, workload b1 h32/8 s32768 d128, {what}:\n{}",
                            table(&r)
                        );
                        fidelity.extend(r.iter().map(|x| {
                            serde_json::json!({
                                "chunk": setting.chunk, "round_fraction": setting.round_fraction,
                                "similarity": format!("{:?}", setting.similarity),
                                "method": x.method, "target": x.target,
                                "entries": x.entries, "reduction": x.reduction,
                                "output_error": x.output_error,
                            })
                        }));
                    }
                    Err(e) => println!("fidelity ({what}): {e}"),
                }
            }
        }
        Err(e) => println!("workload: {e}"),
    }
    report_with(
        "chelsea",
        &dev,
        &rows,
        serde_json::json!({ "speed": speed, "fidelity": fidelity }),
    );
}
