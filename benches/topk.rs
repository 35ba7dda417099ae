//! HATA's top-k selection (`kiln_algorithms::hata::topk`) against PyTorch's `torch.topk`, on
//! the same card in the same device run: rows × n f32 scores (rows = batch × KV heads), the k
//! largest per row. The headline shape is 64 × 131072, k = 2048; the others are rows 8 and 64,
//! n = 32K, 128K, 256K, k = 512, 2048 and 1.6% of n. Scores are uniform in [-1, 1); the
//! headline shape is also timed on HATA-like scores (`4 − 2·ham/128`, few distinct values, so
//! many ties at the threshold) and with only the first of our two passes over the scores
//! (`topk_hist`), which shows how close each pass streams to the card's bandwidth.
//!
//! PyTorch's times come from `benches/baselines/topk.py` (path in `KILN_TOPK_BASELINE_JSON`,
//! rows `{"bench": "topk", "shape", "baseline", "median_ms"}` read by `support::baseline`);
//! without that file only our rows are printed. Shape names: `"topk r{rows} n{n} k{k}"` for
//! `torch.topk(x, k, dim=1, sorted=False)` (`"torch-topk"`: ours does not sort by value
//! either, so this is the like-for-like baseline and our rows' ratio), and the same name plus
//! `" sorted"` for the default `sorted=True` (`"torch-topk-sorted"`). Rates are GB/s of scores
//! (`rows·n·4` bytes, read once) against the measured device copy bandwidth. Inputs rotate
//! between copies totalling more than 512 MiB, so every timed run reads device memory, not
//! L2. The headline shape's output is checked against the plain-Rust reference.
//! Writes `topk-<device>.json`. Run: `cargo bench --bench topk` (needs a GPU).

mod support;

use std::path::Path;

use kiln::algorithms::verify::Rng;
use kiln::runtime::{time, Device, DeviceBuffer, LaunchConfig, RuntimeError};
use kiln_algorithms::hata::topk::{reference, topk_hist, TopK, TopKScratch, THREADS};
use support::baseline::Baselines;
use support::{gpu, report_with, rotations, selected, Roof, Row};

const WARMUP: usize = 10;
const REPS: usize = 50;
/// Environment variable with the path of `benches/baselines/topk.py`'s JSON.
const BASELINE_ENV: &str = "KILN_TOPK_BASELINE_JSON";

/// k as 1.6% of n, rounded to nearest (as `k_ratio` in `topk.py`).
fn k_ratio(n: usize) -> usize {
    (n * 16 + 500) / 1000
}

/// The shapes `(rows, n, k)`: the headline one first, then rows × n × k as in `topk.py`.
fn shapes() -> Vec<(usize, usize, usize)> {
    let mut v = vec![(64, 131_072, 2048)];
    for rows in [8, 64] {
        for n in [32_768, 131_072, 262_144] {
            for k in [512, 2048, k_ratio(n)] {
                if !v.contains(&(rows, n, k)) {
                    v.push((rows, n, k));
                }
            }
        }
    }
    v
}

/// The baseline's name of a shape.
fn shape_name(rows: usize, n: usize, k: usize) -> String {
    format!("topk r{rows} n{n} k{k}")
}

/// Uniform scores in [-1, 1), or HATA-like ones: `4 − 2·ham/128` with `ham` the popcount of
/// 512 random bits (G = 4 query heads, 128-bit codes), a few hundred distinct values.
fn scores(rng: &mut Rng, len: usize, hata: bool) -> Vec<f32> {
    let block = len.min(1 << 24);
    let vals: Vec<f32> = (0..block)
        .map(|_| {
            if hata {
                let ham: u32 = (0..16).map(|_| rng.u32().count_ones()).sum();
                4.0 - 2.0 * ham as f32 / 128.0
            } else {
                rng.f32()
            }
        })
        .collect();
    vals.iter().copied().cycle().take(len).collect()
}

/// What one shape measured: the full top-k, and `topk_hist` alone.
struct Measured {
    topk_ms: f64,
    pass1_ms: f64,
    /// The headline check against the reference, when done.
    checked: Option<bool>,
}

fn measure(
    dev: &Device,
    topk: &TopK,
    (rows, n, k): (usize, usize, usize),
    hata: bool,
    check: bool,
    rng: &mut Rng,
) -> Result<Measured, RuntimeError> {
    let len = rows * n;
    let copies = rotations(len * 4);
    let mut host = Vec::new();
    let mut sets = Vec::new();
    for c in 0..copies {
        let s = scores(rng, len, hata);
        sets.push(dev.upload(&s)?);
        if c == 0 {
            host = s;
        }
    }
    let mut idx: DeviceBuffer<u32> = dev.zeros(rows * k)?;
    let mut scratch = TopKScratch::new(dev, rows as u32, n as u32)?;
    let (r32, n32, k32) = (rows as u32, n as u32, k as u32);
    let mut i = 0;
    let t = time(dev, WARMUP, REPS, || {
        let x = &sets[i % copies];
        i += 1;
        Ok(topk.run(x, r32, n32, k32, &mut idx, &mut scratch)?)
    })?;
    let checked = if check {
        topk.run(&sets[0], r32, n32, k32, &mut idx, &mut scratch)?;
        Some(dev.download(&idx)? == reference(&host, rows, n, k))
    } else {
        None
    };
    // pass 1 alone, with its own histogram and state (it leaves them ready for the next run)
    let hist_kernel = topk_hist::spec().build(dev)?;
    let chunk = topk.chunk_for(r32, n32);
    let mut hist: DeviceBuffer<u32> = dev.zeros(rows * 6144)?;
    let mut state: DeviceBuffer<u32> = dev.zeros(rows * 8)?;
    let cfg = LaunchConfig {
        grid: (n32.div_ceil(chunk), r32, 1),
        block: (THREADS, 1, 1),
        dyn_shared_bytes: 0,
    };
    let mut i = 0;
    let p1 = time(dev, WARMUP, REPS, || {
        let x = &sets[i % copies];
        i += 1;
        topk_hist::launch(
            &hist_kernel,
            &cfg,
            x,
            &mut hist,
            &mut state,
            n32,
            k32,
            chunk,
        )
    })?;
    Ok(Measured {
        topk_ms: t.median_ms,
        pass1_ms: p1.median_ms,
        checked,
    })
}

fn main() {
    let Some(dev) = gpu() else { return };
    let baselines = match std::env::var_os(BASELINE_ENV) {
        Some(p) if !p.is_empty() => match Baselines::load_from(Path::new(&p)) {
            Ok(b) => Some(b),
            Err(e) => {
                println!("baseline file unreadable, timing ours alone: {e}");
                None
            }
        },
        _ => {
            println!(
                "{BASELINE_ENV} is not set: timing ours alone (run benches/baselines/topk.py)"
            );
            None
        }
    };
    let topk = TopK::new(&dev).expect("building the top-k kernels");
    let mut rng = Rng::new(11);
    let mut rows = Vec::new();
    let mut checks = serde_json::Map::new();
    let mut ratios = serde_json::Map::new();
    for (si, &(r, n, k)) in shapes().iter().enumerate() {
        let name = shape_name(r, n, k);
        if !selected(&name) {
            continue;
        }
        let bytes = (r * n * 4) as f64;
        let base = baselines.as_ref().and_then(|b| b.get(&name));
        let sorted = baselines
            .as_ref()
            .and_then(|b| b.get(&format!("{name} sorted")));
        let headline = si == 0;
        let variants: &[bool] = if headline { &[false, true] } else { &[false] };
        for &hata in variants {
            let m = match measure(&dev, &topk, (r, n, k), hata, headline, &mut rng) {
                Ok(m) => m,
                Err(e) => {
                    println!("{name}: {e}");
                    continue;
                }
            };
            let tag = if hata { " hata-scores" } else { "" };
            if let Some(ok) = m.checked {
                checks.insert(format!("{name}{tag}"), ok.into());
                if !ok {
                    println!("{name}{tag}: OUTPUT DIFFERS FROM THE REFERENCE");
                }
            }
            if let Some(b) = base {
                ratios.insert(
                    format!("{name}{tag} vs torch-topk"),
                    b.ratio(m.topk_ms).into(),
                );
            }
            if let Some(b) = sorted {
                ratios.insert(
                    format!("{name}{tag} vs torch-topk-sorted"),
                    b.ratio(m.topk_ms).into(),
                );
            }
            rows.push(Row {
                name: format!("kiln {name}{tag}"),
                work: bytes,
                median_ms: m.topk_ms,
                rate: bytes / m.topk_ms / 1e6,
                vs: base.map(|b| b.vs(m.topk_ms)),
                roof: Roof::DeviceMemory,
            });
            if headline {
                rows.push(Row {
                    name: format!("kiln {name}{tag} pass 1 only (topk_hist)"),
                    work: bytes,
                    median_ms: m.pass1_ms,
                    rate: bytes / m.pass1_ms / 1e6,
                    vs: None,
                    roof: Roof::DeviceMemory,
                });
            }
        }
        for b in [base, sorted].into_iter().flatten() {
            rows.push(Row {
                name: format!("{} {name}", b.baseline),
                work: bytes,
                median_ms: b.median_ms,
                rate: bytes / b.median_ms / 1e6,
                vs: None,
                roof: Roof::DeviceMemory,
            });
        }
    }
    let extra = serde_json::json!({
        "checked_against_reference": checks,
        "ratios": ratios,
        "chunk_rule": "default_chunk (BLOCKS_PER_SM blocks per SM over all rows)",
        "baseline_file": std::env::var(BASELINE_ENV).ok(),
    });
    report_with("topk", &dev, &rows, extra);
}
