//! How close attention over Chelsea's merged cache is to dense attention on a workload: the
//! relative error of the decode output at given reductions of the whole cache (the sink and
//! recent tokens, which are never merged, counted: the chunks are compressed further to make
//! up for them, see [`chunk_ratio_for`]), with and without the `log n` bias, next to two baselines holding the same number of entries — the sinks plus the most
//! recent tokens, and the sinks plus evenly spaced tokens. Chelsea runs on the device in
//! bf16; the dense output and the baselines are float64 references on the same bf16 values.

use half::bf16;
use kiln::Device;

use super::compress::{
    ChelseaCache, ChelseaConfig, ChelseaError, Similarity, DEFAULT_ROUND_FRACTION,
};
use super::plan::chunk_ratio_for;
use super::reference::{self, CacheDims};
use crate::attention::reference as attention;
use crate::metrics::rel_err;
use crate::workload::Workload;

/// One method at one reduction.
#[derive(Clone, Debug, PartialEq)]
pub struct FidelityRow {
    /// "chelsea + log n", "chelsea", "recent" or "evenly spaced".
    pub method: String,
    /// The reduction asked for (e.g. 0.8).
    pub target: f64,
    /// Entries kept per (sequence, KV head).
    pub entries: usize,
    /// `1 − entries / S`: the memory saved (the sizes Chelsea keeps, 4 bytes an entry
    /// against `4·D` for its key and value in bf16, are not counted).
    pub reduction: f64,
    /// Relative norm error of the attention output against dense attention.
    pub output_error: f64,
}

/// Chelsea's settings for [`evaluate`] apart from the reduction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Setting {
    /// Tokens per chunk.
    pub chunk: u32,
    /// Sink tokens kept.
    pub sink: u32,
    /// Recent tokens kept.
    pub recent: u32,
    /// At most this share of a chunk merges per round ([`ChelseaConfig::round_fraction`]).
    pub round_fraction: f64,
    /// How keys are compared ([`ChelseaConfig::similarity`]).
    pub similarity: Similarity,
}

impl Setting {
    /// Chunks of `chunk` tokens, sink 4, recent 64, the default round fraction and
    /// similarity.
    pub fn with_chunk(chunk: u32) -> Setting {
        Setting {
            chunk,
            sink: 4,
            recent: 64,
            round_fraction: DEFAULT_ROUND_FRACTION,
            similarity: Similarity::default(),
        }
    }

    /// A short description, e.g. "chunk 256, sink 4, recent 64, ≤ 25% a round, standardised".
    pub fn describe(&self) -> String {
        format!(
            "chunk {}, sink {}, recent {}, <= {}% a round, {:?} similarity",
            self.chunk,
            self.sink,
            self.recent,
            self.round_fraction * 100.0,
            self.similarity
        )
    }
}

/// The decode step at the workload's last position (its decode queries), over the cache
/// compressed at each reduction in `targets`, and the two baselines at the same memory.
pub fn evaluate(
    device: &Device,
    wl: &Workload,
    setting: Setting,
    targets: &[f64],
) -> Result<Vec<FidelityRow>, ChelseaError> {
    let step = Step::new(wl);
    let [(qb, _), (kb, _), (vb, _)] = &step.bf16;
    let (q_dev, k_dev, v_dev) = (device.upload(qb)?, device.upload(kb)?, device.upload(vb)?);
    let (b, h, d, s) = (step.b, step.h, step.d, step.s);
    let mut rows = Vec::new();
    for &target in targets {
        let mut cache = ChelseaCache::<bf16>::new(device, step.config(setting, target))?;
        cache.compress(&k_dev, &v_dev, s as u32)?;
        let entries = cache.len() as usize;
        let mut out = device.zeros::<bf16>(b * h * d)?;
        let mut lse = device.zeros::<f32>(b * h)?;
        for bias in [true, false] {
            cache.attend(&q_dev, &mut out, &mut lse, bias)?;
            let got: Vec<f64> = device.download(&out)?.iter().map(|x| x.to_f64()).collect();
            rows.push(step.row(chelsea_method(bias), target, entries, &got));
        }
        rows.extend(step.baselines(setting, target, entries));
    }
    Ok(rows)
}

/// [`evaluate`] on the host, without a device: the compression is the float64 reference
/// ([`reference::compress`], merged values rounded to bf16 after each round as the kernel
/// stores them) and attention over it the float64 reference with and without the bias.
/// Agrees with [`evaluate`] up to the f32 arithmetic of the kernels (and a rare different
/// merge where two similarities tie to f32 precision).
pub fn evaluate_host(wl: &Workload, setting: Setting, targets: &[f64]) -> Vec<FidelityRow> {
    let step = Step::new(wl);
    let [(_, qw), (_, kw), (_, vw)] = &step.bf16;
    let (b, h, hk, d, s) = (step.b, step.h, step.hk, step.d, step.s);
    let round = |x: f64| bf16::from_f32(x as f32).to_f64();
    let mut rows = Vec::new();
    for &target in targets {
        let cfg = step.config(setting, target);
        let merged = reference::compress(
            CacheDims {
                batch: b,
                seq: s,
                kv_heads: hk,
                dim: d,
            },
            kw,
            vw,
            (cfg.chunk as usize, cfg.keep() as usize),
            (cfg.sink as usize, cfg.recent as usize),
            cfg.method(),
            &round,
        );
        let n = merged.len;
        for bias in [true, false] {
            let counts = bias.then_some(&merged.n[..]);
            let (o, _) = reference::decode(
                (b, h, hk),
                n,
                d,
                qw,
                &merged.k,
                &merged.v,
                counts,
                n,
                step.scale,
            );
            let o: Vec<f64> = o.into_iter().map(round).collect();
            rows.push(step.row(chelsea_method(bias), target, n, &o));
        }
        rows.extend(step.baselines(setting, target, n));
    }
    rows
}

fn chelsea_method(bias: bool) -> &'static str {
    if bias {
        "chelsea + log n"
    } else {
        "chelsea"
    }
}

/// The decode step of a workload in bf16 and its dense float64 output.
struct Step {
    bf16: [(Vec<bf16>, Vec<f64>); 3],
    dense: Vec<f64>,
    scale: f64,
    b: usize,
    h: usize,
    hk: usize,
    s: usize,
    d: usize,
}

impl Step {
    fn new(wl: &Workload) -> Step {
        let sh = wl.shape;
        let (b, h, hk, s, d) = (sh.batch, sh.heads, sh.kv_heads, sh.seq, sh.dim);
        let bf16 = wl.decode_step_bf16();
        let [(_, qw), (_, kw), (_, vw)] = &bf16;
        let scale = 1.0 / (d as f64).sqrt();
        let (dense, _) = attention::decode(b, h, hk, s, d, qw, kw, vw, None, s, scale);
        Step {
            bf16,
            dense,
            scale,
            b,
            h,
            hk,
            s,
            d,
        }
    }

    fn config(&self, setting: Setting, target: f64) -> ChelseaConfig {
        ChelseaConfig {
            batch: self.b as u32,
            heads: self.h as u32,
            kv_heads: self.hk as u32,
            dim: self.d as u32,
            chunk: setting.chunk,
            // the per-chunk reduction that reaches `target` over the whole cache
            ratio: chunk_ratio_for(
                self.s as u32,
                setting.chunk,
                setting.sink,
                setting.recent,
                target,
            )
            .0,
            sink: setting.sink,
            recent: setting.recent,
            capacity: self.s as u32,
            round_fraction: setting.round_fraction,
            similarity: setting.similarity,
        }
    }

    fn row(&self, method: &str, target: f64, entries: usize, out: &[f64]) -> FidelityRow {
        FidelityRow {
            method: method.into(),
            target,
            entries,
            reduction: 1.0 - entries as f64 / self.s as f64,
            output_error: rel_err(out, &self.dense),
        }
    }

    /// The two baselines with `entries` tokens per (sequence, KV head).
    fn baselines(&self, setting: Setting, target: f64, entries: usize) -> [FidelityRow; 2] {
        let [(_, qw), (_, kw), (_, vw)] = &self.bf16;
        let (b, h, hk, s, d) = (self.b, self.h, self.hk, self.s, self.d);
        let sink = setting.sink as usize;
        let kept = |method: &str, ids: Vec<u32>| {
            let n = ids.len();
            let all: Vec<u32> = (0..b * hk).flat_map(|_| ids.iter().copied()).collect();
            let (o, _) = attention::decode(b, h, hk, s, d, qw, kw, vw, Some(&all), n, self.scale);
            self.row(method, target, entries, &o)
        };
        [
            kept("recent", recent_tokens(s, sink, entries)),
            kept("evenly spaced", evenly_spaced(s, sink, entries)),
        ]
    }
}

/// The first `sink` tokens and the most recent `keep − sink` of `seq` (`keep` at most `seq`:
/// more is clamped to all of them).
pub fn recent_tokens(seq: usize, sink: usize, keep: usize) -> Vec<u32> {
    let keep = keep.min(seq);
    let sink = sink.min(keep);
    (0..sink)
        .chain(seq - (keep - sink)..seq)
        .map(|t| t as u32)
        .collect()
}

/// The first `sink` tokens and `keep − sink` evenly spaced over the rest of `seq`, the
/// last token included (`keep` at most `seq`: more is clamped to all of them).
pub fn evenly_spaced(seq: usize, sink: usize, keep: usize) -> Vec<u32> {
    let keep = keep.min(seq);
    let sink = sink.min(keep);
    let (rest, n) = (seq - sink, keep - sink);
    (0..sink)
        .chain((1..=n).map(|i| sink + i * rest / n - 1))
        .map(|t| t as u32)
        .collect()
}

/// The rows as a table.
pub fn table(rows: &[FidelityRow]) -> String {
    let mut out = format!(
        "{:<16} {:>7} {:>8} {:>10} {:>12}\n",
        "method", "target", "entries", "reduction", "output err"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<16} {:>6.0}% {:>8} {:>9.1}% {:>12.3e}\n",
            r.method,
            r.target * 100.0,
            r.entries,
            r.reduction * 100.0,
            r.output_error
        ));
    }
    out
}

/// One line saying whether Chelsea beat its baselines in `rows` (from [`evaluate`]): the
/// better of its two variants against "recent" and "evenly spaced" by output error at each
/// target, and how far each target's reduction fell short, if it did.
pub fn verdict(rows: &[FidelityRow]) -> String {
    let mut targets: Vec<f64> = rows.iter().map(|r| r.target).collect();
    targets.dedup();
    let of = |t: f64, pred: &dyn Fn(&str) -> bool| {
        rows.iter()
            .filter(|r| r.target == t && pred(&r.method))
            .map(|r| r.output_error)
            .fold(f64::INFINITY, f64::min)
    };
    let chelsea = |t: f64| of(t, &|m| m.starts_with("chelsea"));
    let beats = |baseline: &str| {
        targets
            .iter()
            .filter(|&&t| chelsea(t) < of(t, &|m| m == baseline))
            .count()
    };
    let short: Vec<String> = targets
        .iter()
        .filter_map(|&t| {
            let reached = rows
                .iter()
                .filter(|r| r.target == t && r.method.starts_with("chelsea"))
                .map(|r| r.reduction)
                .fold(f64::NAN, f64::max);
            (reached + 1e-9 < t)
                .then(|| format!("{:.0}% reached {:.1}%", t * 100.0, reached * 100.0))
        })
        .collect();
    let n = targets.len();
    format!(
        "verdict: Chelsea has a lower output error than \"recent\" at {}/{n} targets and \"evenly spaced\" at {}/{n}; {}",
        beats("recent"),
        beats("evenly spaced"),
        if short.is_empty() {
            "every target reduction reached".to_string()
        } else {
            format!("reduction short of its target: {}", short.join(", "))
        }
    )
}

/// The fidelity report on a captured (or loaded) workload `wl`, as `kiln fidelity --data`
/// prints it: chunks of 512 (128 below 8K tokens), reductions of 50, 75 and 80% of the whole
/// cache, both baselines, and the verdict line.
pub fn report(device: &Device, wl: &Workload) -> Result<String, ChelseaError> {
    let sh = wl.shape;
    let setting = Setting::with_chunk(if sh.seq >= 8192 { 512 } else { 128 });
    let rows = evaluate(device, wl, setting, &[0.5, 0.75, 0.8])?;
    Ok(format!(
        "Chelsea on the {}: b{} h{}/{} s{} d{}, {}\n{}{}\n",
        device.name(),
        sh.batch,
        sh.heads,
        sh.kv_heads,
        sh.seq,
        sh.dim,
        setting.describe(),
        table(&rows),
        verdict(&rows)
    ))
}

#[cfg(test)]
mod sweep {
    use super::*;
    use crate::workload::{generate, WorkloadSpec};

    /// Chelsea's host fidelity (float64 reference compression) over chunk sizes, round
    /// fractions, similarities and recent windows on a decode workload (`SEQ`, `DIM`, `HEADS`,
    /// `KV`, `SEED` from the environment; `CHUNK` keeps one chunk size), printed beside the
    /// two baselines:
    /// `cargo test --release -p kiln-algorithms chelsea_setting_sweep -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn chelsea_setting_sweep() {
        let get = |n: &str, d: usize| -> usize {
            std::env::var(n)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let spec = WorkloadSpec {
            seed: get("SEED", 0) as u64,
            ..WorkloadSpec::decode(
                1,
                get("HEADS", 8),
                get("KV", 2),
                get("SEQ", 1024),
                get("DIM", 64),
            )
        };
        let wl = generate(&spec).unwrap();
        for chunk in [64u32, 128, 256, 512] {
            if (chunk as usize) * 2 > spec.seq || ![0, chunk as usize].contains(&get("CHUNK", 0)) {
                continue;
            }
            for recent in [16u32, 64] {
                for fraction in [0.125, 0.25, 0.5] {
                    for similarity in [Similarity::Standardised, Similarity::Cosine] {
                        let setting = Setting {
                            chunk,
                            sink: 4,
                            recent,
                            round_fraction: fraction,
                            similarity,
                        };
                        let rows = evaluate_host(&wl, setting, &[0.5, 0.8]);
                        let err = |m: &str, t: f64| {
                            rows.iter()
                                .filter(|r| r.target == t && r.method.starts_with(m))
                                .map(|r| r.output_error)
                                .fold(f64::INFINITY, f64::min)
                        };
                        println!(
                            "{} | 50%: chelsea {:.3} recent {:.3} even {:.3} | 80%: chelsea {:.3} recent {:.3} even {:.3}",
                            setting.describe(),
                            err("chelsea", 0.5),
                            err("recent", 0.5),
                            err("evenly", 0.5),
                            err("chelsea", 0.8),
                            err("recent", 0.8),
                            err("evenly", 0.8)
                        );
                    }
                }
            }
        }
    }
}
