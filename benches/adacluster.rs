//! AdaCluster against dense attention, on the same card in the same run, at the three video
//! DiT shapes of the video workload (`workload::video`: CogVideoX b1 h30 s17776 d64, Wan2.1
//! 480p b1 h12 s32760 d128, HunyuanVideo 720p b1 h24 s119056 d128; bf16, non-causal): the
//! first call of a layer (the cluster-count search) once, then the steady call (warm-started
//! k-means of Q and K, selection, cluster-sparse attention) against PyTorch SDPA (flash, from
//! `benches/baselines/adacluster.py` through `KILN_ADACLUSTER_BASELINE_JSON`) and against our
//! dense flash attention, with the output's relative error and cosine similarity to the
//! dense output and the density. Then one k-means iteration (assignment + sort + update) of
//! one head at n = 131072 / 119056, k = 1024 and n = 32768, k = 256, D = 128 (Euclidean, and
//! spherical at 131072) against the PyTorch k-means of the same (N, K, D); inputs rotate over
//! copies past L2. Writes `adacluster-<device>.json`.
//! Run: `cargo bench --bench adacluster` (needs a GPU; a filter such as `wan480p` or `kmeans`
//! keeps the matching shapes).

mod support;

use std::path::Path;
use std::time::Instant;

use half::bf16;
use kiln::algorithms::adacluster::fidelity::{
    compare as fidelity, evaluate_sampled, table, verdict,
};
use kiln::algorithms::adacluster::layer::{
    AdaClusterAttention, AdaClusterConfig, AdaShape, Layout, Selection,
};
use kiln::algorithms::attention::prefill::{Prefill, PrefillCall};
use kiln::algorithms::workload::video::{generate_video, VideoSpec};
use kiln::runtime::tune::Store;
use kiln::runtime::{timing, Device, DeviceBuffer, RuntimeError};
use support::baseline::Baselines;
use support::{gpu, report_with, rotations, selected, Roof, Row};

fn bf16s(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

fn attention_case(
    dev: &Device,
    name: &str,
    spec: &VideoSpec,
    baselines: Option<&Baselines>,
    rows: &mut Vec<Row>,
    json: &mut Vec<serde_json::Value>,
) -> Result<(), RuntimeError> {
    let shape_name = format!(
        "adacluster {name} b{} h{} s{} d{}",
        spec.batch,
        spec.heads,
        spec.seq(),
        spec.dim
    );
    if !selected(&shape_name) {
        return Ok(());
    }
    let started = Instant::now();
    let wl = generate_video(spec).map_err(|e| RuntimeError::InvalidInput {
        what: "video workload",
        reason: e.to_string(),
    })?;
    let (q, k, v) = (
        dev.upload(&bf16s(&wl.q))?,
        dev.upload(&bf16s(&wl.k))?,
        dev.upload(&bf16s(&wl.v))?,
    );
    drop(wl);
    println!("{shape_name}: workload in {:.1?}", started.elapsed());
    let shape = AdaShape {
        batch: spec.batch as u32,
        heads: spec.heads as u32,
        seq: spec.seq() as u32,
        dim: spec.dim as u32,
    };
    let config = AdaClusterConfig::default();
    let mut layer = AdaClusterAttention::<bf16>::new(dev, shape, config.clone())?;
    let mut o: DeviceBuffer<bf16> = dev.zeros(shape.len())?;
    let t0 = Instant::now();
    layer.forward(&q, &k, &v, &mut o)?;
    dev.synchronize()?;
    let first_ms = t0.elapsed().as_secs_f64() * 1e3;
    let layout = layer.layout();
    let big = shape.seq > 65536;
    let reps = if big { 5 } else { 20 };
    let ours = timing::time(dev, 2, reps, || Ok(layer.forward(&q, &k, &v, &mut o)?))?;
    let density = layer.density()?;
    let tiles = layer.tile_density()?;
    let prefill = Prefill::new(dev, kiln::codegen::Dtype::Bf16, Store::default_location());
    let call = PrefillCall {
        batch: shape.batch,
        heads: shape.heads,
        kv_heads: shape.heads,
        s_q: shape.seq,
        s_kv: shape.seq,
        dim: shape.dim,
        causal: false,
    };
    let mut od: DeviceBuffer<bf16> = dev.zeros(shape.len())?;
    let mut lse: DeviceBuffer<f32> = dev.zeros(shape.problems() as usize * shape.seq as usize)?;
    let scale = 1.0 / (shape.dim as f32).sqrt();
    let dense = timing::time(dev, 1, if big { 3 } else { 10 }, || {
        Ok(prefill.run(&call, &q, &k, &v, scale, &mut od, &mut lse, None)?)
    })?;
    let (err, cos) = fidelity(&dev.download(&o)?, &dev.download(&od)?, shape.dim as usize);
    let flops = 4.0 * shape.problems() as f64 * (shape.seq as f64).powi(2) * shape.dim as f64;
    let sdpa = baselines.and_then(|b| b.get(&shape_name));
    let (q_clusters, k_clusters) = match layout {
        Some(Layout::Clustered {
            q_clusters,
            k_clusters,
        }) => (q_clusters, k_clusters),
        _ => (0, 0),
    };
    println!(
        "{shape_name}: {layout:?}; first call {first_ms:.1} ms; steady {:.2} ms vs dense (ours) {:.2} ms = {:.2}x, vs SDPA {} = {}; density {:.3} (tiles {tiles:.3}); rel err {err:.4}, cosine {cos:.5}",
        ours.median_ms,
        dense.median_ms,
        dense.median_ms / ours.median_ms,
        sdpa.map_or("-".into(), |b| format!("{:.2} ms", b.median_ms)),
        sdpa.map_or("-".into(), |b| format!("{:.2}x", b.ratio(ours.median_ms))),
        density,
    );
    // the fidelity–speed trade-off of the top-p mass (same layer: counts and centroids kept)
    let dense_o = dev.download(&od)?;
    let mut sweep = Vec::new();
    for mass in [0.75f32, 0.6, 0.5, 0.4] {
        layer.config.selection = Selection::TopP {
            mass,
            max_clusters: 1024,
        };
        let t = timing::time(dev, 1, if big { 3 } else { 10 }, || {
            Ok(layer.forward(&q, &k, &v, &mut o)?)
        })?;
        let density = layer.density()?;
        let tiles = layer.tile_density()?;
        let (err, cos) = fidelity(&dev.download(&o)?, &dense_o, shape.dim as usize);
        println!(
            "{shape_name} top-p {mass}: {:.2} ms = {:.2}x dense (ours), {}; density {density:.3} (tiles {tiles:.3}); rel err {err:.4}, cosine {cos:.5}",
            t.median_ms,
            dense.median_ms / t.median_ms,
            baselines
                .and_then(|b| b.get(&shape_name))
                .map_or("-".into(), |b| format!("{:.2}x SDPA", b.ratio(t.median_ms))),
        );
        sweep.push(serde_json::json!({
            "top_p": mass, "steady_ms": t.median_ms, "density": density, "rel_err": err,
            "tile_density": tiles,
            "cosine": cos, "vs_dense": dense.median_ms / t.median_ms,
            "vs_sdpa": baselines.and_then(|b| b.get(&shape_name)).map(|b| b.ratio(t.median_ms)),
        }));
    }
    // the count search started from finer and coarser clusterings (a new layer each)
    let mut counts = Vec::new();
    for per in [128u32, 512] {
        for mass in [0.9f32, 0.75] {
            let config = AdaClusterConfig {
                initial_clusters: Some((shape.seq / per).max(8)),
                selection: Selection::TopP {
                    mass,
                    max_clusters: 1024,
                },
                ..AdaClusterConfig::default()
            };
            let mut other = AdaClusterAttention::<bf16>::new(dev, shape, config)?;
            other.forward(&q, &k, &v, &mut o)?;
            let t = timing::time(dev, 1, if big { 3 } else { 10 }, || {
                Ok(other.forward(&q, &k, &v, &mut o)?)
            })?;
            let density = other.density()?;
            let tiles = other.tile_density()?;
            let (err, cos) = fidelity(&dev.download(&o)?, &dense_o, shape.dim as usize);
            println!(
                "{shape_name} seeds seq/{per}, top-p {mass}: {:?}; {:.2} ms = {:.2}x dense (ours); density {density:.3} (tiles {tiles:.3}); rel err {err:.4}, cosine {cos:.5}",
                other.layout(),
                t.median_ms,
                dense.median_ms / t.median_ms,
            );
            counts.push(serde_json::json!({
                "initial_clusters_per": per, "top_p": mass, "layout": format!("{:?}", other.layout()),
                "steady_ms": t.median_ms, "density": density, "tile_density": tiles,
                "rel_err": err, "cosine": cos, "vs_dense": dense.median_ms / t.median_ms,
            }));
        }
    }
    // fidelity against the two baselines at the same key budget, on sampled rows (float64)
    let mut baselines_fidelity = Vec::new();
    for mass in [0.9f32, 0.6] {
        let config = AdaClusterConfig {
            selection: Selection::TopP {
                mass,
                max_clusters: 1024,
            },
            ..AdaClusterConfig::default()
        };
        match evaluate_sampled(dev, spec, &config, Some(64)) {
            Ok(rows) => {
                println!(
                    "{shape_name} fidelity at top-p {mass}, 64 query rows per head, float64:\n{}{}",
                    table(&rows),
                    verdict(&rows)
                );
                baselines_fidelity.push(serde_json::json!({
                    "top_p": mass,
                    "rows": rows.iter().map(|r| serde_json::json!({
                        "method": r.method, "rel_err": r.rel_err, "cosine": r.cosine,
                        "density": r.density,
                    })).collect::<Vec<_>>(),
                }));
            }
            Err(e) => println!("{shape_name} fidelity: {e}"),
        }
    }
    let dense_name = format!("kiln dense prefill {shape_name}");
    rows.push(Row {
        name: format!("adacluster {shape_name}"),
        // the dense work it stands in for: its rate is the effective TFLOP/s
        work: flops,
        median_ms: ours.median_ms,
        rate: flops / ours.median_ms / 1e9,
        vs: sdpa
            .map(|b| b.vs(ours.median_ms))
            .or(Some((dense_name.clone(), dense.median_ms / ours.median_ms))),
        roof: Roof::TensorCores,
    });
    rows.push(Row {
        name: dense_name,
        work: flops,
        median_ms: dense.median_ms,
        rate: flops / dense.median_ms / 1e9,
        vs: sdpa.map(|b| b.vs(dense.median_ms)),
        roof: Roof::TensorCores,
    });
    json.push(serde_json::json!({
        "shape": shape_name, "layout": format!("{layout:?}"), "q_clusters": q_clusters,
        "k_clusters": k_clusters, "first_call_ms": first_ms, "steady_ms": ours.median_ms,
        "steady_min_ms": ours.min_ms, "dense_ms": dense.median_ms,
        "sdpa_ms": sdpa.map(|b| b.median_ms), "vs_sdpa": sdpa.map(|b| b.ratio(ours.median_ms)),
        "vs_dense": dense.median_ms / ours.median_ms, "density": density,
        "rel_err": err, "cosine": cos, "config": format!("{config:?}"),
        "tile_density": tiles,
        "top_p_sweep": sweep, "count_sweep": counts, "fidelity_vs_baselines": baselines_fidelity,
    }));
    Ok(())
}

fn kmeans_case(
    dev: &Device,
    (n, k, spherical): (u32, u32, bool),
    baselines: Option<&Baselines>,
    rows: &mut Vec<Row>,
    json: &mut Vec<serde_json::Value>,
) -> Result<(), RuntimeError> {
    let d = 128u32;
    let name = format!(
        "kmeans n{n} k{k} d{d}{}",
        if spherical { " spherical" } else { "" }
    );
    if !selected(&name) {
        return Ok(());
    }
    let shape = AdaShape {
        batch: 1,
        heads: 1,
        seq: n,
        dim: d,
    };
    let layer = AdaClusterAttention::<bf16>::new(dev, shape, AdaClusterConfig::default())?;
    let copies = rotations(shape.len() * 2);
    let mut rng = kiln::algorithms::verify::Rng::new(7);
    let mut xs = Vec::new();
    let mut sets = Vec::new();
    for _ in 0..copies {
        let x = dev.upload(&support::random_bf16(&mut rng, shape.len()))?;
        sets.push(layer.kmeans(&x, k, spherical, 1)?);
        xs.push(x);
    }
    let mut i = 0;
    let t = timing::time(dev, 3, 30, || {
        let at = i % copies;
        i += 1;
        Ok(layer.kmeans_iterate(&mut sets[at], &xs[at], 1)?)
    })?;
    let flops = 2.0 * n as f64 * k as f64 * d as f64;
    let base = baselines.and_then(|b| b.get(&name));
    let cdist = baselines.and_then(|b| b.get(&format!("{name} cdist")));
    println!(
        "{name}: {:.4} ms per iteration vs PyTorch {} = {}{}",
        t.median_ms,
        base.map_or("-".into(), |b| format!(
            "{} {:.4} ms",
            b.baseline, b.median_ms
        )),
        base.map_or("-".into(), |b| format!("{:.2}x", b.ratio(t.median_ms))),
        cdist.map_or(String::new(), |b| format!(
            " (cdist {:.4} ms: {:.2}x)",
            b.median_ms,
            b.ratio(t.median_ms)
        )),
    );
    rows.push(Row {
        name: format!("adacluster {name}"),
        work: flops,
        median_ms: t.median_ms,
        rate: flops / t.median_ms / 1e9,
        vs: base.map(|b| b.vs(t.median_ms)),
        roof: Roof::TensorCores,
    });
    json.push(serde_json::json!({
        "shape": name, "median_ms": t.median_ms, "min_ms": t.min_ms, "copies": copies,
        "baseline": base.map(|b| b.baseline.clone()), "baseline_ms": base.map(|b| b.median_ms),
        "vs_baseline": base.map(|b| b.ratio(t.median_ms)),
        "cdist_ms": cdist.map(|b| b.median_ms), "vs_cdist": cdist.map(|b| b.ratio(t.median_ms)),
    }));
    Ok(())
}

fn main() {
    let Some(dev) = gpu() else { return };
    let baselines = std::env::var("KILN_ADACLUSTER_BASELINE_JSON")
        .ok()
        .filter(|p| !p.is_empty())
        .map(|p| Baselines::load_from(Path::new(&p)).expect("the AdaCluster baseline JSON"));
    if baselines.is_none() {
        println!("no KILN_ADACLUSTER_BASELINE_JSON: rows compare with our dense attention only");
    }
    let mut rows = Vec::new();
    let (mut attn, mut km) = (Vec::new(), Vec::new());
    for (n, k, s) in [
        (131072, 1024, false),
        (119056, 1024, false),
        (32768, 256, false),
        (131072, 1024, true),
    ] {
        if let Err(e) = kmeans_case(&dev, (n, k, s), baselines.as_ref(), &mut rows, &mut km) {
            println!("kmeans n{n} k{k}: {e}");
        }
    }
    for (name, spec) in [
        ("cogvideox", VideoSpec::cogvideox()),
        ("wan480p", VideoSpec::wan480p()),
        ("hunyuan720p", VideoSpec::hunyuan720p()),
    ] {
        if let Err(e) = attention_case(&dev, name, &spec, baselines.as_ref(), &mut rows, &mut attn)
        {
            println!("{name}: {e}");
        }
    }
    report_with(
        "adacluster",
        &dev,
        &rows,
        serde_json::json!({ "attention": attn, "kmeans": km }),
    );
}
