//! BigMac on one GPU, ours and the baseline in the same run. (1) The grouped GEMM — every
//! expert's rows in one launch — against cuBLAS on the same total work: a loop of one GEMM per
//! expert (its rows × K × N, as a framework without a grouped kernel runs MoE experts),
//! cuBLAS's grouped API (`cublasGemmGroupedBatchedEx`, one call for every expert, where the
//! cuBLAS has it), and one GEMM of all rows against a single weight (the same FLOPs with no grouping: an upper
//! bound); routed rows per expert drawn from a skewed (Zipf 0.8) law over 64 experts; bf16
//! inputs, f32 accumulation (the cuBLAS loop and single GEMM write f32, its grouped API and
//! ours bf16). (2) The whole MoE layer, CDAC
//! against BigMac (DCCA), at DeepSeekMoE-like sizes (h 2048, r 0.25, 64 experts, top-6) for
//! 4K–32K tokens: time per layer, its split (gate / permute / descend / experts / combine /
//! ascend), tokens/s, and the bytes an all-to-all would move per token (on one GPU there is
//! none); on an sm_90 GPU the Hopper grouped GEMM gets its own rows, and each layer is also
//! timed on the `mma.sync` grouped GEMM (before/after). (3) Expert parallelism over NCCL
//! (`ParallelMoeLayer`) on N = 1, 2, 4 of the visible
//! GPUs (one process drives them all), the same layer sizes with 4K and 16K tokens per GPU:
//! layer time (host wall clock over all GPUs), its split (gate / descend / permute / counts /
//! dispatch / experts / return / combine / ascend, the slowest GPU per stage), the all-to-all
//! bytes the group's counters measured (to other GPUs, and in total), and BigMac's throughput
//! against CDAC's. Writes `bigmac-<device>.json`.
//! Run: `cargo bench --bench bigmac` (needs a GPU; `KILN_REQUIRE_CUBLAS=1` makes a missing
//! cuBLAS a failure, `KILN_REQUIRE_NCCL=1` a missing NCCL; a filter such as `layer` or
//! `parallel` keeps the matching rows).

mod support;

use half::bf16;
use kiln::algorithms::bigmac::checks::random_weights;
use kiln::algorithms::bigmac::hopper::WgmmaGrouped;
use kiln::algorithms::bigmac::kernels::{grouped_gemm, GEMM_THREADS, TILE};
use kiln::algorithms::bigmac::layer::{MoeLayer, MoeShape, Structure};
use kiln::algorithms::bigmac::parallel::ParallelMoeLayer;
use kiln::algorithms::gemm::hopper::WgmmaGemm;
use kiln::algorithms::verify::Rng;
use kiln::runtime::blas::{Blas, Layout};
use kiln::runtime::comm::CommGroup;
use kiln::runtime::DeviceBuffer;
use kiln::runtime::{timing, Device, LaunchConfig};
use std::sync::Arc;
use support::{gpu, random_bf16, report_with, selected, Roof, Row};

/// Rows per expert for `slots` routed rows: a Zipf(0.8) share each, rounded, summing to `slots`.
fn expert_rows(slots: usize, experts: usize) -> Vec<usize> {
    let w: Vec<f64> = (1..=experts).map(|i| (i as f64).powf(-0.8)).collect();
    let total: f64 = w.iter().sum();
    let mut rows: Vec<usize> = w
        .iter()
        .map(|x| (x / total * slots as f64) as usize)
        .collect();
    let short = slots - rows.iter().sum::<usize>();
    rows[0] += short;
    rows
}

fn grouped_case(
    dev: &Device,
    blas: Option<&Blas>,
    (slots, k, n, experts): (usize, usize, usize, usize),
    rows_out: &mut Vec<Row>,
    json: &mut Vec<serde_json::Value>,
) -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("grouped gemm rows {slots} k {k} n {n} experts {experts}");
    if !selected(&name) {
        return Ok(());
    }
    let mut rng = Rng::new(3);
    let per = expert_rows(slots, experts);
    let mut start = vec![0u32];
    let mut blocks = vec![0u32];
    for &r in &per {
        start.push(start.last().unwrap() + r as u32);
        blocks.push(blocks.last().unwrap() + (r as u32).div_ceil(TILE));
    }
    let a = dev.upload(&random_bf16(&mut rng, slots * k))?;
    let w = dev.upload(&random_bf16(&mut rng, experts * k * n))?;
    let mut y = dev.zeros::<bf16>(slots * n)?;
    let (start_d, blocks_d, rows_d) = (
        dev.upload(&start)?,
        dev.upload(&blocks)?,
        dev.zeros::<u32>(1)?,
    );
    let kernel = grouped_gemm::spec()
        .t(kiln::codegen::Dtype::Bf16)
        .gather(false)
        .silu(false)
        .build(dev)?;
    let cfg = LaunchConfig {
        grid: (
            (n as u32).div_ceil(TILE),
            (slots as u32).div_ceil(TILE) + experts as u32,
            1,
        ),
        block: (GEMM_THREADS, 1, 1),
        dyn_shared_bytes: 0,
    };
    let ours = timing::time(dev, 3, 20, || {
        grouped_gemm::launch(
            &kernel,
            &cfg,
            &a,
            &rows_d,
            &w,
            &start_d,
            &blocks_d,
            &mut y,
            experts as u32,
            k as u32,
            n as u32,
        )
    })?;
    // the Hopper grouped GEMM on the same buffers (sm_90 only)
    let hopper = match WgmmaGemm::supported(dev) {
        true => {
            let g = WgmmaGrouped::new(dev, kiln::codegen::Dtype::Bf16, false)?;
            let pieces = blocks[experts];
            let t = timing::time(dev, 3, 20, || {
                g.run(
                    &a,
                    &w,
                    (&start_d, &blocks_d, experts as u32, pieces),
                    &mut y,
                    (k as u32, n as u32),
                )
            })?;
            Some(t.median_ms)
        }
        false => None,
    };
    let flops = 2.0 * slots as f64 * k as f64 * n as f64;
    if let Some(h) = hopper {
        println!("{name}: wgmma {h:.3} ms ({:.0} TFLOP/s)", flops / h / 1e9);
    }
    println!(
        "{name}: ours {:.3} ms ({:.0} TFLOP/s)",
        ours.median_ms,
        flops / ours.median_ms / 1e9
    );
    let mut entry = serde_json::json!({
        "shape": name, "rows_per_expert": per, "ours_ms": ours.median_ms,
        "ours_tflops": flops / ours.median_ms / 1e9,
    });
    let mut vs = None;
    if let Some(blas) = blas {
        // one GEMM per expert, each on its own buffers
        let mut parts = Vec::new();
        for &r in per.iter().filter(|&&r| r > 0) {
            parts.push((
                r,
                dev.upload(&random_bf16(&mut rng, r * k))?,
                dev.upload(&random_bf16(&mut rng, k * n))?,
                dev.zeros::<f32>(r * n)?,
            ));
        }
        let looped = timing::time(dev, 3, 20, || {
            for (r, pa, pw, pc) in parts.iter_mut() {
                blas.gemm_bf16(pa, pw, pc, *r, n, k, Layout::RowMajor)
                    .map_err(|e| kiln::runtime::RuntimeError::InvalidInput {
                        what: "cuBLAS",
                        reason: e.to_string(),
                    })?;
            }
            Ok(())
        })?;
        // cuBLAS's own grouped API (cuBLAS 12.5+), one call for every expert, bf16 C like
        // ours; a cuBLAS that refuses the call leaves its row out (said), not the bench
        let mut c_grouped = dev.zeros::<bf16>(slots * n)?;
        let grouped = match blas.grouped_gemm(&a, &w, &mut c_grouped, &per, k, n) {
            Ok(call) => match blas.run_grouped(&call) {
                Ok(()) => Some(
                    timing::time(dev, 3, 20, || {
                        blas.run_grouped(&call).map_err(|e| {
                            kiln::runtime::RuntimeError::InvalidInput {
                                what: "cuBLAS",
                                reason: e.to_string(),
                            }
                        })
                    })?
                    .median_ms,
                ),
                Err(e) => {
                    println!("{name}: cuBLAS refused its grouped GEMM: {e}");
                    None
                }
            },
            Err(e) => {
                println!("{name}: no cuBLAS grouped GEMM: {e}");
                None
            }
        };
        if let Some(g) = grouped {
            println!(
                "{name}: cuBLAS grouped API {g:.3} ms ({:.2}x ours)",
                g / ours.median_ms
            );
            entry["cublas_grouped_ms"] = g.into();
            entry["vs_cublas_grouped"] = (g / ours.median_ms).into();
            if let Some(h) = hopper {
                println!("{name}: wgmma {:.2} of the cuBLAS grouped API", g / h);
                entry["wgmma_vs_cublas_grouped"] = (g / h).into();
            }
            rows_out.push(Row {
                name: format!("cublas grouped api, {name}"),
                work: flops,
                median_ms: g,
                rate: flops / g / 1e9,
                vs: None,
                roof: Roof::TensorCores,
            });
        }
        let w1 = dev.upload(&random_bf16(&mut rng, k * n))?;
        let mut c1 = dev.zeros::<f32>(slots * n)?;
        let single = timing::time(dev, 3, 20, || {
            blas.gemm_bf16(&a, &w1, &mut c1, slots, n, k, Layout::RowMajor)
                .map_err(|e| kiln::runtime::RuntimeError::InvalidInput {
                    what: "cuBLAS",
                    reason: e.to_string(),
                })
        })?;
        println!(
            "{name}: cuBLAS loop {:.3} ms ({:.2}x ours), one GEMM of all rows {:.3} ms ({:.2}x ours)",
            looped.median_ms,
            looped.median_ms / ours.median_ms,
            single.median_ms,
            single.median_ms / ours.median_ms
        );
        entry["cublas_loop_ms"] = looped.median_ms.into();
        entry["cublas_single_ms"] = single.median_ms.into();
        entry["vs_cublas_loop"] = (looped.median_ms / ours.median_ms).into();
        entry["vs_cublas_single"] = (single.median_ms / ours.median_ms).into();
        vs = Some((
            "cublas per-expert loop".to_string(),
            looped.median_ms / ours.median_ms,
        ));
        if let Some(h) = hopper {
            println!(
                "{name}: wgmma {:.2} of the cuBLAS loop, {:.2} of one cuBLAS GEMM",
                looped.median_ms / h,
                single.median_ms / h
            );
            entry["wgmma_ms"] = h.into();
            entry["wgmma_vs_cublas_loop"] = (looped.median_ms / h).into();
            entry["wgmma_vs_cublas_single"] = (single.median_ms / h).into();
            rows_out.push(Row {
                name: format!("wgmma {name}"),
                work: flops,
                median_ms: h,
                rate: flops / h / 1e9,
                vs: Some((format!("cublas one gemm, {name}"), single.median_ms / h)),
                roof: Roof::TensorCores,
            });
        }
        rows_out.push(Row {
            name: format!("cublas one gemm, {name}"),
            work: flops,
            median_ms: single.median_ms,
            rate: flops / single.median_ms / 1e9,
            vs: None,
            roof: Roof::TensorCores,
        });
    }
    rows_out.push(Row {
        name,
        work: flops,
        median_ms: ours.median_ms,
        rate: flops / ours.median_ms / 1e9,
        vs,
        roof: Roof::TensorCores,
    });
    json.push(entry);
    Ok(())
}

fn layer_case(
    dev: &Device,
    tokens: usize,
    rows_out: &mut Vec<Row>,
    json: &mut Vec<serde_json::Value>,
) -> Result<(), Box<dyn std::error::Error>> {
    let shape = MoeShape {
        hidden: 2048,
        low: 512,
        experts: 64,
        top_k: 6,
    };
    let name = format!("layer tokens {tokens} h 2048 r 0.25 experts 64 top-6");
    if !selected(&name) {
        return Ok(());
    }
    let mut rng = Rng::new(9);
    let x = dev.upload(&random_bf16(&mut rng, tokens * 2048))?;
    let mut y = dev.zeros::<bf16>(tokens * 2048)?;
    let mut times = Vec::new();
    for s in [Structure::Cdac, Structure::BigMac] {
        let w = random_weights::<bf16>(&mut rng, s, shape);
        let mut layer = MoeLayer::new(dev, s, shape, &w, None)?;
        if layer.on_hopper() {
            // the same layer on the mma.sync grouped GEMM, for the before/after
            let mut old = MoeLayer::new(dev, s, shape, &w, None)?.without_hopper();
            let t = timing::time(dev, 2, 10, || old.forward_into(&x, &mut y))?;
            println!("{name} {s:?}: mma.sync grouped GEMM {:.3} ms", t.median_ms);
            json.push(serde_json::json!({
                "shape": name, "structure": format!("{s:?}"), "path": "mma.sync",
                "median_ms": t.median_ms,
            }));
        }
        let t = timing::time(dev, 2, 10, || layer.forward_into(&x, &mut y))?;
        let split = layer.forward_timed(&x, &mut y)?;
        println!("{name} {s:?}: stages {split:?}");
        let bytes = 2.0 * shape.top_k as f64 * shape.dispatch_width(s) as f64 * 2.0;
        println!(
            "{name} {s:?}: {:.3} ms ({:.3e} tokens/s); an all-to-all would move {bytes} bytes per token (dispatch + combine)",
            t.median_ms,
            tokens as f64 / (t.median_ms * 1e-3)
        );
        times.push(t.median_ms);
        json.push(serde_json::json!({
            "shape": name, "structure": format!("{s:?}"), "median_ms": t.median_ms,
            "path": if layer.on_hopper() { "wgmma" } else { "mma.sync" },
            "tokens_per_s": tokens as f64 / (t.median_ms * 1e-3),
            "all_to_all_bytes_per_token": bytes,
            "stages_ms": {
                "gate": split.gate_ms, "permute": split.permute_ms, "descend": split.descend_ms,
                "experts": split.experts_ms, "combine": split.combine_ms, "ascend": split.ascend_ms,
            },
        }));
    }
    // the work of a CDAC layer: two expert GEMMs per routed token
    let flops = 2.0 * 2.0 * (tokens * 6) as f64 * 2048.0 * 512.0;
    rows_out.push(Row {
        name: format!("bigmac {name}"),
        work: flops,
        median_ms: times[1],
        rate: flops / times[1] / 1e9,
        vs: Some((format!("cdac {name}"), times[0] / times[1])),
        roof: Roof::TensorCores,
    });
    rows_out.push(Row {
        name: format!("cdac {name}"),
        work: flops,
        median_ms: times[0],
        rate: flops / times[0] / 1e9,
        vs: None,
        roof: Roof::TensorCores,
    });
    Ok(())
}

/// The expert-parallel layer of both structures on `group`, `per_rank` tokens on every GPU.
fn parallel_case(
    dev: &Device,
    group: &Arc<CommGroup>,
    per_rank: usize,
    rows_out: &mut Vec<Row>,
    json: &mut Vec<serde_json::Value>,
) -> Result<(), Box<dyn std::error::Error>> {
    let n = group.ranks();
    let shape = MoeShape {
        hidden: 2048,
        low: 512,
        experts: 64,
        top_k: 6,
    };
    let name = format!("parallel gpus {n} tokens/gpu {per_rank} h 2048 r 0.25 experts 64 top-6");
    if !selected(&name) {
        return Ok(());
    }
    let mut rng = Rng::new(11);
    let xs: Vec<DeviceBuffer<bf16>> = (0..n)
        .map(|r| {
            group
                .device(r)
                .upload(&random_bf16(&mut rng, per_rank * 2048))
        })
        .collect::<Result<_, _>>()?;
    let mut ys: Vec<DeviceBuffer<bf16>> = (0..n)
        .map(|r| group.device(r).zeros::<bf16>(per_rank * 2048))
        .collect::<Result<_, _>>()?;
    let cdac_w = random_weights::<bf16>(&mut rng, Structure::Cdac, shape);
    let mut results = Vec::new();
    for s in [Structure::Cdac, Structure::BigMac] {
        let mut w = random_weights::<bf16>(&mut rng, s, shape);
        w.gate = cdac_w.gate.clone(); // the same routing in both structures
        let mut layer = ParallelMoeLayer::new(group.clone(), s, shape, &w, None)?;
        let xr: Vec<&DeviceBuffer<bf16>> = xs.iter().collect();
        let mut call =
            |layer: &mut ParallelMoeLayer<bf16>| -> Result<f64, Box<dyn std::error::Error>> {
                let t0 = std::time::Instant::now();
                layer.forward(&xr, &mut ys.iter_mut().collect::<Vec<_>>())?;
                group.synchronize()?;
                Ok(t0.elapsed().as_secs_f64() * 1e3)
            };
        for _ in 0..3 {
            call(&mut layer)?;
        }
        let mut times: Vec<f64> = (0..10)
            .map(|_| call(&mut layer))
            .collect::<Result<_, _>>()?;
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let split = layer.forward_timed(&xr, &mut ys.iter_mut().collect::<Vec<_>>())?;
        let traffic = layer.traffic().clone();
        let tokens = (n * per_rank) as f64;
        println!(
            "{name} {s:?}: {median:.3} ms ({:.3e} tokens/s over {}); all-to-all {:.1} MB to other GPUs, {:.1} MB in all (counts {} B)",
            tokens / (median * 1e-3),
            group.backend_name(),
            traffic.token_bytes_to_peers() as f64 / 1e6,
            traffic.token_bytes() as f64 / 1e6,
            traffic.counts.p2p_bytes_to_peers + traffic.counts.p2p_bytes_to_self,
        );
        println!(
            "{name} {s:?}: stages gate {:.3} / descend {:.3} / permute {:.3} / counts {:.3} / dispatch {:.3} / experts {:.3} / return {:.3} / combine {:.3} / ascend {:.3} ms (all-to-all {:.3} of {:.3})",
            split.gate_ms, split.descend_ms, split.permute_ms, split.counts_ms, split.dispatch_ms,
            split.experts_ms, split.return_ms, split.combine_ms, split.ascend_ms,
            split.all_to_all_ms(), split.total_ms()
        );
        json.push(serde_json::json!({
            "shape": name, "gpus": n, "structure": format!("{s:?}"), "backend": group.backend_name(),
            "median_ms": median, "tokens_per_s": tokens / (median * 1e-3),
            "bytes_to_peers": traffic.token_bytes_to_peers(), "bytes_total": traffic.token_bytes(),
            "count_bytes": traffic.counts.p2p_bytes_to_peers + traffic.counts.p2p_bytes_to_self,
            "rows": traffic.rows,
            "stages_ms": {
                "gate": split.gate_ms, "descend": split.descend_ms, "permute": split.permute_ms,
                "counts": split.counts_ms, "dispatch": split.dispatch_ms, "experts": split.experts_ms,
                "return": split.return_ms, "combine": split.combine_ms, "ascend": split.ascend_ms,
                "all_to_all": split.all_to_all_ms(),
            },
        }));
        results.push((median, traffic));
    }
    let (cdac, bigmac) = (&results[0], &results[1]);
    // "x0.250", or why there is no ratio (one GPU sends nothing to others)
    let ratio = |a: u64, b: u64| match b {
        0 => "n/a (nothing sent)".to_string(),
        _ => format!("x{:.3}", a as f64 / b as f64),
    };
    println!(
        "{name}: BigMac {:.2}x CDAC's throughput; all-to-all bytes to other GPUs {} (in all {}; target r = 0.25)",
        cdac.0 / bigmac.0,
        ratio(bigmac.1.token_bytes_to_peers(), cdac.1.token_bytes_to_peers()),
        ratio(bigmac.1.token_bytes(), cdac.1.token_bytes()),
    );
    let flops = 2.0 * 2.0 * (n * per_rank * 6) as f64 * 2048.0 * 512.0;
    rows_out.push(Row {
        name: format!("bigmac {name}"),
        work: flops,
        median_ms: bigmac.0,
        rate: flops / bigmac.0 / 1e9,
        vs: Some((format!("cdac {name}"), cdac.0 / bigmac.0)),
        roof: Roof::TensorCores,
    });
    rows_out.push(Row {
        name: format!("cdac {name}"),
        work: flops,
        median_ms: cdac.0,
        rate: flops / cdac.0 / 1e9,
        vs: None,
        roof: Roof::TensorCores,
    });
    let _ = dev;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dev) = gpu() else { return Ok(()) };
    let require = std::env::var("KILN_REQUIRE_CUBLAS").is_ok_and(|v| v.trim() == "1");
    let blas = match Blas::new(&dev) {
        Ok(b) => Some(b),
        Err(e) if require => return Err(e.into()),
        Err(e) => {
            println!("cuBLAS is not available, so its rows are left out:\n{e}");
            None
        }
    };
    let (mut rows, mut grouped, mut layers) = (Vec::new(), Vec::new(), Vec::new());
    for shape in [
        (8192 * 6, 2048, 512, 64),
        (32768 * 6, 2048, 512, 64),
        (8192 * 6, 512, 2048, 64),
        (8192 * 8, 4096, 1024, 64),
    ] {
        grouped_case(&dev, blas.as_ref(), shape, &mut rows, &mut grouped)?;
    }
    for tokens in [4096, 16384, 32768] {
        layer_case(&dev, tokens, &mut rows, &mut layers)?;
    }
    let mut parallel = Vec::new();
    let require_nccl = std::env::var("KILN_REQUIRE_NCCL").is_ok_and(|v| v.trim() == "1");
    let visible = Device::gpu_count();
    for n in [1usize, 2, 4].into_iter().filter(|&n| n <= visible) {
        let group = match CommGroup::gpus(n) {
            Ok(g) => Arc::new(g),
            Err(e) if require_nccl => return Err(e.into()),
            Err(e) => {
                println!("expert parallelism over {n} GPUs is left out:\n{e}");
                break;
            }
        };
        for per_rank in [4096, 16384] {
            parallel_case(&dev, &group, per_rank, &mut rows, &mut parallel)?;
        }
    }
    report_with(
        "bigmac",
        &dev,
        &rows,
        serde_json::json!({ "grouped_gemm": grouped, "layers": layers, "parallel": parallel }),
    );
    Ok(())
}
