//! The CLO part of `kiln demo`: fidelity of the head-wise approximate cache on a drifting
//! decode trajectory of the planted-structure workload (hit rate, output error against
//! dense attention and against the exact top-k), and on a GPU a decode step of a 2-layer
//! model over 256K tokens in mapped host memory against the two CPU-driven baselines.

use std::fmt::Write as _;

use crate::clo::fidelity::{run_study, study, table, RHO};
use crate::clo::model::Transfer;
use crate::clo::speed::{speed_model, step_speeds};
use kiln_runtime::Device;

/// Runs the CLO demo on `device` (a small shape on the emulator) and returns its report.
pub fn run(device: &Device) -> Result<String, String> {
    let gpu = device.is_gpu();
    let st = study(gpu, false);
    let s = &st.spec;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nCLO (KV cache in mapped host memory, head-wise approximate GPU cache, zero-copy gather) on the {}: planted-structure workload b1 h{}/{} s{} d{}, {} decode steps drifting with rho {RHO}, budget {} + {} recent, HATA weights trained on a held-out sequence",
        device.name(),
        s.heads,
        s.kv_heads,
        s.seq,
        s.dim,
        st.steps,
        st.cfg.budget,
        st.cfg.recent
    );
    let (rows, topk_vs_dense) = run_study(device, &st)?;
    out.push_str(&table(&rows));
    let _ = writeln!(
        out,
        "  (exact top-k attention itself is {topk_vs_dense:.4} from dense; eta 1 p 0 misses every lookup)"
    );
    if gpu {
        let mut model = speed_model(device, 2, 262_144, 2048, 64).map_err(|e| e.to_string())?;
        let transfers = [
            Transfer::ZeroCopy,
            Transfer::HostGather,
            Transfer::RowCopies,
        ];
        let speeds = step_speeds(device, &mut model, &transfers, (4, 12), 0.95)
            .map_err(|e| e.to_string())?;
        for t in &speeds {
            let _ = writeln!(
                out,
                "speed b1 h32/8 s262144 k2048, 2 layers, eta 0.9 p 2: {:?} step {:.3} ms, host CPU {:.3} ms, hit rate {:.3}",
                t.transfer, t.step_ms, t.host_cpu_ms, t.hit_rate
            );
        }
    } else {
        let _ = writeln!(
            out,
            "speed: measured on a GPU only (`cargo bench --bench clo`)"
        );
    }
    Ok(out)
}
