//! What the benches share: the device to measure on, a results table and the JSON file
//! under `bench-results/` (or `KILN_BENCH_DIR`), SVG plots next to it ([`plot`]), and baseline
//! times measured by PyTorch outside the process ([`baseline`], `KILN_BASELINE_JSON`).

#![allow(dead_code)]

pub mod baseline;
pub mod plot;

use std::path::PathBuf;

use kiln::runtime::roofline::Roofline;
use kiln::runtime::Device;

/// Which measured ceiling a row's rate is compared with (and so its unit).
#[derive(Clone, Copy)]
pub enum Roof {
    /// Device memory (the card's device-to-device copy); the rate is in GB/s.
    DeviceMemory,
    /// The host link (a pinned host-to-device copy); GB/s.
    HostLink,
    /// The tensor cores (a Kiln `mma.sync` kernel); the rate is in TFLOP/s.
    TensorCores,
}

impl Roof {
    fn unit(self) -> &'static str {
        match self {
            Roof::TensorCores => "TFLOP/s",
            _ => "GB/s",
        }
    }
}

/// One measured row.
pub struct Row {
    pub name: String,
    /// Bytes moved, or floating-point operations done, per run.
    pub work: f64,
    pub median_ms: f64,
    /// GB/s or TFLOP/s (see [`Roof`]).
    pub rate: f64,
    /// Name of the baseline row this one is compared with, and the ratio ours/baseline by rate
    /// (baseline time / our time: above 1 is faster than the baseline).
    pub vs: Option<(String, f64)>,
    /// The ceiling this row's rate is a percentage of.
    pub roof: Roof,
}

/// `n` random bf16 values: fresh ones for small inputs; for large ones a random block of 16M
/// repeated (timings do not depend on the values, and filling gigabytes on the host one value
/// at a time would take minutes).
pub fn random_bf16(rng: &mut kiln::algorithms::verify::Rng, n: usize) -> Vec<half::bf16> {
    let block: Vec<half::bf16> = rng
        .f32s(n.min(1 << 24))
        .into_iter()
        .map(half::bf16::from_f32)
        .collect();
    block.iter().copied().cycle().take(n).collect()
}

/// Whether the row or shape `name` is to be measured: every one, unless the bench was given a
/// filter (`cargo bench --bench hata -- s131072`, the first argument not starting with `-`),
/// which keeps the names that contain it.
pub fn selected(name: &str) -> bool {
    std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .is_none_or(|f| name.contains(&f))
}

/// How many copies of `bytes` of inputs a bench rotates through so that every timed run
/// reads device memory, not L2 (together above 512 MiB; at most 16).
pub fn rotations(bytes: usize) -> usize {
    (512usize << 20).div_ceil(bytes.max(1)).clamp(1, 16)
}

/// The GPU to measure on; `None` (after saying why) when there is none, unless
/// `KILN_REQUIRE_GPU=1`, which makes that a failure.
pub fn gpu() -> Option<Device> {
    match Device::from_env() {
        Ok(d) if d.is_gpu() => Some(d),
        Ok(d) => {
            println!(
                "skipped: this bench needs a GPU (found only the {})",
                d.name()
            );
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// The card's measured ceilings: stored by `kiln roofline`, else measured now.
pub fn roofline(device: &Device) -> Roofline {
    Roofline::load(&device.name())
        .unwrap_or_else(|| Roofline::measure(device).expect("measuring the roofline"))
}

/// Prints the table and writes `<dir>/<bench>-<device>.json`.
pub fn report(bench: &str, device: &Device, rows: &[Row]) {
    report_with(bench, device, rows, serde_json::Value::Null)
}

/// The folder results go to: `KILN_BENCH_DIR`, else `bench-results` (created if missing).
pub fn results_dir() -> PathBuf {
    let dir =
        PathBuf::from(std::env::var("KILN_BENCH_DIR").unwrap_or_else(|_| "bench-results".into()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// `<results dir>/<stem>-<device slug>.<ext>`: where a bench's JSON (`ext = "json"`) and plots
/// (`"svg"`) go, one file per bench and device.
pub fn results_path(stem: &str, device: &Device, ext: &str) -> PathBuf {
    let slug: String = device
        .name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    results_dir().join(format!("{stem}-{slug}.{ext}"))
}

/// [`report`] with `extra` (an object, e.g. the baseline library's version and the
/// correctness checks) stored under `"extra"` in the JSON.
pub fn report_with(bench: &str, device: &Device, rows: &[Row], extra: serde_json::Value) {
    let roof = roofline(device);
    // the share of the roofline; none for tensor-core rows when the matrix rate was not measured
    let pct = |r: &Row| {
        let ceiling = match r.roof {
            Roof::DeviceMemory => Some(roof.copy_gb_s),
            Roof::HostLink => Some(roof.h2d_gb_s),
            Roof::TensorCores => roof.mma_bf16_tflops,
        };
        ceiling.map(|c| 100.0 * r.rate / c)
    };
    let mma = match roof.mma_bf16_tflops {
        Some(t) => format!("{t:.0} TFLOP/s"),
        None => "not measured (run `kiln roofline` first)".to_string(),
    };
    println!(
        "{bench} on {} (roofline: copy {:.0} GB/s, pinned H2D {:.1} GB/s, mma.sync bf16 {mma})",
        device.name(),
        roof.copy_gb_s,
        roof.h2d_gb_s,
    );
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(40);
    println!(
        "{:<width$} {:>10} {:>16} {:>7}  ratio",
        "measurement", "median ms", "rate", "% roof"
    );
    for r in rows {
        let ratio =
            r.vs.as_ref()
                .map(|(b, x)| format!("{:.3} of {b}", x))
                .unwrap_or_default();
        let rate = format!("{:.1} {}", r.rate, r.roof.unit());
        let share = pct(r).map_or("n/a".to_string(), |p| format!("{p:.1}%"));
        println!(
            "{:<width$} {:>10.4} {:>16} {:>7}  {ratio}",
            r.name, r.median_ms, rate, share
        );
    }
    let path = results_path(bench, device, "json");
    let json = serde_json::json!({
        "bench": bench,
        "device": device.name(),
        "roofline": { "copy_gb_per_s": roof.copy_gb_s, "h2d_gb_per_s": roof.h2d_gb_s, "mma_bf16_tflops": roof.mma_bf16_tflops },
        "rows": rows.iter().map(|r| serde_json::json!({
            "name": r.name, "work": r.work, "median_ms": r.median_ms, "rate": r.rate, "unit": r.roof.unit(), "percent_of_roofline": pct(r),
            "baseline": r.vs.as_ref().map(|v| v.0.clone()), "ratio": r.vs.as_ref().map(|v| v.1),
        })).collect::<Vec<_>>(),
        "extra": extra,
    });
    match std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => println!("could not write {}: {e}", path.display()),
    }
}
