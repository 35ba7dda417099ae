//! The AdaCluster part of `kiln demo`: fidelity against dense attention on the video
//! workload next to the window and Q-only k-means baselines at the same key budget, and on a
//! GPU the speed of a CogVideoX-sized layer against our dense flash attention.

use std::fmt::Write as _;
use std::time::Instant;

use super::fidelity::{evaluate, table, verdict};
use super::layer::{AdaClusterAttention, AdaClusterConfig, AdaShape};
use crate::attention::prefill::{Prefill, PrefillCall};
use crate::workload::video::{generate_video, VideoSpec};
use half::bf16;
use kiln_runtime::tune::Store;
use kiln_runtime::{timing, Device};

/// The demo's fidelity shape: 4 × 8 × 8 grid tokens and 8 text tokens, 2 heads of 64 on the
/// emulator; 8 × 16 × 16 + 8, 4 heads on a GPU.
pub fn demo_spec(gpu: bool) -> VideoSpec {
    if gpu {
        VideoSpec::small(8, 16, 16, 4, 64)
    } else {
        VideoSpec::small(4, 8, 8, 2, 64)
    }
}

/// Runs the AdaCluster demo on `device` and returns its report.
pub fn run(device: &Device) -> Result<String, String> {
    let gpu = device.is_gpu();
    let spec = demo_spec(gpu);
    let config = AdaClusterConfig::default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nAdaCluster (clustered sparse attention for video DiTs) on the {}: video workload b1 h{} s{} ({}×{}×{} grid + {} text) d{}, top-p 0.9",
        device.name(),
        spec.heads,
        spec.seq(),
        spec.frames,
        spec.height,
        spec.width,
        spec.text_tokens,
        spec.dim
    );
    let rows = evaluate(device, &spec, &config).map_err(|e| e.to_string())?;
    out.push_str(&table(&rows));
    let _ = writeln!(out, "{}", verdict(&rows));
    if gpu {
        let spec = VideoSpec::cogvideox();
        let wl = generate_video(&spec).map_err(|e| e.to_string())?;
        let up =
            |v: &[f32]| device.upload(&v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>());
        let (q, k, v) = (
            up(&wl.q).map_err(|e| e.to_string())?,
            up(&wl.k).map_err(|e| e.to_string())?,
            up(&wl.v).map_err(|e| e.to_string())?,
        );
        let shape = AdaShape {
            batch: 1,
            heads: spec.heads as u32,
            seq: spec.seq() as u32,
            dim: spec.dim as u32,
        };
        let mut layer =
            AdaClusterAttention::<bf16>::new(device, shape, config).map_err(|e| e.to_string())?;
        let mut o = device
            .zeros::<bf16>(shape.len())
            .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        layer
            .forward(&q, &k, &v, &mut o)
            .map_err(|e| e.to_string())?;
        device.synchronize().map_err(|e| e.to_string())?;
        let first = t0.elapsed().as_secs_f64() * 1e3;
        let ours = timing::time(device, 2, 10, || Ok(layer.forward(&q, &k, &v, &mut o)?))
            .map_err(|e| e.to_string())?;
        let prefill = Prefill::new(device, kiln_codegen::Dtype::Bf16, Store::default_location());
        let call = PrefillCall {
            batch: 1,
            heads: shape.heads,
            kv_heads: shape.heads,
            s_q: shape.seq,
            s_kv: shape.seq,
            dim: shape.dim,
            causal: false,
        };
        let mut od = device
            .zeros::<bf16>(shape.len())
            .map_err(|e| e.to_string())?;
        let mut lse = device
            .zeros::<f32>(shape.heads as usize * shape.seq as usize)
            .map_err(|e| e.to_string())?;
        let scale = 1.0 / (shape.dim as f32).sqrt();
        let dense = timing::time(device, 1, 5, || {
            Ok(prefill.run(&call, &q, &k, &v, scale, &mut od, &mut lse, None)?)
        })
        .map_err(|e| e.to_string())?;
        let _ = writeln!(
            out,
            "speed CogVideoX b1 h30 s17776 d64: first call (cluster-count search) {first:.1} ms; steady {:.2} ms vs our dense flash attention {:.2} ms: {:.2}x; density {:.3}",
            ours.median_ms,
            dense.median_ms,
            dense.median_ms / ours.median_ms,
            layer.density().map_err(|e| e.to_string())?
        );
    } else {
        let _ = writeln!(
            out,
            "speed: measured on a GPU only (`cargo bench --bench adacluster`)"
        );
    }
    Ok(out)
}
