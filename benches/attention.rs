//! Attention written in Kiln against PyTorch's SDPA, on the same card in the same device run:
//! flash attention forward (prefill) at S = 4K, 8K, 16K, D = 64 and 128, causal and not, heads
//! 32/32 and 32/8 (GQA); flash-decoding (one query token per sequence, heads 32/8, D = 128) at
//! S = 8K … 256K, B = 1 and 8. PyTorch's times come from `benches/baselines/attention.py`
//! (`KILN_BASELINE_JSON`, see `support::baseline`); without that file only our rows are
//! printed. Prefill rows are in TFLOP/s against the measured `mma.sync` rate, decode rows in
//! GB/s of K and V read against the measured device copy bandwidth. Inputs are rotated
//! between several copies so that every timed run reads from device memory, not L2.
//! Correctness of these kernels is the job of `tests/algorithms_run.rs` (run on the same
//! card by `scripts/gpu-run.sh`). Writes `attention-<device>.json` and a decode plot (time against context length).
//! Run: `cargo bench --bench attention` (needs a GPU).

mod support;

use half::bf16;
use kiln::algorithms::verify::Rng;
use kiln::codegen::Dtype;
use kiln::runtime::tune::Store;
use kiln::runtime::{time, Device, DeviceBuffer, RuntimeError};
use kiln_algorithms::attention::decode::{DecodeScratch, FlashDecode};
use kiln_algorithms::attention::prefill::Prefill;
use support::baseline::{decode_shapes, prefill_shapes, AttnShape, Baselines};
use support::plot::plot_series;
use support::{gpu, random_bf16, report_with, results_path, rotations, Roof, Row};

const WARMUP: usize = 3;
const REPS: usize = 20;

/// One prefill shape: our median times in ms, the default kernel (the Hopper one on sm_90) and
/// the tile layer's with its tuned key tile.
fn prefill(dev: &Device, s: &AttnShape, rng: &mut Rng) -> Result<(f64, f64), RuntimeError> {
    let attn = Prefill::new(dev, Dtype::Bf16, Store::default_location());
    let call = s.prefill_call();
    let q_len = s.b * s.hq * s.s * s.d;
    let kv_len = s.b * s.hkv * s.s * s.d;
    let n = rotations(2 * (q_len + 2 * kv_len));
    let mut sets = Vec::new();
    for _ in 0..n {
        sets.push((
            dev.upload(&random_bf16(rng, q_len))?,
            dev.upload(&random_bf16(rng, kv_len))?,
            dev.upload(&random_bf16(rng, kv_len))?,
        ));
    }
    let mut o: DeviceBuffer<bf16> = dev.zeros(q_len)?;
    let mut lse: DeviceBuffer<f32> = dev.zeros(s.b * s.hq * s.s)?;
    let scale = 1.0 / (s.d as f32).sqrt();
    let mut i = 0;
    let mut timed = |bk: Option<u32>| {
        time(dev, WARMUP, REPS, || {
            let (q, k, v) = &sets[i % n];
            i += 1;
            Ok(attn.run(&call, q, k, v, scale, &mut o, &mut lse, bk)?)
        })
    };
    let ours = timed(None)?.median_ms;
    let tile_layer = timed(Some(attn.key_tile_for(&call)))?.median_ms;
    Ok((ours, tile_layer))
}

/// One decode shape: our median time in ms.
fn decode(dev: &Device, s: &AttnShape, rng: &mut Rng) -> Result<f64, RuntimeError> {
    let shape = s.decode_shape();
    let fd = FlashDecode::new(dev, Dtype::Bf16, shape.dim, false)?;
    let q_len = s.b * s.hq * s.d;
    let kv_len = s.b * s.s * s.hkv * s.d;
    let n = rotations(2 * 2 * kv_len);
    let q = dev.upload(&random_bf16(rng, q_len))?;
    let mut sets = Vec::new();
    for _ in 0..n {
        sets.push((
            dev.upload(&random_bf16(rng, kv_len))?,
            dev.upload(&random_bf16(rng, kv_len))?,
        ));
    }
    let mut o: DeviceBuffer<bf16> = dev.zeros(q_len)?;
    let mut lse: DeviceBuffer<f32> = dev.zeros(s.b * s.hq)?;
    let mut scratch = DecodeScratch::new(dev, 1, s.d)?;
    let scale = 1.0 / (s.d as f32).sqrt();
    let mut i = 0;
    let t = time(dev, WARMUP, REPS, || {
        let (k, v) = &sets[i % n];
        i += 1;
        Ok(fd.run(
            &shape,
            &q,
            k,
            v,
            None,
            shape.seq,
            scale,
            &mut o,
            &mut lse,
            &mut scratch,
        )?)
    })?;
    Ok(t.median_ms)
}

fn main() {
    let Some(dev) = gpu() else { return };
    let baselines = match Baselines::from_env() {
        Ok(b) => b,
        Err(e) => {
            println!("baseline file unreadable, timing ours alone: {e}");
            None
        }
    };
    let only = std::env::var("KILN_ATTN_ONLY").unwrap_or_default();
    let mut rng = Rng::new(7);
    let mut rows = Vec::new();
    let mut decode_series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let push = |rows: &mut Vec<Row>, s: &AttnShape, ms: f64| {
        let base = baselines.as_ref().and_then(|b| b.get(&s.name()));
        let (work, rate, roof) = if s.decode {
            // K and V are what a decode step must read
            let kv = 2.0 * 2.0 * (s.b * s.s * s.hkv * s.d) as f64;
            (kv, kv / ms / 1e6, Roof::DeviceMemory)
        } else {
            (s.flops(), s.flops() / ms / 1e9, Roof::TensorCores)
        };
        rows.push(Row {
            name: format!("kiln {}", s.name()),
            work,
            median_ms: ms,
            rate,
            vs: base.map(|b| b.vs(ms)),
            roof,
        });
        if let Some(b) = base {
            rows.push(Row {
                name: format!("{} {}", b.baseline, s.name()),
                work,
                median_ms: b.median_ms,
                rate: work / b.median_ms / if s.decode { 1e6 } else { 1e9 },
                vs: None,
                roof,
            });
        }
    };
    if only != "decode" {
        for s in prefill_shapes() {
            match prefill(&dev, &s, &mut rng) {
                Ok((ms, tile_ms)) => {
                    push(&mut rows, &s, ms);
                    let base = baselines.as_ref().and_then(|b| b.get(&s.name()));
                    rows.push(Row {
                        name: format!("kiln tile layer {}", s.name()),
                        work: s.flops(),
                        median_ms: tile_ms,
                        rate: s.flops() / tile_ms / 1e9,
                        vs: base.map(|b| b.vs(tile_ms)),
                        roof: Roof::TensorCores,
                    });
                }
                Err(e) => println!("{}: {e}", s.name()),
            }
        }
    }
    if only != "prefill" {
        for s in decode_shapes() {
            match decode(&dev, &s, &mut rng) {
                Ok(ms) => {
                    push(&mut rows, &s, ms);
                    let series = format!("kiln b{}", s.b);
                    match decode_series.iter_mut().find(|(n, _)| *n == series) {
                        Some((_, pts)) => pts.push((s.s as f64, ms)),
                        None => decode_series.push((series, vec![(s.s as f64, ms)])),
                    }
                    if let Some(b) = baselines.as_ref().and_then(|b| b.get(&s.name())) {
                        let series = format!("{} b{}", b.baseline, s.b);
                        match decode_series.iter_mut().find(|(n, _)| *n == series) {
                            Some((_, pts)) => pts.push((s.s as f64, b.median_ms)),
                            None => decode_series.push((series, vec![(s.s as f64, b.median_ms)])),
                        }
                    }
                }
                Err(e) => println!("{}: {e}", s.name()),
            }
        }
    }
    report_with("attention", &dev, &rows, serde_json::Value::Null);
    if !decode_series.is_empty() {
        let path = results_path("attention-decode", &dev, "svg");
        match plot_series(
            &path,
            &format!("decode attention, heads 32/8, D 128, bf16 ({})", dev.name()),
            "context length (tokens)",
            "time per step (ms)",
            &decode_series,
        ) {
            Ok(()) => println!("wrote {}", path.display()),
            Err(e) => println!("could not plot: {e}"),
        }
    }
}
