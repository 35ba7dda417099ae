//! The Chelsea part of `kiln demo`: fidelity of attention over the merged cache on the
//! planted-structure workload (output error against dense attention at 50%, 75% and 80%
//! reduction, with and without the `log n` bias, next to the recent-tokens and
//! evenly-spaced baselines at the same memory), and on a GPU its speed: compression
//! throughput and decode over the 80%-reduced cache against dense decoding.

use std::fmt::Write as _;

use crate::chelsea::fidelity::{evaluate, table, verdict, Setting};
use crate::chelsea::speed::{measure, SpeedCase};
use crate::workload::{generate, WorkloadSpec};
use kiln_runtime::Device;

/// Runs the Chelsea demo on `device` (a small shape on the emulator) and returns its report.
pub fn run(device: &Device) -> Result<String, String> {
    let gpu = device.is_gpu();
    let spec = WorkloadSpec::demo_decode(gpu);
    let (heads, kv_heads, seq, dim) = (spec.heads, spec.kv_heads, spec.seq, spec.dim);
    // chunks of 512 on the GPU's 32K-token cache, of 128 on the emulator's 1K tokens: the
    // sizes that beat both baselines there (see `plan::DEFAULT_ROUND_FRACTION`)
    let setting = Setting::with_chunk(if gpu { 512 } else { 128 });
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nChelsea (KV-cache merging by chunked soft matching) on the {}: planted-structure workload b1 h{heads}/{kv_heads} s{seq} d{dim}, chunks of {}, sink {}, recent {}",
        device.name(),
        setting.chunk,
        setting.sink,
        setting.recent
    );
    let wl = generate(&spec).map_err(|e| e.to_string())?;
    let rows = evaluate(device, &wl, setting, &[0.5, 0.75, 0.8]).map_err(|e| e.to_string())?;
    out.push_str(&table(&rows));
    let _ = writeln!(out, "{}", verdict(&rows));
    if gpu {
        for batch in [1u32, 8] {
            let case = SpeedCase {
                batch,
                seq: 131072,
                ratio: 0.8,
                chunk: 64,
            };
            let t = measure(device, case, (3, 20), None, 9).map_err(|e| e.to_string())?;
            let _ = writeln!(
                out,
                "speed b{batch} s131072, 80%: compression {:.3} ms ({:.2e} tokens/s); decode over the merged cache {:.3} ms vs dense {:.3} ms: {:.2}x",
                t.compress_ms,
                t.tokens_per_s(),
                t.merged_ms,
                t.dense_ms,
                t.speedup()
            );
        }
    } else {
        let _ = writeln!(
            out,
            "speed: measured on a GPU only (`cargo bench --bench chelsea`)"
        );
    }
    Ok(out)
}
