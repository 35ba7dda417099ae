//! The HATA part of `kiln demo`: fidelity of the sparse decode step on the planted-structure
//! workload (recall of the exact top-k, output error against dense attention, next to the
//! exact top-k and recency selectors), and on a GPU its speed against dense decoding.

use std::fmt::Write as _;

use crate::hata::decoder::Budget;
use crate::hata::fidelity::{evaluate, table, train_held_out, verdict};
use crate::hata::speed::measure;
use crate::workload::{generate, Rng, WorkloadSpec};
use kiln_runtime::Device;

/// Held-out sequences the demo's hash weights are trained on.
const HELD_OUT: usize = 4;

/// Runs the HATA demo on `device` (a small shape on the emulator) and returns its report.
pub fn run(device: &Device) -> Result<String, String> {
    let gpu = device.is_gpu();
    let spec = WorkloadSpec::demo_decode(gpu);
    let (heads, kv_heads, seq, dim) = (spec.heads, spec.kv_heads, spec.seq, spec.dim);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nHATA (hash-aware top-k decode attention) on the {}: planted-structure workload b1 h{heads}/{kv_heads} s{seq} d{dim}, rbit 128, keys centred on their mean, random Gaussian hash weights and weights trained on {HELD_OUT} held-out sequences",
        device.name()
    );
    let wl = generate(&spec).map_err(|e| e.to_string())?;
    let mut rng = Rng::new(3);
    let weights: Vec<f32> = (0..kv_heads * dim * 128).map(|_| rng.normal()).collect();
    let budgets: Vec<Budget> = if gpu {
        vec![
            Budget::Count(512),
            Budget::Count(1024),
            Budget::Count(2048),
            Budget::Ratio(0.016),
        ]
    } else {
        vec![Budget::Count(32), Budget::Count(64), Budget::Ratio(0.1)]
    };
    // keys centred on their mean, 20 epochs on 4 held-out sequences: with the training
    // kernels on a GPU, with the float64 reference trainer (their specification) on the
    // emulator, where the kernels would take minutes
    let trainer = gpu.then_some(device);
    let trained =
        train_held_out(trainer, &spec, (HELD_OUT, true), 128, 20, 5).map_err(|e| e.to_string())?;
    let sets = [("random W", &weights[..]), ("trained W", &trained[..])];
    let rows =
        evaluate(device, &wl, &sets, 128, &budgets, (4, 16), true).map_err(|e| e.to_string())?;
    out.push_str(&table(&rows));
    let _ = writeln!(out, "{}", verdict(&rows));
    if gpu {
        for (batch, seq) in [(1u32, 131072u32), (8, 131072)] {
            let t = measure(device, batch, seq, Budget::Ratio(0.016), (3, 20), 9)
                .map_err(|e| e.to_string())?;
            let _ = writeln!(
                out,
                "speed b{batch} s{seq} budget 1.6%: step {:.3} ms (append + score + top-k + attention, one graph replay; {:.3} ms launched one by one) vs dense decode {:.3} ms: {:.2}x",
                t.layer_step, t.eager_step, t.dense, t.speedup()
            );
        }
    } else {
        let _ = writeln!(
            out,
            "speed: measured on a GPU only (`cargo bench --bench hata`)"
        );
    }
    Ok(out)
}
