//! The HATA part of `kiln demo`: fidelity of the sparse decode step on the planted-structure
//! workload (recall of the exact top-k, output error against dense attention, next to the
//! exact top-k and recency selectors), and on a GPU its speed against dense decoding.

use std::fmt::Write as _;

use crate::hata::decoder::Budget;
use crate::hata::fidelity::{
    evaluate, held_out_decode_workload, host_recall, table, train_held_out, verdict,
};
use crate::hata::speed::measure;
use crate::hata::train::random_weights;
use crate::workload::{generate, WorkloadSpec};
use kiln_runtime::Device;

/// Held-out sequences the demo's hash weights are trained on.
const HELD_OUT: usize = 4;
/// Further sequences whose decode queries measure the weights' recall beside the one
/// evaluated sequence (whose few GQA groups make a noisy verdict on their own).
const EVAL_SEQUENCES: usize = 8;
/// Seed of the hash weights (random and the trained ones' start).
const WEIGHT_SEED: u64 = 5;

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
    // the random baseline is the trainer's starting point, so the comparison is training's
    let weights = random_weights(kv_heads, dim, 128, WEIGHT_SEED);
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
    let trained = train_held_out(trainer, &spec, (HELD_OUT, true), 128, 20, WEIGHT_SEED)
        .map_err(|e| e.to_string())?;
    let sets = [("random W", &weights[..]), ("trained W", &trained[..])];
    let rows =
        evaluate(device, &wl, &sets, 128, &budgets, (4, 16), true).map_err(|e| e.to_string())?;
    out.push_str(&table(&rows));
    let _ = writeln!(out, "{}", verdict(&rows));
    // the same weights on the decode queries of further sequences (host, float64)
    let eval =
        held_out_decode_workload(&spec, HELD_OUT, EVAL_SEQUENCES).map_err(|e| e.to_string())?;
    let mut line = format!(
        "held-out recall (float64 on the host, {} GQA groups of {EVAL_SEQUENCES} further sequences), random W → trained W:",
        EVAL_SEQUENCES * kv_heads
    );
    let mut wins = 0;
    for b in &budgets {
        let k = b.keys(seq as u32) as usize;
        let (r, t) = (
            host_recall(&eval, &weights, 128, k, (4, 16), true),
            host_recall(&eval, &trained, 128, k, (4, 16), true),
        );
        wins += usize::from(t >= r);
        let _ = write!(
            line,
            " {} {r:.3} → {t:.3};",
            crate::hata::fidelity::budget_label(b)
        );
    }
    let _ = writeln!(
        out,
        "{line} trained ≥ random at {wins}/{} budgets",
        budgets.len()
    );
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

#[cfg(test)]
mod tests {
    /// The HATA part of `kiln demo` on the emulator, printed:
    /// `cargo test --release -p kiln-algorithms hata_demo_on_the_emulator -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn hata_demo_on_the_emulator() {
        let report = super::run(&kiln_runtime::Device::emulator()).unwrap();
        println!("{report}");
    }
}
