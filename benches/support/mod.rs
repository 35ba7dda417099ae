//! What the benches share: the device to measure on, a results table and the JSON file
//! under `bench-results/` (or `KILN_BENCH_DIR`).

#![allow(dead_code)]

use kiln::runtime::Device;

/// One measured row.
pub struct Row {
    pub name: String,
    pub bytes: f64,
    pub median_ms: f64,
    pub gb_s: f64,
    /// Name of the baseline row this one is compared with, and the ratio ours/baseline.
    pub vs: Option<(String, f64)>,
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

/// Prints the table and writes `<dir>/<bench>-<device>.json`.
pub fn report(bench: &str, device: &Device, rows: &[Row]) {
    println!("{bench} on {}", device.name());
    println!(
        "{:<34} {:>10} {:>10} {:>10}  ratio",
        "measurement", "MiB", "median ms", "GB/s"
    );
    for r in rows {
        let ratio =
            r.vs.as_ref()
                .map(|(b, x)| format!("{:.3} of {b}", x))
                .unwrap_or_default();
        println!(
            "{:<34} {:>10.0} {:>10.4} {:>10.1}  {ratio}",
            r.name,
            r.bytes / (1 << 20) as f64,
            r.median_ms,
            r.gb_s
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
        "rows": rows.iter().map(|r| serde_json::json!({
            "name": r.name, "bytes": r.bytes, "median_ms": r.median_ms, "gb_per_s": r.gb_s,
            "baseline": r.vs.as_ref().map(|v| v.0.clone()), "ratio": r.vs.as_ref().map(|v| v.1),
        })).collect::<Vec<_>>(),
    });
    match std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")) {
        Ok(()) => println!("wrote {path}"),
        Err(e) => println!("could not write {path}: {e}"),
    }
}
