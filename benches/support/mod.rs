//! What the benches share: the device to measure on, a results table and the JSON file
//! under `bench-results/` (or `KILN_BENCH_DIR`).

#![allow(dead_code)]

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
    /// Name of the baseline row this one is compared with, and the ratio ours/baseline.
    pub vs: Option<(String, f64)>,
    /// The ceiling this row's rate is a percentage of.
    pub roof: Roof,
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
    let roof = roofline(device);
    let pct = |r: &Row| {
        100.0 * r.rate
            / match r.roof {
                Roof::DeviceMemory => roof.copy_gb_s,
                Roof::HostLink => roof.h2d_gb_s,
                Roof::TensorCores => roof.mma_bf16_tflops.unwrap_or(f64::NAN),
            }
    };
    println!(
        "{bench} on {} (roofline: copy {:.0} GB/s, pinned H2D {:.1} GB/s, mma.sync bf16 {:.0} TFLOP/s)",
        device.name(),
        roof.copy_gb_s,
        roof.h2d_gb_s,
        roof.mma_bf16_tflops.unwrap_or(f64::NAN)
    );
    println!(
        "{:<40} {:>10} {:>16} {:>7}  ratio",
        "measurement", "median ms", "rate", "% roof"
    );
    for r in rows {
        let ratio =
            r.vs.as_ref()
                .map(|(b, x)| format!("{:.3} of {b}", x))
                .unwrap_or_default();
        let rate = format!("{:.1} {}", r.rate, r.roof.unit());
        println!(
            "{:<40} {:>10.4} {:>16} {:>6.1}%  {ratio}",
            r.name,
            r.median_ms,
            rate,
            pct(r)
        );
    }
    let dir = std::env::var("KILN_BENCH_DIR").unwrap_or_else(|_| "bench-results".into());
    let _ = std::fs::create_dir_all(&dir);
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
    let path = format!("{dir}/{bench}-{slug}.json");
    let json = serde_json::json!({
        "bench": bench,
        "device": device.name(),
        "roofline": { "copy_gb_per_s": roof.copy_gb_s, "h2d_gb_per_s": roof.h2d_gb_s, "mma_bf16_tflops": roof.mma_bf16_tflops },
        "rows": rows.iter().map(|r| serde_json::json!({
            "name": r.name, "work": r.work, "median_ms": r.median_ms, "rate": r.rate, "unit": r.roof.unit(), "percent_of_roofline": pct(r),
            "baseline": r.vs.as_ref().map(|v| v.0.clone()), "ratio": r.vs.as_ref().map(|v| v.1),
        })).collect::<Vec<_>>(),
    });
    match std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")) {
        Ok(()) => println!("wrote {path}"),
        Err(e) => println!("could not write {path}: {e}"),
    }
}
