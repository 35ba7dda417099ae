//! CLO against its baselines, on the same card in the same run (B = 1, heads 32/8, D 128,
//! bf16, budget 2048 rows per KV head plus 64 recent, rbit 128):
//!
//! - gather: the zero-copy gather of 256 and 2048 scattered rows per KV head out of a
//!   256K-token mapped cache, against one pinned H2D memcpy of the same bytes (the PCIe
//!   roofline) and the CPU gather into pinned staging + that memcpy (baseline (a)).
//! - decode steps at S = 256K (4 real layers) and 1M (2 real layers; 4 GiB of host cache per
//!   layer), per-step figures scaled to a 32-layer model (×32 / layers): CLO (one graph
//!   replay) against (a) CPU gather + one memcpy and (b) one memcpy per row, with the same
//!   selection and hits, at η = 0.9, p = 2 and with every lookup missing (η = 1, p = 0);
//!   device time, host CPU time and wall time per step, hit rate. (c) the whole cache on
//!   the GPU: dense flash-decoding and a HATA step, one layer ×32.
//! - hit rate and step time per η ∈ {0.8, 0.9, 0.95} and p ∈ {1, 2, 4} at S = 256K.
//! - fidelity on the planted-structure workload (`clo::fidelity::study`: b1 h32/8 s32768
//!   d128, 48 drifting decode steps, budget 2048 + 64, trained HATA weights): hit rate and
//!   output error against dense attention and against the exact top-k, per η and p.
//!
//! Writes `clo-<device>.json`. Run: `cargo bench --bench clo` (needs a GPU; a filter such as
//! `s262144` keeps the matching rows).

mod support;

use kiln::algorithms::clo::fidelity::{run_study, study, table, RHO};
use kiln::algorithms::clo::model::Transfer;
use kiln::algorithms::clo::speed::{
    gather_bandwidth, resident_speeds, speed_model, step_speeds, StepSpeed,
};
use support::{gpu, report_with, selected, Roof, Row};

const LAYERS_MODELLED: f64 = 32.0;
const BUDGET: u32 = 2048;

fn main() {
    let Some(dev) = gpu() else { return };
    let mut rows = Vec::new();
    let mut extra_steps = Vec::new();
    for per_head in [256u32, 2048] {
        let name = format!("gather {per_head} rows x 8 heads s262144");
        if !selected(&name) {
            continue;
        }
        let g = match gather_bandwidth(&dev, 262_144, per_head, 8, 128, 50) {
            Ok(g) => g,
            Err(e) => {
                println!("{name}: {e}");
                continue;
            }
        };
        let memcpy_name = format!("pinned H2D memcpy, same bytes ({name})");
        println!(
            "{name}: {:.2} MiB; zero-copy {:.4} ms ({:.1} GB/s), memcpy {:.4} ms ({:.1} GB/s): {:.3} of the memcpy; CPU gather {:.4} ms + memcpy = {:.1} GB/s",
            g.bytes / (1 << 20) as f64,
            g.zero_copy_ms,
            g.gb_s(g.zero_copy_ms),
            g.memcpy_ms,
            g.gb_s(g.memcpy_ms),
            g.memcpy_ms / g.zero_copy_ms,
            g.host_gather_ms,
            g.gb_s(g.host_gather_ms + g.memcpy_ms)
        );
        rows.push(Row {
            name: format!("clo zero-copy {name}"),
            work: g.bytes,
            median_ms: g.zero_copy_ms,
            rate: g.gb_s(g.zero_copy_ms),
            vs: Some((memcpy_name.clone(), g.memcpy_ms / g.zero_copy_ms)),
            roof: Roof::HostLink,
        });
        rows.push(Row {
            name: format!("(a) CPU gather + memcpy {name}"),
            work: g.bytes,
            median_ms: g.host_gather_ms + g.memcpy_ms,
            rate: g.gb_s(g.host_gather_ms + g.memcpy_ms),
            vs: Some((
                memcpy_name.clone(),
                g.memcpy_ms / (g.host_gather_ms + g.memcpy_ms),
            )),
            roof: Roof::HostLink,
        });
        rows.push(Row {
            name: memcpy_name,
            work: g.bytes,
            median_ms: g.memcpy_ms,
            rate: g.gb_s(g.memcpy_ms),
            vs: None,
            roof: Roof::HostLink,
        });
    }
    let transfers = [
        Transfer::ZeroCopy,
        Transfer::HostGather,
        Transfer::RowCopies,
    ];
    for (seq, layers) in [(262_144u32, 4u32), (1_048_576, 2)] {
        let shape = format!("b1 h32/8 s{seq} d128 k{BUDGET}");
        if !selected(&shape) {
            continue;
        }
        let steps = 16usize;
        let warmup = 4usize;
        let sweep = 3 * 3 * (warmup + 8);
        let mut model = match speed_model(
            &dev,
            layers,
            seq,
            BUDGET,
            (2 * (warmup + steps) + sweep) as u32,
        ) {
            Ok(m) => m,
            Err(e) => {
                println!("{shape}: {e}");
                continue;
            }
        };
        let scale = LAYERS_MODELLED / layers as f64;
        for (label, eta, p) in [("eta 0.9 p 2", 0.9, 2.0), ("every lookup misses", 1.0, 0.0)] {
            let run = model
                .set_thresholds(eta, p)
                .and_then(|_| step_speeds(&dev, &mut model, &transfers, (warmup, steps), RHO));
            let speeds = match run {
                Ok(s) => s,
                Err(e) => {
                    println!("{shape} {label}: {e}");
                    continue;
                }
            };
            let ours = &speeds[0];
            let best_base = speeds[1..]
                .iter()
                .map(|s| s.step_ms)
                .fold(f64::INFINITY, f64::min);
            for s in &speeds {
                println!(
                    "{shape} {label}: {:?}: step {:.3} ms ({layers} layers; {:.2} ms for 32), host CPU {:.3} ms ({:.3} for 32), wall {:.3} ms, hit rate {:.3}",
                    s.transfer,
                    s.step_ms,
                    s.step_ms * scale,
                    s.host_cpu_ms,
                    s.host_cpu_ms * scale,
                    s.wall_ms,
                    s.hit_rate
                );
                extra_steps.push(step_json(&shape, label, layers, scale, s));
            }
            let base_name = |t: Transfer| format!("clo step {t:?} {shape} {label} (x32 layers)");
            for s in &speeds {
                let vs = if s.transfer == Transfer::ZeroCopy {
                    Some((
                        "the better of (a)/(b)".to_string(),
                        best_base / ours.step_ms,
                    ))
                } else {
                    None
                };
                rows.push(Row {
                    name: base_name(s.transfer),
                    work: 1.0,
                    median_ms: s.step_ms * scale,
                    rate: 1e3 / (s.step_ms * scale),
                    vs,
                    roof: Roof::HostLink,
                });
            }
            println!(
                "{shape} {label}: CLO {:.2}x the better baseline's throughput; host CPU {:.1}x less than (a)",
                best_base / ours.step_ms,
                speeds[1].host_cpu_ms / ours.host_cpu_ms.max(1e-9)
            );
        }
        if seq == 262_144 {
            for eta in [0.8, 0.9, 0.95] {
                for p in [1.0, 2.0, 4.0] {
                    let label = format!("eta {eta} p {p}");
                    let run = model.set_thresholds(eta, p).and_then(|_| {
                        step_speeds(&dev, &mut model, &[Transfer::ZeroCopy], (warmup, 8), RHO)
                    });
                    match run {
                        Ok(s) => {
                            println!(
                                "{shape} sweep {label}: step {:.3} ms ({:.2} for 32 layers), hit rate {:.3}",
                                s[0].step_ms,
                                s[0].step_ms * scale,
                                s[0].hit_rate
                            );
                            extra_steps.push(step_json(&shape, &label, layers, scale, &s[0]));
                        }
                        Err(e) => println!("{shape} sweep {label}: {e}"),
                    }
                }
            }
        }
        match resident_speeds(&dev, &model, BUDGET, 20) {
            Ok((dense, hata)) => {
                println!(
                    "{shape}: (c) all KV on the GPU, per layer: dense decode {dense:.4} ms, HATA step {hata:.4} ms; x32: {:.2} / {:.2} ms",
                    dense * 32.0,
                    hata * 32.0
                );
                for (what, ms) in [("dense decode", dense), ("HATA step", hata)] {
                    rows.push(Row {
                        name: format!("(c) {what}, KV on the GPU {shape} (x32 layers)"),
                        work: 1.0,
                        median_ms: ms * 32.0,
                        rate: 1e3 / (ms * 32.0),
                        vs: None,
                        roof: Roof::HostLink,
                    });
                }
                extra_steps.push(serde_json::json!({
                    "shape": shape, "resident_dense_ms_per_layer": dense, "resident_hata_ms_per_layer": hata,
                }));
            }
            Err(e) => println!("{shape} (c): {e}"),
        }
    }
    let mut fidelity = Vec::new();
    if selected("fidelity") {
        let st = study(true, true);
        match run_study(&dev, &st) {
            Ok((r, topk_vs_dense)) => {
                println!(
                    "fidelity, workload b1 h32/8 s32768 d128, budget {} + {} recent, {} steps, rho {RHO}, trained HATA weights (eta 1 p 0: every lookup misses; exact top-k is {topk_vs_dense:.4} from dense):\n{}",
                    st.cfg.budget,
                    st.cfg.recent,
                    st.steps,
                    table(&r)
                );
                fidelity.push(serde_json::json!({ "exact_topk_vs_dense": topk_vs_dense }));
                fidelity.extend(r.iter().map(|x| {
                    serde_json::json!({
                        "eta": x.eta, "p": x.p, "hit_rate": x.hit_rate,
                        "err_vs_dense": x.err_dense, "err_vs_exact_topk": x.err_topk,
                    })
                }));
            }
            Err(e) => println!("fidelity: {e}"),
        }
    }
    report_with(
        "clo",
        &dev,
        &rows,
        serde_json::json!({ "steps": extra_steps, "fidelity": fidelity,
            "note": "step rows: rate = tokens/s of a 32-layer model (measured layers scaled x32/layers); gather rows: GB/s vs the pinned H2D roofline" }),
    );
}

fn step_json(
    shape: &str,
    label: &str,
    layers: u32,
    scale: f64,
    s: &StepSpeed,
) -> serde_json::Value {
    serde_json::json!({
        "shape": shape, "setting": label, "transfer": format!("{:?}", s.transfer),
        "layers_measured": layers, "step_ms": s.step_ms, "step_ms_32_layers": s.step_ms * scale,
        "host_cpu_ms": s.host_cpu_ms, "host_cpu_ms_32_layers": s.host_cpu_ms * scale,
        "wall_ms": s.wall_ms, "hit_rate": s.hit_rate,
    })
}
