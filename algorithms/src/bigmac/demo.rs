//! The BigMac part of `kiln demo`: both MoE structures on the same tokens against the
//! float64 reference, their dispatch widths (what an all-to-all would move per routed
//! token), and on a GPU their layer times at a DeepSeekMoE-like size on one card.

use std::fmt::Write as _;

use super::checks::random_weights;
use super::layer::{MoeLayer, MoeShape, Structure};
use super::parallel::ParallelMoeLayer;
use super::reference;
use crate::verify::{rel_err, Rng};
use half::bf16;
use kiln_runtime::comm::CommGroup;
use kiln_runtime::{timing, Device};
use std::sync::Arc;

/// Runs the BigMac demo on `device` and returns its report.
pub fn run(device: &Device) -> Result<String, String> {
    let shape = MoeShape {
        hidden: 256,
        low: 64,
        experts: 16,
        top_k: 4,
    };
    let tokens = 256usize;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nBigMac (MoE layer, DCCA) vs the fine-grained CDAC peer on the {}: {tokens} tokens, h {}, r·h {}, {} experts, top-{}, bf16",
        device.name(),
        shape.hidden,
        shape.low,
        shape.experts,
        shape.top_k
    );
    let mut rng = Rng::new(5);
    let x: Vec<bf16> = rng
        .f32s(tokens * shape.hidden as usize)
        .into_iter()
        .map(|v| bf16::from_f32(2.0 * v))
        .collect();
    let xf: Vec<f64> = x.iter().map(|v| v.to_f64()).collect();
    let xd = device.upload(&x).map_err(|e| e.to_string())?;
    for s in [Structure::Cdac, Structure::BigMac] {
        let w = random_weights::<bf16>(&mut rng, s, shape);
        let mut layer = MoeLayer::new(device, s, shape, &w, None).map_err(|e| e.to_string())?;
        let y = layer.forward(&xd).map_err(|e| e.to_string())?;
        let routing = layer.routing().ok_or("no routing")?;
        let ids = device.download(&routing.ids).map_err(|e| e.to_string())?;
        let gw: Vec<f64> = device
            .download(&routing.weights)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|&v| v as f64)
            .collect();
        let wide = |v: &[bf16]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
        let rw = reference::Weights {
            up: &wide(&w.up),
            down: &wide(&w.down),
            descend: &wide(&w.descend),
            ascend: &wide(&w.ascend),
        };
        let round = |v: f64| bf16::from_f64(v).to_f64();
        let want = reference::layer(s, &shape, &xf, &rw, (&ids, &gw), &round);
        let got: Vec<f64> = wide(&device.download(&y).map_err(|e| e.to_string())?);
        let params = w.up.len() + w.down.len() + w.descend.len() + w.ascend.len();
        let _ = writeln!(
            out,
            "{s:?}: output error vs float64 {:.2e}; dispatch width {} ({} bytes per routed token each way); {} expert + projection weights",
            rel_err(&got, &want),
            shape.dispatch_width(s),
            2 * shape.dispatch_width(s),
            params
        );
    }
    let _ = writeln!(
        out,
        "BigMac moves {:.2}x the all-to-all bytes of CDAC (r = {:.2})",
        shape.low as f64 / shape.hidden as f64,
        shape.low as f64 / shape.hidden as f64
    );
    // expert parallelism: two ranks (GPUs over NCCL when there are two, else emulated), the
    // same tokens split between them, the same router for both structures
    let group = if device.is_gpu() && Device::gpu_count() >= 2 {
        CommGroup::gpus(2)
    } else {
        CommGroup::emulated(2)
    };
    match group {
        Err(e) => {
            let _ = writeln!(out, "expert parallelism skipped: {e}");
        }
        Ok(group) => {
            let group = Arc::new(group);
            let gate = random_weights::<bf16>(&mut rng, Structure::Cdac, shape).gate;
            let half_rows = tokens / 2 * shape.hidden as usize;
            let mut bytes = Vec::new();
            for s in [Structure::Cdac, Structure::BigMac] {
                let mut w = random_weights::<bf16>(&mut rng, s, shape);
                w.gate = gate.clone();
                let mut layer = ParallelMoeLayer::new(group.clone(), s, shape, &w, None)
                    .map_err(|e| e.to_string())?;
                let mut xs = Vec::new();
                let mut ys = Vec::new();
                for r in 0..2 {
                    let d = group.device(r);
                    xs.push(
                        d.upload(&x[r * half_rows..][..half_rows])
                            .map_err(|e| e.to_string())?,
                    );
                    ys.push(d.zeros::<bf16>(half_rows).map_err(|e| e.to_string())?);
                }
                layer
                    .forward(
                        &xs.iter().collect::<Vec<_>>(),
                        &mut ys.iter_mut().collect::<Vec<_>>(),
                    )
                    .map_err(|e| e.to_string())?;
                let t = layer.traffic();
                let _ = writeln!(
                    out,
                    "{s:?} over 2 ranks ({}): the all-to-alls moved {} bytes to the other rank and {} in all",
                    group.backend_name(),
                    t.token_bytes_to_peers(),
                    t.token_bytes()
                );
                bytes.push(t.token_bytes_to_peers());
            }
            let _ = writeln!(
                out,
                "measured: BigMac's all-to-all moved {:.2}x CDAC's bytes between ranks",
                bytes[1] as f64 / bytes[0].max(1) as f64
            );
        }
    }
    if device.is_gpu() {
        let big = MoeShape {
            hidden: 2048,
            low: 512,
            experts: 64,
            top_k: 6,
        };
        let tokens = 8192usize;
        let x: Vec<bf16> = rng
            .f32s(tokens * big.hidden as usize)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let xd = device.upload(&x).map_err(|e| e.to_string())?;
        for s in [Structure::Cdac, Structure::BigMac] {
            let w = random_weights::<bf16>(&mut rng, s, big);
            let mut layer = MoeLayer::new(device, s, big, &w, None).map_err(|e| e.to_string())?;
            let mut y = device.zeros::<bf16>(xd.len()).map_err(|e| e.to_string())?;
            let t = timing::time(device, 2, 10, || layer.forward_into(&xd, &mut y))
                .map_err(|e| e.to_string())?;
            let _ = writeln!(
                out,
                "speed {s:?} {tokens} tokens h 2048 r·h 512, 64 experts top-6 (one GPU, no all-to-all): {:.3} ms per layer",
                t.median_ms
            );
        }
    }
    Ok(out)
}
