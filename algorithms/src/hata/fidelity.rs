//! How close HATA's sparse decode step is to dense attention on a workload: recall of the
//! exact top-k keys and relative error of the attention output, per budget, next to the
//! reference selectors — the exact top-k (the ceiling), a recency window, and the peers
//! HATA's paper compares with, Quest and Loki (see [`super::peers`]), at the same budget.
//!
//! The exact top-k of a GQA group ranks each key by the attention mass the group's query
//! heads give it (the sum over the heads of their softmax probabilities), because the group
//! shares one selection. Recall is the fraction of that exact set a selector keeps. The
//! report also gives the recall of the exact top-k by the group's summed `q·k` (the "qk
//! recall", PIPELINES.md's definition): the score HATA's hash estimates, so the gap between
//! HATA's two recalls separates the hash's error from the score's own distance to the mass.

use half::bf16;
use kiln::{Device, DeviceBuffer};

use super::decoder::{Budget, HataConfig, HataError, HataLayer};
use super::peers::{quest_select, HeadInputs, Loki, QUEST_PAGE};
use super::reference::{encode, recall, score, top_k};
use super::train::capture_file::HashWeights;
use super::train::{
    random_weights, reference, samples_from_capture, train, CaptureShape, HeadSamples,
    SampleOptions, TrainError, TrainOptions,
};
use crate::attention::reference as attention;
use crate::workload::{generate, Rng, Shape, Workload, WorkloadSpec};

/// Training samples from *held-out* sequences of the same workload model: `spec` with
/// `sequences` more sequences in the batch (same per-head channel roles, different tokens),
/// queries at every position of their second half, samples as PIPELINES.md describes (one
/// query position per sequence and query head from the second half, labels 20→1 for the true
/// top 10% of its prefix, −1 else), capped at 65 536 per KV head. The evaluated sequence
/// (batch element 0) is never seen. Each sequence gives one query per query head, so a KV
/// head learns from `sequences × G` queries: with one sequence, too few to generalise.
/// `center_keys` as in `SampleOptions` (for a layer that centres its keys).
pub fn held_out_samples(
    spec: &WorkloadSpec,
    sequences: usize,
    center_keys: bool,
    seed: u64,
) -> Result<Vec<HeadSamples>, TrainError> {
    let mut capture = spec.clone();
    capture.batch = 1 + sequences.max(1);
    capture.queries = spec.seq / 2;
    let wl = generate(&capture).map_err(|e| TrainError::Invalid(e.to_string()))?;
    let sh = wl.shape;
    let q_per = sh.heads * sh.queries * sh.dim;
    let k_per = sh.kv_heads * sh.seq * sh.dim;
    let shape = CaptureShape {
        batch: sh.batch - 1,
        heads: sh.heads,
        kv_heads: sh.kv_heads,
        q_seq: sh.queries,
        seq: sh.seq,
        dim: sh.dim,
    };
    let options = SampleOptions {
        seed,
        center_keys,
        ..SampleOptions::default()
    };
    samples_from_capture(&wl.q[q_per..], &wl.k[k_per..], &shape, &options)
}

/// Hash weights trained on [`held_out_samples`] of `sequences` held-out sequences, `epochs`
/// epochs, on `device` with the training kernels, or with `None` by the float64 reference
/// trainer on the host (the kernels' specification; what the emulator would take minutes
/// over).
pub fn train_held_out(
    device: Option<&Device>,
    spec: &WorkloadSpec,
    (sequences, center_keys): (usize, bool),
    rbit: u32,
    epochs: u32,
    seed: u64,
) -> Result<Vec<f32>, TrainError> {
    let heads = held_out_samples(spec, sequences, center_keys, seed)?;
    match device {
        Some(device) => Ok(train(device, &heads, rbit, epochs, seed)?.weights),
        None => {
            let w0 = random_weights(spec.kv_heads, spec.dim, rbit as usize, seed);
            let wide: Vec<f64> = w0.iter().map(|&v| v as f64).collect();
            let (w, _) = reference::train(&heads, &wide, &TrainOptions::new(rbit, epochs, seed));
            Ok(w.iter().map(|&v| v as f32).collect())
        }
    }
}

/// The decode steps of `count` sequences of `spec`'s workload model that neither the
/// evaluated sequence (batch element 0) nor [`held_out_samples`] of `trained_on` sequences
/// (elements `1..=trained_on`) use: elements `1 + trained_on ..` of the same spec, as a
/// workload of batch `count` (one decode query per head at the last position). Measuring
/// hash weights on many decode queries instead of one sequence's few.
pub fn held_out_decode_workload(
    spec: &WorkloadSpec,
    trained_on: usize,
    count: usize,
) -> Result<Workload, TrainError> {
    let invalid = |e: crate::workload::WorkloadError| TrainError::Invalid(e.to_string());
    let mut all = spec.clone();
    all.batch = 1 + trained_on + count.max(1);
    all.queries = 1;
    let wl = generate(&all).map_err(invalid)?;
    let sh = wl.shape;
    let skip = 1 + trained_on;
    let (q_per, kv_per) = (sh.heads * sh.dim, sh.kv_heads * sh.seq * sh.dim);
    let shape = Shape {
        batch: count.max(1),
        ..sh
    };
    Workload::from_tensors(
        shape,
        wl.q[skip * q_per..].to_vec(),
        wl.k[skip * kv_per..].to_vec(),
        wl.v[skip * kv_per..].to_vec(),
    )
    .map_err(invalid)
}

/// One selector at one budget.
#[derive(Clone, Debug, PartialEq)]
pub struct FidelityRow {
    /// "hata (<weights>)", "exact top-k", "recency", "quest (pages of 16)" or
    /// "loki (r = D/4)".
    pub selector: String,
    /// The budget as asked ("512", "1.6%").
    pub budget: String,
    /// Keys kept per (sequence, KV head).
    pub keys: usize,
    /// Mean recall of the exact top-k by the GQA group's attention mass over (sequence, KV
    /// head): the keys the output depends on.
    pub recall: f64,
    /// Mean recall of the exact top-k by the group's summed `q·k` (PIPELINES.md's "top-k by
    /// qk score": the score HATA's hash estimates, so this isolates the hash's error).
    pub qk_recall: f64,
    /// Relative norm error of the attention output against dense attention.
    pub output_error: f64,
}

/// The budget as a label.
pub fn budget_label(b: &Budget) -> String {
    match b {
        Budget::Count(k) => k.to_string(),
        Budget::Ratio(r) => format!("{:.1}%", r * 100.0),
    }
}

/// Evaluates the decode step at the workload's last position (its decode queries) for each
/// budget: HATA on `device` in bf16 once per named set of hash weights (`[kv_heads, dim,
/// rbit]`, e.g. random and trained; keys centred when `center_keys`), and the reference and
/// peer selectors on the host in float64.
pub fn evaluate(
    device: &Device,
    wl: &Workload,
    weight_sets: &[(&str, &[f32])],
    rbit: u32,
    budgets: &[Budget],
    (sink, recent): (u32, u32),
    center_keys: bool,
) -> Result<Vec<FidelityRow>, HataError> {
    let sh = wl.shape;
    let (b, h, hk, s, d) = (sh.batch, sh.heads, sh.kv_heads, sh.seq, sh.dim);
    let g = h / hk;
    let [(qb, qw), (kb, kw), (vb, vw)] = wl.decode_step_bf16();
    let scale = 1.0 / (d as f64).sqrt();
    let (dense, _) = attention::decode(b, h, hk, s, d, &qw, &kw, &vw, None, s, scale);
    let mass = group_mass(sh, &qw, &kw);
    let qk = group_qk(sh, &qw, &kw);
    let exact_by = |of: &[f64], k: usize| -> Vec<Vec<u32>> {
        (0..b * hk)
            .map(|row| top_k(&of[row * s..][..s], k))
            .collect()
    };
    let error_of = |ids: &[Vec<u32>], k: usize| -> f64 {
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let (o, _) = attention::decode(b, h, hk, s, d, &qw, &kw, &vw, Some(&flat), k, scale);
        crate::metrics::rel_err(&o, &dense)
    };
    let mean_recall = |ids: &[Vec<u32>], exact: &[Vec<u32>]| -> f64 {
        ids.iter()
            .zip(exact)
            .map(|(a, e)| recall(a, e))
            .sum::<f64>()
            / ids.len() as f64
    };
    // per (sequence, KV head): the group's query rows and the head's keys, and Loki's basis
    let heads: Vec<(Vec<f64>, Vec<f64>)> = (0..b * hk)
        .map(|row| {
            let (bb, kv) = (row / hk, row % hk);
            let queries = qw[(bb * h + kv * g) * d..][..g * d].to_vec();
            let keys: Vec<f64> = (0..s)
                .flat_map(|t| kw[((bb * s + t) * hk + kv) * d..][..d].iter().copied())
                .collect();
            (queries, keys)
        })
        .collect();
    let loki_rank = (d / 4).max(1);
    let loki: Vec<Loki> = heads
        .iter()
        .map(|(_, keys)| Loki::calibrate(keys, d, loki_rank))
        .collect();
    let head_inputs = |row: usize| HeadInputs {
        queries: &heads[row].0,
        keys: &heads[row].1,
        dim: d,
    };
    let mut rows = Vec::new();
    for budget in budgets {
        let cfg = HataConfig {
            batch: b as u32,
            heads: h as u32,
            kv_heads: hk as u32,
            dim: d as u32,
            rbit,
            capacity: s as u32,
            budget: *budget,
            sink,
            recent,
            use_norms: true,
            center_keys,
            dense: false,
        };
        let k = budget.keys(s as u32) as usize;
        let (exact, exact_qk) = (exact_by(&mass, k), exact_by(&qk, k));
        let label = budget_label(budget);
        for (name, weights) in weight_sets {
            let (got, hata_ids) = hata_step(device, cfg, weights, (&qb, &kb, &vb), k)?;
            rows.push(FidelityRow {
                selector: format!("hata ({name})"),
                budget: label.clone(),
                keys: k,
                recall: mean_recall(&hata_ids, &exact),
                qk_recall: mean_recall(&hata_ids, &exact_qk),
                output_error: crate::metrics::rel_err(&got, &dense),
            });
        }
        rows.push(FidelityRow {
            selector: "exact top-k".into(),
            budget: label.clone(),
            keys: k,
            recall: 1.0,
            qk_recall: mean_recall(&exact, &exact_qk),
            output_error: error_of(&exact, k),
        });
        let window: Vec<Vec<u32>> = (0..b * hk)
            .map(|_| ((s - k) as u32..s as u32).collect())
            .collect();
        rows.push(FidelityRow {
            selector: "recency".into(),
            budget: label.clone(),
            keys: k,
            recall: mean_recall(&window, &exact),
            qk_recall: mean_recall(&window, &exact_qk),
            output_error: error_of(&window, k),
        });
        let peers: [(String, Vec<Vec<u32>>); 2] = [
            (
                format!("quest (pages of {QUEST_PAGE})"),
                (0..b * hk)
                    .map(|row| quest_select(&head_inputs(row), k))
                    .collect(),
            ),
            (
                format!("loki (r = {loki_rank})"),
                (0..b * hk)
                    .map(|row| loki[row].select(&head_inputs(row), k))
                    .collect(),
            ),
        ];
        for (selector, ids) in peers {
            // Quest keeps whole pages, so a head that kept the last, partial page has fewer
            // keys; the attention call takes one count for all heads: the smallest
            let kept = ids.iter().map(Vec::len).min().unwrap_or(0);
            let equal: Vec<Vec<u32>> = ids.iter().map(|v| v[..kept].to_vec()).collect();
            rows.push(FidelityRow {
                selector,
                budget: label.clone(),
                keys: kept,
                recall: mean_recall(&ids, &exact),
                qk_recall: mean_recall(&ids, &exact_qk),
                output_error: error_of(&equal, kept),
            });
        }
    }
    Ok(rows)
}

/// Every query head's dot products with its KV head's keys at the decode step, `[B, H, S]`,
/// from the decode queries `q` `[B, H, D]` and the keys `k` `[B, S, H_kv, D]`: what the
/// group scores below combine.
pub(crate) fn head_dots(sh: Shape, q: &[f64], k: &[f64]) -> Vec<f64> {
    let (b, h, hk, s, d) = (sh.batch, sh.heads, sh.kv_heads, sh.seq, sh.dim);
    let g = h / hk;
    let mut out = Vec::with_capacity(b * h * s);
    for bb in 0..b {
        for head in 0..h {
            let kv = head / g;
            let qrow = &q[(bb * h + head) * d..][..d];
            out.extend((0..s).map(|t| {
                let key = &k[((bb * s + t) * hk + kv) * d..][..d];
                qrow.iter().zip(key).map(|(a, c)| a * c).sum::<f64>()
            }));
        }
    }
    out
}

/// The summed score each key gets from its GQA group at the decode step, `Σ_heads q·k`,
/// `[B, H_kv, S]` (same inputs as [`head_dots`]).
pub(crate) fn group_qk(sh: Shape, q: &[f64], k: &[f64]) -> Vec<f64> {
    let (g, s) = (sh.heads / sh.kv_heads, sh.seq);
    let dots = head_dots(sh, q, k);
    let mut out = vec![0.0f64; sh.batch * sh.kv_heads * s];
    for (row, head) in dots.chunks(s).enumerate() {
        let group = &mut out[row / g * s..][..s];
        for (o, v) in group.iter_mut().zip(head) {
            *o += v;
        }
    }
    out
}

/// The attention mass each key gets from its GQA group at the decode step — the sum over the
/// group's query heads of their softmax probabilities — `[B, H_kv, S]` (same inputs as
/// [`head_dots`]).
pub(crate) fn group_mass(sh: Shape, q: &[f64], k: &[f64]) -> Vec<f64> {
    let (g, s) = (sh.heads / sh.kv_heads, sh.seq);
    let scale = 1.0 / (sh.dim as f64).sqrt();
    let dots = head_dots(sh, q, k);
    let mut mass = vec![0.0f64; sh.batch * sh.kv_heads * s];
    for (row, head) in dots.chunks(s).enumerate() {
        let mx = head.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let den: f64 = head.iter().map(|l| (scale * (l - mx)).exp()).sum();
        let group = &mut mass[row / g * s..][..s];
        for (m, l) in group.iter_mut().zip(head) {
            *m += (scale * (l - mx)).exp() / den;
        }
    }
    mass
}

/// A scorer of one (sequence, KV head) on the host: the score of a key (centred when the
/// selection centres them) given with its L2 norm.
pub type HostScorer<'a> = Box<dyn Fn(&[f64], f64) -> f64 + 'a>;

/// The selection scores on the host of every (sequence, KV head)'s keys at the workload's
/// decode step, `[B·H_kv][S]`: `make(kv_head, group query rows)` gives the scorer of each
/// (sequence, KV head); keys are centred on their mean over the cache when `center_keys`,
/// and the first `sink` and last `recent` tokens score `+∞` (always selected).
pub fn host_scores<'a>(
    wl: &Workload,
    (sink, recent): (usize, usize),
    center_keys: bool,
    make: &dyn Fn(usize, Vec<Vec<f64>>) -> HostScorer<'a>,
) -> Vec<Vec<f64>> {
    let sh = wl.shape;
    let (b, h, hk, s, d) = (sh.batch, sh.heads, sh.kv_heads, sh.seq, sh.dim);
    let g = h / hk;
    let [(_, qw), (_, kw), _] = wl.decode_step_bf16();
    let mut out = Vec::with_capacity(b * hk);
    for bb in 0..b {
        for kv in 0..hk {
            let key = |t: usize| &kw[((bb * s + t) * hk + kv) * d..][..d];
            let mean: Vec<f64> = (0..d)
                .map(|c| {
                    if center_keys {
                        (0..s).map(|t| key(t)[c]).sum::<f64>() / s as f64
                    } else {
                        0.0
                    }
                })
                .collect();
            let queries: Vec<Vec<f64>> = (0..g)
                .map(|j| qw[(bb * h + kv * g + j) * d..][..d].to_vec())
                .collect();
            let score = make(kv, queries);
            out.push(
                (0..s)
                    .map(|t| {
                        if t < sink || t + recent >= s {
                            return f64::INFINITY;
                        }
                        let x: Vec<f64> = key(t).iter().zip(&mean).map(|(v, m)| v - m).collect();
                        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
                        score(&x, norm)
                    })
                    .collect(),
            );
        }
    }
    out
}

/// HATA's scorer on the host for hash weights `w` (`[kv_heads, dim, rbit]`, f64): the group's
/// query codes against the key's code, `(G − 2·Σham/rbit)·‖k‖` — what the kernels compute up
/// to f32 rounding.
pub fn hata_scorer<'a>(
    w: &'a [f64],
    dim: usize,
    rbit: usize,
) -> impl Fn(usize, Vec<Vec<f64>>) -> HostScorer<'a> {
    move |kv, queries| {
        let wh = &w[kv * dim * rbit..][..dim * rbit];
        let codes: Vec<Vec<u32>> = queries.iter().map(|q| encode(q, wh, rbit)).collect();
        Box::new(move |x, norm| {
            let refs: Vec<&[u32]> = codes.iter().map(Vec::as_slice).collect();
            score(&refs, &encode(x, wh, rbit), rbit, Some(norm))
        })
    }
}

/// Mean recall over (sequence, KV head) of the exact top-`k` by group mass among the top-`k`
/// of `scores` (from [`host_scores`]).
pub fn host_scores_recall(wl: &Workload, scores: &[Vec<f64>], k: usize) -> f64 {
    let sh = wl.shape;
    let [(_, qw), (_, kw), _] = wl.decode_step_bf16();
    let mass = group_mass(sh, &qw, &kw);
    let s = sh.seq;
    scores
        .iter()
        .enumerate()
        .map(|(row, sc)| recall(&top_k(sc, k), &top_k(&mass[row * s..][..s], k)))
        .sum::<f64>()
        / scores.len().max(1) as f64
}

/// HATA's selection computed on the host in float64 (codes of the keys, centred on their mean
/// when `center_keys`, norm-weighted scores, sinks and recent tokens forced in, top-k; what
/// the kernels compute up to f32 rounding; the layer takes the mean over the prefill, one
/// token fewer), and its mean recall of the exact top-k by group mass, at the workload's
/// decode step. For measuring hash weights on the CPU at shapes the emulator would take
/// minutes over.
pub fn host_recall(
    wl: &Workload,
    weights: &[f32],
    rbit: usize,
    k: usize,
    forced: (usize, usize),
    center_keys: bool,
) -> f64 {
    let w: Vec<f64> = weights.iter().map(|&x| x as f64).collect();
    let scores = host_scores(
        wl,
        forced,
        center_keys,
        &hata_scorer(&w, wl.shape.dim, rbit),
    );
    host_scores_recall(wl, &scores, k)
}

/// One HATA decode step at the workload's last position: prefill all tokens but the last,
/// then a step with it; returns the output and the selected indices per (sequence, KV head).
fn hata_step(
    device: &Device,
    cfg: HataConfig,
    weights: &[f32],
    (qb, kb, vb): (&[bf16], &[bf16], &[bf16]),
    k: usize,
) -> Result<(Vec<f64>, Vec<Vec<u32>>), HataError> {
    let (b, h, hk, d, s) = (
        cfg.batch as usize,
        cfg.heads as usize,
        cfg.kv_heads as usize,
        cfg.dim as usize,
        cfg.capacity as usize,
    );
    let mut layer = HataLayer::<bf16>::new(device, cfg, weights)?;
    // the selector's quality is measured at every length, the dense crossover aside
    layer.set_dense_below(0);
    let rows_of = |src: &[bf16], t0: usize, n: usize| -> Vec<bf16> {
        let mut out = Vec::with_capacity(b * n * hk * d);
        for bb in 0..b {
            out.extend_from_slice(&src[(bb * s + t0) * hk * d..][..n * hk * d]);
        }
        out
    };
    layer.prefill(
        &device.upload(&rows_of(kb, 0, s - 1))?,
        &device.upload(&rows_of(vb, 0, s - 1))?,
        (s - 1) as u32,
    )?;
    let mut out: DeviceBuffer<bf16> = device.zeros(b * h * d)?;
    let mut lse: DeviceBuffer<f32> = device.zeros(b * h)?;
    layer.step(
        &device.upload(qb)?,
        &device.upload(&rows_of(kb, s - 1, 1))?,
        &device.upload(&rows_of(vb, s - 1, 1))?,
        &mut out,
        &mut lse,
    )?;
    let got: Vec<f64> = device.download(&out)?.iter().map(|x| x.to_f64()).collect();
    let ids = if layer.is_sparse() {
        let sel = device.download(layer.selected())?;
        (0..b * hk)
            .map(|row| sel[row * k..][..k].to_vec())
            .collect()
    } else {
        (0..b * hk).map(|_| (0..s as u32).collect()).collect()
    };
    Ok((got, ids))
}

/// The rows as a table.
pub fn table(rows: &[FidelityRow]) -> String {
    let mut out = format!(
        "{:<20} {:>7} {:>6} {:>8} {:>9} {:>12}\n",
        "selector", "budget", "keys", "recall", "qk recall", "output err"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<20} {:>7} {:>6} {:>8.3} {:>9.3} {:>12.2e}\n",
            r.selector, r.budget, r.keys, r.recall, r.qk_recall, r.output_error
        ));
    }
    out
}

/// One line saying whether HATA beat its baselines in `rows` (from [`evaluate`] with the
/// weight sets "random W" and "trained W"): trained against random weights by recall (of
/// the top-k by attention mass, and by qk score), and HATA with trained weights against
/// recency, Quest and Loki by output error, counted over the budgets.
pub fn verdict(rows: &[FidelityRow]) -> String {
    let budgets: Vec<&str> = {
        let mut v: Vec<&str> = rows.iter().map(|r| r.budget.as_str()).collect();
        v.dedup();
        v
    };
    let find = |budget: &str, prefix: &str| {
        rows.iter()
            .find(|r| r.budget == budget && r.selector.starts_with(prefix))
    };
    let count = |better: &dyn Fn(&FidelityRow, &FidelityRow) -> bool, a: &str, b: &str| {
        budgets
            .iter()
            .filter(|&&bud| match (find(bud, a), find(bud, b)) {
                (Some(x), Some(y)) => better(x, y),
                _ => false,
            })
            .count()
    };
    let by_recall = |x: &FidelityRow, y: &FidelityRow| x.recall > y.recall;
    let by_qk_recall = |x: &FidelityRow, y: &FidelityRow| x.qk_recall > y.qk_recall;
    let by_error = |x: &FidelityRow, y: &FidelityRow| x.output_error < y.output_error;
    let n = budgets.len();
    let trained = "hata (trained W)";
    if !rows.iter().any(|r| r.selector == trained) {
        return format!(
            "verdict: no trained weights; HATA (random W) has a lower output error than recency at {}/{n} budgets, Quest at {}/{n}, Loki at {}/{n}",
            count(&by_error, "hata (random W)", "recency"),
            count(&by_error, "hata (random W)", "quest"),
            count(&by_error, "hata (random W)", "loki"),
        );
    }
    format!(
        "verdict: trained W beats random W on recall at {}/{n} budgets (on qk recall at {}/{n}); HATA (trained W) has a lower output error than recency at {}/{n}, Quest at {}/{n}, Loki at {}/{n}",
        count(&by_recall, trained, "hata (random W)"),
        count(&by_qk_recall, trained, "hata (random W)"),
        count(&by_error, trained, "recency"),
        count(&by_error, trained, "quest"),
        count(&by_error, trained, "loki"),
    )
}

/// The fidelity report on a captured (or loaded) workload `wl`, as `kiln fidelity --data`
/// prints it: HATA with random Gaussian weights and, when given, trained ones (keys centred as
/// they were trained), beside the exact top-k, recency, Quest and Loki, at the budgets 64 /
/// 512 / 2048 keys and 1.6% / 10% of the cache that lie between 40 keys (twice the 4 sink
/// and 16 recent tokens always kept) and half the cache; the decode query is each sequence's
/// last query row.
pub fn report(
    device: &Device,
    wl: &Workload,
    trained: Option<&HashWeights>,
    rbit: u32,
) -> Result<String, HataError> {
    let sh = wl.shape;
    let (s, hk, d) = (sh.seq, sh.kv_heads, sh.dim);
    if let Some(t) = trained {
        if t.shape != [hk, d, rbit as usize] {
            return Err(HataError::Config(format!(
                "the trained weights are {:?}; this capture with {rbit}-bit codes needs [{hk}, {d}, {rbit}]",
                t.shape
            )));
        }
    }
    let center = trained.is_none_or(|t| t.center_keys);
    let mut rng = Rng::new(3);
    let random: Vec<f32> = (0..hk * d * rbit as usize).map(|_| rng.normal()).collect();
    let mut sets = vec![("random W", &random[..])];
    if let Some(t) = trained {
        sets.push(("trained W", &t.w[..]));
    }
    // budgets of at most half the cache and at least twice the 4 + 16 forced tokens
    let fits = |k: usize| k <= s / 2 && k >= 40;
    let mut budgets: Vec<Budget> = [64u32, 512, 2048]
        .into_iter()
        .filter(|&k| fits(k as usize))
        .map(Budget::Count)
        .collect();
    budgets.extend(
        [0.016f32, 0.1]
            .into_iter()
            .filter(|&r| fits((r as f64 * s as f64).ceil() as usize))
            .map(Budget::Ratio),
    );
    if budgets.is_empty() {
        return Err(HataError::Config(format!(
            "a cache of {s} tokens is too short for a sparse budget (at least 80 tokens)"
        )));
    }
    let rows = evaluate(device, wl, &sets, rbit, &budgets, (4, 16), center)?;
    Ok(format!(
        "HATA on the {}: b{} h{}/{hk} s{s} d{d}, rbit {rbit}, keys {}\n{}{}\n",
        device.name(),
        sh.batch,
        sh.heads,
        if center { "centred" } else { "raw" },
        table(&rows),
        verdict(&rows)
    ))
}

#[cfg(test)]
mod sweep {
    use super::*;

    /// Recall@`k` on the host of random Gaussian and trained weights (the float64 reference
    /// trainer, `epochs` epochs on `sequences` held-out sequences) at `spec`'s decode step.
    fn random_vs_trained(
        spec: &WorkloadSpec,
        (sequences, center): (usize, bool),
        (rbit, epochs): (u32, u32),
        k: usize,
    ) -> (f64, f64) {
        let wl = generate(spec).unwrap();
        let seed = spec.seed;
        let w0 = random_weights(spec.kv_heads, spec.dim, rbit as usize, seed);
        let trained = train_held_out(None, spec, (sequences, center), rbit, epochs, seed).unwrap();
        let at = |w: &[f32]| host_recall(&wl, w, rbit as usize, k, (4, 16), center);
        (at(&w0), at(&trained))
    }

    /// The claim the fidelity report rests on, at a shape CI can afford (b1 h8/2 s2048 d128,
    /// rbit 128, keys centred, 20 epochs on 4 held-out sequences, 64 keys): trained weights
    /// find more of the exact top-k than the random weights they start from, on three seeds
    /// (measured 0.367/0.430, 0.469/0.578, 0.477/0.555).
    #[test]
    fn trained_weights_beat_random_ones_on_centred_keys() {
        for seed in 1..=3 {
            let spec = WorkloadSpec {
                seed,
                ..WorkloadSpec::decode(1, 8, 2, 2048, 128)
            };
            let (random, trained) = random_vs_trained(&spec, (4, true), (128, 20), 64);
            assert!(
                trained > random + 0.03,
                "seed {seed}: trained recall {trained:.3} vs random {random:.3}"
            );
        }
    }

    /// Issue 19's claim at the emulator demo's shape (b1 h8/2 s1024 d64, rbit 128, keys
    /// centred, 20 epochs on 4 training sequences, the float64 reference trainer the demo
    /// uses there): on the decode queries of 8 *other* sequences (16 GQA groups), the trained
    /// weights find at least as many of the exact top-k as the random weights they start from
    /// at every budget (32 / 64 / 103 keys), and more on average, for 5 of 5 seeds. Measured
    /// (seed: random → trained at 32 / 64 / 103): see bench-results/cpu-fidelity-2026-12-04/.
    /// A trainer that does not train (lr 0: trained = random) or follows the gradient uphill
    /// fails it (`broken_trainers_fail_the_claim`).
    #[test]
    fn trained_beats_random_on_held_out_sequences_for_five_seeds() {
        for seed in 1..=5 {
            let (random, trained) = held_out_claim(seed, 0.1);
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            for (i, (r, t)) in random.iter().zip(&trained).enumerate() {
                assert!(
                    t >= r,
                    "seed {seed}, budget {}: trained recall {t:.3} < random {r:.3}",
                    CLAIM_BUDGETS[i]
                );
            }
            assert!(
                mean(&trained) > mean(&random) + 0.02,
                "seed {seed}: mean trained recall {:.3} vs random {:.3}",
                mean(&trained),
                mean(&random)
            );
        }
    }

    /// The budgets of [`trained_beats_random_on_held_out_sequences_for_five_seeds`].
    const CLAIM_BUDGETS: [usize; 3] = [32, 64, 103];

    /// Recall per budget of `W₀` and of `W₀` trained with learning rate `lr` (negative: a
    /// broken trainer that climbs the loss) on held-out decode queries.
    fn held_out_claim(seed: u64, lr: f32) -> (Vec<f64>, Vec<f64>) {
        let spec = WorkloadSpec {
            seed,
            ..WorkloadSpec::demo_decode(false)
        };
        let (sequences, rbit, epochs) = (4usize, 128u32, 20u32);
        let heads = held_out_samples(&spec, sequences, true, seed).unwrap();
        let w0 = random_weights(spec.kv_heads, spec.dim, rbit as usize, seed);
        let wide: Vec<f64> = w0.iter().map(|&v| v as f64).collect();
        let mut options = TrainOptions::new(rbit, epochs, seed);
        options.lr = lr.abs();
        let trained: Vec<f32> = if lr == 0.0 {
            w0.clone()
        } else if lr < 0.0 {
            // gradient ascent: the sign of every update flipped
            let mut w = wide.clone();
            let mut v = vec![0.0f64; w.len()];
            let per = spec.dim * rbit as usize;
            for step in 0..epochs as usize * 4 {
                for (h, s) in heads.iter().enumerate() {
                    let all: Vec<u32> = (0..s.len() as u32).collect();
                    let (_, g) =
                        reference::loss_and_grad(&w[h * per..][..per], rbit as usize, s, &all);
                    let up: Vec<f64> = g.iter().map(|x| -x).collect();
                    reference::sgd_step(
                        &mut w[h * per..][..per],
                        &mut v[h * per..][..per],
                        &up,
                        step == 0,
                        &options,
                    );
                }
            }
            w.iter().map(|&x| x as f32).collect()
        } else {
            let (w, _) = reference::train(&heads, &wide, &options);
            w.iter().map(|&x| x as f32).collect()
        };
        let eval = held_out_decode_workload(&spec, sequences, 8).unwrap();
        let at = |w: &[f32]| -> Vec<f64> {
            CLAIM_BUDGETS
                .iter()
                .map(|&k| host_recall(&eval, w, rbit as usize, k, (4, 16), true))
                .collect()
        };
        let (r, t) = (at(&w0), at(&trained));
        println!("seed {seed} lr {lr}: recall random {r:.3?} trained {t:.3?}");
        (r, t)
    }

    /// The claim can fail: with a trainer that does nothing (lr 0) or one that climbs the
    /// loss, it does not hold for every seed.
    #[test]
    fn broken_trainers_fail_the_claim() {
        let holds = |lr: f32| {
            (1..=5).all(|seed| {
                let (r, t) = held_out_claim(seed, lr);
                let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
                r.iter().zip(&t).all(|(r, t)| t >= r) && mean(&t) > mean(&r) + 0.02
            })
        };
        assert!(
            !holds(0.0),
            "an untrained W passed the trained-vs-random claim"
        );
        assert!(
            !holds(-0.1),
            "gradient ascent passed the trained-vs-random claim"
        );
    }

    /// [`random_vs_trained`] with the settings from the environment (`SEQS` held-out
    /// sequences, `CENTER` 0/1, `EP` epochs, `RBIT`, `SEED`, `SEQ`, `DIM`, `HEADS`, `KV`, `K`
    /// keys, `OUT` outlier channels of the workload):
    /// `cargo test --release -p kiln-algorithms hata_recall_sweep -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn hata_recall_sweep() {
        let get = |n: &str, d: usize| -> usize {
            std::env::var(n)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let mut spec = WorkloadSpec::decode(
            1,
            get("HEADS", 8),
            get("KV", 2),
            get("SEQ", 1024),
            get("DIM", 64),
        );
        spec.seed = get("SEED", 5) as u64;
        spec.outlier_channels = get("OUT", spec.outlier_channels);
        let (seqs, center) = (get("SEQS", 1), get("CENTER", 0) == 1);
        let (rbit, epochs, k) = (get("RBIT", 128) as u32, get("EP", 20) as u32, get("K", 64));
        let t = std::time::Instant::now();
        let (random, trained) = random_vs_trained(&spec, (seqs, center), (rbit, epochs), k);
        println!(
            "CENTER {center} OUT {} SEQS {seqs} EP {epochs} RBIT {rbit} seed {} s{} d{} in {:.1?}: recall@{k} random {random:.3} trained {trained:.3}",
            spec.outlier_channels,
            spec.seed,
            spec.seq,
            spec.dim,
            t.elapsed()
        );
    }
}

#[cfg(test)]
mod diagnosis {
    use super::*;
    use crate::hata::study::{get, sign_hash_limit, spec_from_env};
    use crate::hata::train::reference::loss;
    use crate::hata::train::tight_frame;

    /// Samples from sequences `skip..skip + seqs` of `spec` (the first `skip` are evaluation).
    fn samples(
        spec: &WorkloadSpec,
        skip: usize,
        seqs: usize,
        cap: usize,
        seed: u64,
    ) -> Vec<HeadSamples> {
        let mut capture = spec.clone();
        capture.batch = skip + seqs;
        capture.queries = spec.seq / 2;
        let wl = generate(&capture).unwrap();
        let sh = wl.shape;
        let q_per = sh.heads * sh.queries * sh.dim;
        let k_per = sh.kv_heads * sh.seq * sh.dim;
        let shape = CaptureShape {
            batch: seqs,
            heads: sh.heads,
            kv_heads: sh.kv_heads,
            q_seq: sh.queries,
            seq: sh.seq,
            dim: sh.dim,
        };
        let options = SampleOptions {
            seed,
            center_keys: true,
            max_samples_per_head: cap,
            ..SampleOptions::default()
        };
        samples_from_capture(
            &wl.q[skip * q_per..],
            &wl.k[skip * k_per..],
            &shape,
            &options,
        )
        .unwrap()
    }

    /// The recall an infinitely long random sign hash would give: HATA's score with the
    /// expected Hamming agreement `1 − 2θ/π` of each query head with the (centred) key, times
    /// the key norm — the ceiling of random and tight-frame weights, which only estimate it.
    fn ideal_recall(wl: &Workload, k: usize) -> f64 {
        host_scores_recall(wl, &host_scores(wl, (4, 16), true, &sign_hash_limit), k)
    }

    #[test]
    #[ignore]
    fn hata_training_diagnosis() {
        let (spec, rbit) = spec_from_env();
        let seed = spec.seed;
        let eval = get("EVAL", 8.0) as usize;
        let seqs = get("SEQS", 4.0) as usize;
        let scale = get("SCALE", 1.0) as f32;
        let mut heads = samples(&spec, eval, seqs, get("CAP", 65536.0) as usize, seed);
        for h in &mut heads {
            h.queries.iter_mut().for_each(|x| *x *= scale);
            h.keys.iter_mut().for_each(|x| *x *= scale);
        }
        let mut o = TrainOptions::new(rbit as u32, get("EP", 20.0) as u32, seed);
        o.lr = get("LR", 0.1) as f32;
        o.batch = get("BATCH", 1024.0) as u32;
        let d = spec.dim;
        let w0 = random_weights(spec.kv_heads, d, rbit, seed);
        let wide: Vec<f64> = w0.iter().map(|&v| v as f64).collect();
        let t = std::time::Instant::now();
        let (w, losses) = reference::train(&heads, &wide, &o);
        let parts = |w: &[f64]| {
            let all: Vec<u32> = (0..heads[0].len() as u32).collect();
            loss(&w[..d * rbit], rbit, &heads[0], &all)
        };
        let (p0, p1) = (parts(&wide), parts(&w));
        let trained: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        let mut ev = spec.clone();
        ev.batch = eval;
        let wl = generate(&ev).unwrap();
        let mut line = format!(
            "seed {seed} rbit {rbit} ep {} seqs {seqs} scale {scale} lr {} n {} in {:.0?}: loss sim {:.4}→{:.4} bal {:.4}→{:.4} orth {:.2}→{:.2} (first {:.2} last {:.2}) |",
            o.epochs, o.lr, heads[0].len(), t.elapsed(), p0.similarity, p1.similarity, p0.balance, p1.balance,
            p0.orthogonality, p1.orthogonality, losses[0], losses[losses.len() - 1]
        );
        let ortho = tight_frame(&w0, spec.kv_heads, d, rbit);
        let ks: Vec<usize> = std::env::var("KS")
            .unwrap_or("32,64,103".into())
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect();
        for k in ks {
            let at = |w: &[f32]| host_recall(&wl, w, rbit, k, (4, 16), true);
            line.push_str(&format!(
                " @{k} {:.3}/{:.3}/{:.3} (ideal {:.3})",
                at(&w0),
                at(&ortho),
                at(&trained),
                ideal_recall(&wl, k)
            ));
        }
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verdict counts the budgets where trained beats random weights by each recall on
    /// its own: here by mass at 1 of 2 budgets, by qk score at 2 of 2.
    #[test]
    fn the_verdict_counts_both_recalls() {
        let row = |selector: &str, budget: &str, recall: f64, qk_recall: f64| FidelityRow {
            selector: selector.into(),
            budget: budget.into(),
            keys: 8,
            recall,
            qk_recall,
            output_error: 0.5,
        };
        let rows = [
            row("hata (random W)", "8", 0.5, 0.5),
            row("hata (trained W)", "8", 0.6, 0.6),
            row("hata (random W)", "16", 0.6, 0.5),
            row("hata (trained W)", "16", 0.5, 0.7),
        ];
        let v = verdict(&rows);
        assert!(
            v.contains("recall at 1/2 budgets (on qk recall at 2/2)"),
            "{v}"
        );
    }

    /// The group's summed q·k: b 2, heads 4 over 2 KV heads, 3 keys, D 2, against sums
    /// written out by hand for one (sequence, KV head, key), and every entry against the
    /// per-head dot products.
    #[test]
    fn group_qk_sums_the_groups_dot_products() {
        let sh = Shape {
            batch: 2,
            heads: 4,
            kv_heads: 2,
            queries: 1,
            seq: 3,
            dim: 2,
        };
        let q: Vec<f64> = (0..2 * 4 * 2).map(|i| i as f64 * 0.5 - 3.0).collect();
        let k: Vec<f64> = (0..2 * 3 * 2 * 2).map(|i| (i % 7) as f64 - 2.0).collect();
        let got = group_qk(sh, &q, &k);
        // sequence 1, KV head 1 (query heads 2 and 3), key 2
        let key = &k[((3 + 2) * 2 + 1) * 2..][..2];
        let want: f64 = (2..4)
            .map(|hq| {
                let qr = &q[(4 + hq) * 2..][..2];
                qr[0] * key[0] + qr[1] * key[1]
            })
            .sum();
        assert_eq!(got[(2 + 1) * 3 + 2], want);
        for bb in 0..2 {
            for kv in 0..2 {
                for t in 0..3 {
                    let key = &k[((bb * 3 + t) * 2 + kv) * 2..][..2];
                    let sum: f64 = (kv * 2..kv * 2 + 2)
                        .map(|hq| {
                            let qr = &q[(bb * 4 + hq) * 2..][..2];
                            qr[0] * key[0] + qr[1] * key[1]
                        })
                        .sum();
                    assert_eq!(got[(bb * 2 + kv) * 3 + t], sum);
                }
            }
        }
    }
}
