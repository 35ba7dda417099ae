//! CLO's fidelity on the planted-structure workload: a decode trajectory through a one-layer
//! model, per threshold setting (η, p) the hit rate and the output error against dense
//! attention and against attention over the exact top-k rows (both float64 on the host).
//!
//! # The decode trajectory (drift model)
//!
//! The generator is asked for the queries of the last `T` positions of a sequence of `S`
//! tokens (each planted with the structure of its own position: recency, its heavy-hitter
//! affinity, its cluster). The model is prefilled with the first `S − T` tokens; step `t`
//! appends token `S − T + t` (the generator's key and value) and asks with query
//! `q̃_t = ρ·q̃_{t−1} + √(1 − ρ²)·q_t` per head ([`drift`]), `q̃_0 = q_0`: an AR(1) walk over
//! the generator's own queries, so consecutive queries stay similar (`ρ` sets how fast they
//! drift) while the walk keeps moving to where the generator's later queries look. The
//! generator's queries of one head share much of their direction (cosine about 0.65 between
//! two positions), so with the default [`RHO`] = 0.8 consecutive queries have cosine about
//! 0.985 and the query 30 steps on about 0.80 with the first (h8/2, 4K tokens): slow enough
//! for labels to be reused, fast enough that strict thresholds miss.
//!
//! # Importance
//!
//! `s_h` is the share of head `h`'s attention (first query of the trajectory, dense) that its
//! exact top-`budget` keys hold, divided by the largest share over the heads: heads whose
//! attention concentrates on few keys (where a stale selection loses the most) get the
//! strictest thresholds.

use crate::attention::reference as attention_reference;
use crate::clo::model::{CloConfig, CloModel, LayerParams, Transfer};
use crate::hata::fidelity::train_held_out;
use crate::hata::reference as hata_reference;
use crate::metrics::rel_err;
use crate::verify::{Real, Rng};
use crate::workload::{generate, Workload, WorkloadSpec};
use kiln::prelude::Float;
use kiln::Device;

/// How much of the previous query each step keeps (see the module docs).
pub const RHO: f64 = 0.8;

/// One step of the drift: `prev ← ρ·prev + √(1 − ρ²)·fresh`.
pub fn drift_towards(prev: &mut [f64], fresh: &[f64], rho: f64) {
    let s = (1.0 - rho * rho).max(0.0).sqrt();
    for (p, f) in prev.iter_mut().zip(fresh) {
        *p = rho * *p + s * f;
    }
}

/// [`drift_towards`] a fresh Gaussian-like direction of the same scale as `prev` (for
/// tests on random data).
pub fn drift(prev: &mut [f64], rho: f64, rng: &mut Rng) {
    let norm = (prev.iter().map(|x| x * x).sum::<f64>() / prev.len().max(1) as f64).sqrt();
    let fresh: Vec<f64> = (0..prev.len())
        .map(|_| (rng.f32() as f64) * 3f64.sqrt() * norm)
        .collect();
    drift_towards(prev, &fresh, rho);
}

/// One threshold setting's results.
#[derive(Clone, Debug, PartialEq)]
pub struct FidelityRow {
    /// `η`.
    pub eta: f64,
    /// `p`.
    pub p: f64,
    /// Lookups that hit (per KV head and step).
    pub hit_rate: f64,
    /// Mean over steps of the relative norm error of the output against dense attention.
    pub err_dense: f64,
    /// The same against attention over the exact top-k rows (and the recent ring).
    pub err_topk: f64,
}

/// The trajectory: what every setting decodes.
pub struct Trajectory {
    /// The workload (its `queries` rows are the raw queries of the steps).
    pub workload: Workload,
    /// The drifted queries per step, `[B, H, D]`.
    pub queries: Vec<Vec<f64>>,
    /// K and V in the cache layout `[B, S, H_kv, D]`, rounded to bf16 and widened.
    pub keys: Vec<f64>,
    /// See `keys`.
    pub values: Vec<f64>,
}

/// Generates `spec` with `steps` query rows and drifts its queries with `rho`.
pub fn trajectory(spec: &WorkloadSpec, steps: usize, rho: f64) -> Result<Trajectory, String> {
    let spec = WorkloadSpec {
        queries: steps,
        ..spec.clone()
    };
    let workload = generate(&spec).map_err(|e| e.to_string())?;
    let s = workload.shape;
    let bf = |x: &f32| half::bf16::from_f32(*x).to_f64();
    let (k, v) = workload.kv_cache_layout();
    let mut q: Vec<f64> = (0..s.batch * s.heads)
        .flat_map(|bh| workload.query(bh / s.heads, bh % s.heads, 0).to_vec())
        .map(|x| x as f64)
        .collect();
    let mut queries = Vec::with_capacity(steps);
    for t in 0..steps {
        if t > 0 {
            for bh in 0..s.batch * s.heads {
                let fresh: Vec<f64> = workload
                    .query(bh / s.heads, bh % s.heads, t)
                    .iter()
                    .map(|&x| x as f64)
                    .collect();
                drift_towards(&mut q[bh * s.dim..][..s.dim], &fresh, rho);
            }
        }
        queries.push(
            q.iter()
                .map(|&x| half::bf16::from_f64(x).to_f64())
                .collect(),
        );
    }
    Ok(Trajectory {
        workload,
        queries,
        keys: k.iter().map(bf).collect(),
        values: v.iter().map(bf).collect(),
    })
}

/// The exact selection per (batch, KV head) over `valid` tokens: the top `budget` by the
/// group's summed logits among the tokens before the ring (sinks first), then the ring.
fn exact_ids(cfg: &CloConfig, tr: &Trajectory, q: &[f64], valid: usize) -> Vec<u32> {
    let s = tr.workload.shape;
    let (h, hk, d, g) = (s.heads, s.kv_heads, s.dim, s.heads / s.kv_heads);
    let open = valid - cfg.recent as usize;
    let mut ids = Vec::new();
    for b in 0..s.batch {
        for kh in 0..hk {
            let scores: Vec<f64> = (0..open)
                .map(|j| {
                    if j < cfg.sink as usize {
                        return f64::INFINITY;
                    }
                    let key = &tr.keys[((b * s.seq + j) * hk + kh) * d..][..d];
                    (0..g)
                        .map(|gg| {
                            let qh = &q[(b * h + kh * g + gg) * d..][..d];
                            qh.iter().zip(key).map(|(a, c)| a * c).sum::<f64>()
                        })
                        .sum()
                })
                .collect();
            ids.extend(hata_reference::top_k(&scores, cfg.budget as usize));
            ids.extend(open as u32..valid as u32);
        }
    }
    ids
}

/// Each head's importance (see the module docs) from the trajectory's first query over the
/// first `prefill` tokens.
pub fn importance(cfg: &CloConfig, tr: &Trajectory, prefill: usize) -> Vec<f32> {
    let s = tr.workload.shape;
    let (hk, d, g) = (s.kv_heads, s.dim, s.heads / s.kv_heads);
    let scale = 1.0 / (d as f64).sqrt();
    let q = &tr.queries[0];
    let mass: Vec<f64> = (0..s.heads)
        .map(|h| {
            let kh = h / g;
            let logits: Vec<f64> = (0..prefill)
                .map(|j| {
                    let key = &tr.keys[(j * hk + kh) * d..][..d];
                    scale
                        * q[h * d..][..d]
                            .iter()
                            .zip(key)
                            .map(|(a, c)| a * c)
                            .sum::<f64>()
                })
                .collect();
            let top = hata_reference::top_k(&logits, cfg.budget as usize);
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = logits.iter().map(|l| (l - m).exp()).sum();
            top.iter()
                .map(|&j| (logits[j as usize] - m).exp())
                .sum::<f64>()
                / total
        })
        .collect();
    let most = mass.iter().cloned().fold(0.0, f64::max).max(1e-12);
    mass.iter().map(|m| (m / most) as f32).collect()
}

/// Decodes the trajectory once per `(η, p)` in `settings` (`cfg`'s other settings, one
/// layer, batch 1, `weights` the layer's hash weights) and measures each (see the module
/// docs). `cfg.capacity` must exceed the workload's `seq`.
pub fn evaluate<T: Real + Float>(
    device: &Device,
    cfg: CloConfig,
    tr: &Trajectory,
    weights: &[f32],
    settings: &[(f64, f64)],
) -> Result<(Vec<FidelityRow>, f64), String> {
    let s = tr.workload.shape;
    let steps = tr.queries.len();
    let prefill = s.seq - steps;
    let (h, hk, d) = (s.heads, s.kv_heads, s.dim);
    let imp = importance(&cfg, tr, prefill);
    let narrow = |x: &[f64]| -> Vec<T> { x.iter().map(|&v| T::from_f32(v as f32)).collect() };
    let row = hk * d;
    let scale = 1.0 / (d as f64).sqrt();
    // the references do not depend on the setting
    let mut wants = Vec::with_capacity(steps);
    for (t, q) in tr.queries.iter().enumerate() {
        let valid = prefill + t + 1;
        let run = |ids: Option<&[u32]>, n: usize| {
            attention_reference::decode(1, h, hk, s.seq, d, q, &tr.keys, &tr.values, ids, n, scale)
                .0
        };
        let ids = exact_ids(&cfg, tr, q, valid);
        wants.push((run(None, valid), run(Some(&ids), cfg.slots() as usize)));
    }
    let topk_vs_dense = wants
        .iter()
        .map(|(dense, topk)| rel_err(topk, dense))
        .sum::<f64>()
        / steps as f64;
    let mut rows = Vec::new();
    for &(eta, p) in settings {
        let c = CloConfig {
            layers: 1,
            batch: 1,
            eta,
            p,
            ..cfg
        };
        let params = [LayerParams {
            weights: weights.to_vec(),
            importance: imp.clone(),
        }];
        let err = |e: super::model::CloError| e.to_string();
        let mut model = CloModel::<T>::new(device, c, &params).map_err(err)?;
        let (k, v) = (
            narrow(&tr.keys[..prefill * row]),
            narrow(&tr.values[..prefill * row]),
        );
        model.prefill(&[(&k, &v)], prefill as u32).map_err(err)?;
        let (mut e_dense, mut e_topk) = (0.0, 0.0);
        for (t, q) in tr.queries.iter().enumerate() {
            let at = (prefill + t) * row;
            let inputs = model.inputs_mut(0).map_err(err)?;
            let re = |e: kiln::RuntimeError| e.to_string();
            device.write(inputs.q, &narrow(q)).map_err(re)?;
            device
                .write(inputs.k_new, &narrow(&tr.keys[at..at + row]))
                .map_err(re)?;
            device
                .write(inputs.v_new, &narrow(&tr.values[at..at + row]))
                .map_err(re)?;
            model.step(Transfer::ZeroCopy).map_err(err)?;
            let got: Vec<f64> = device
                .download(model.output(0).map_err(err)?.0)
                .map_err(re)?
                .iter()
                .map(|x| x.to_f32() as f64)
                .collect();
            e_dense += rel_err(&got, &wants[t].0);
            e_topk += rel_err(&got, &wants[t].1);
        }
        rows.push(FidelityRow {
            eta,
            p,
            hit_rate: model.hit_rate().map_err(err)?,
            err_dense: e_dense / steps as f64,
            err_topk: e_topk / steps as f64,
        });
    }
    Ok((rows, topk_vs_dense))
}

/// A fidelity study: the workload, the model settings and what to sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct Study {
    /// The workload (a decode spec; its `queries` are set from `steps`).
    pub spec: WorkloadSpec,
    /// The model's settings (one layer, batch 1; `eta`, `p` come from `settings`).
    pub cfg: CloConfig,
    /// Decode steps.
    pub steps: usize,
    /// `(η, p)` pairs; `(1, 0)` is "every lookup misses" (a fresh selection every step).
    pub settings: Vec<(f64, f64)>,
    /// Epochs of HATA weight training on a held-out sequence.
    pub epochs: u32,
}

/// The study `kiln demo` and the bench run: on a GPU b1 h32/8 s32768 d128, budget 2048 + 64
/// recent, 48 steps, η ∈ {0.8, 0.9, 0.95} × p ∈ {1, 2, 4} (`full`) or three of them; on the
/// emulator b1 h8/2 s1024 d64, budget 64 + 16, 16 steps.
pub fn study(gpu: bool, full: bool) -> Study {
    let spec = WorkloadSpec::demo_decode(gpu);
    let (budget, recent, steps) = if gpu { (2048, 64, 48) } else { (64, 16, 16) };
    let cfg = CloConfig {
        layers: 1,
        batch: 1,
        heads: spec.heads as u32,
        kv_heads: spec.kv_heads as u32,
        dim: spec.dim as u32,
        rbit: 128,
        capacity: spec.seq as u32 + 16,
        budget,
        recent,
        sink: 4,
        use_norms: true,
        eta: 0.9,
        p: 1.0,
    };
    let mut settings = vec![(1.0, 0.0)];
    if full {
        for eta in [0.8, 0.9, 0.95] {
            for p in [1.0, 2.0, 4.0] {
                settings.push((eta, p));
            }
        }
    } else {
        settings.extend([(0.8, 1.0), (0.9, 2.0), (0.95, 4.0)]);
    }
    Study {
        spec,
        cfg,
        steps,
        settings,
        epochs: 20,
    }
}

/// Runs `study` on `device`: trains HATA weights on four held-out sequences (uncentred keys;
/// on the GPU's kernels, or the float64 trainer on the host when `device` is the emulator),
/// builds the
/// trajectory and evaluates every setting; returns the rows and the error of exact top-k
/// attention against dense (what any top-k selection of this budget starts from).
pub fn run_study(device: &Device, study: &Study) -> Result<(Vec<FidelityRow>, f64), String> {
    let trainer = device.is_gpu().then_some(device);
    let weights = train_held_out(
        trainer,
        &study.spec,
        (4, false),
        study.cfg.rbit,
        study.epochs,
        5,
    )
    .map_err(|e| e.to_string())?;
    let tr = trajectory(&study.spec, study.steps, RHO)?;
    evaluate::<half::bf16>(device, study.cfg, &tr, &weights, &study.settings)
}

/// The fidelity table as text.
pub fn table(rows: &[FidelityRow]) -> String {
    let mut out = String::from("  eta    p   hit rate   err vs dense   err vs exact top-k\n");
    for r in rows {
        out.push_str(&format!(
            "  {:<5} {:<3} {:>8.3}   {:>12.4}   {:>18.4}\n",
            r.eta, r.p, r.hit_rate, r.err_dense, r.err_topk
        ));
    }
    out
}
