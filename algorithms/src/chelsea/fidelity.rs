//! How close attention over Chelsea's merged cache is to dense attention on a workload: the
//! relative error of the decode output at given reductions, with and without the `log n`
//! bias, next to two baselines holding the same number of entries — the sinks plus the most
//! recent tokens, and the sinks plus evenly spaced tokens. Chelsea runs on the device in
//! bf16; the dense output and the baselines are float64 references on the same bf16 values.

use half::bf16;
use kiln::Device;

use super::compress::{ChelseaCache, ChelseaConfig, ChelseaError};
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Tokens per chunk.
    pub chunk: u32,
    /// Sink tokens kept.
    pub sink: u32,
    /// Recent tokens kept.
    pub recent: u32,
}

/// The decode step at the workload's last position (its decode queries), over the cache
/// compressed at each reduction in `targets`, and the two baselines at the same memory.
pub fn evaluate(
    device: &Device,
    wl: &Workload,
    setting: Setting,
    targets: &[f64],
) -> Result<Vec<FidelityRow>, ChelseaError> {
    let sh = wl.shape;
    let (b, h, hk, s, d) = (sh.batch, sh.heads, sh.kv_heads, sh.seq, sh.dim);
    let q = wl.decode_query();
    let (k_cache, v_cache) = wl.kv_cache_layout();
    let to_bf16 = |v: &[f32]| -> Vec<bf16> { v.iter().map(|&x| bf16::from_f32(x)).collect() };
    let (qb, kb, vb) = (to_bf16(&q), to_bf16(&k_cache), to_bf16(&v_cache));
    let wide = |v: &[bf16]| -> Vec<f64> { v.iter().map(|x| x.to_f64()).collect() };
    let (qw, kw, vw) = (wide(&qb), wide(&kb), wide(&vb));
    let scale = 1.0 / (d as f64).sqrt();
    let (dense, _) = attention::decode(b, h, hk, s, d, &qw, &kw, &vw, None, s, scale);
    let (q_dev, k_dev, v_dev) = (
        device.upload(&qb)?,
        device.upload(&kb)?,
        device.upload(&vb)?,
    );
    let kept = |ids: &[u32]| -> f64 {
        let n = ids.len();
        let all: Vec<u32> = (0..b * hk).flat_map(|_| ids.iter().copied()).collect();
        let (o, _) = attention::decode(b, h, hk, s, d, &qw, &kw, &vw, Some(&all), n, scale);
        rel_err(&o, &dense)
    };
    let mut rows = Vec::new();
    for &target in targets {
        let cfg = ChelseaConfig {
            batch: b as u32,
            heads: h as u32,
            kv_heads: hk as u32,
            dim: d as u32,
            chunk: setting.chunk,
            ratio: target,
            sink: setting.sink,
            recent: setting.recent,
            capacity: s as u32,
        };
        let mut cache = ChelseaCache::<bf16>::new(device, cfg)?;
        cache.compress(&k_dev, &v_dev, s as u32)?;
        let entries = cache.len() as usize;
        let reduction = 1.0 - entries as f64 / s as f64;
        let mut out = device.zeros::<bf16>(b * h * d)?;
        let mut lse = device.zeros::<f32>(b * h)?;
        for bias in [true, false] {
            cache.attend(&q_dev, &mut out, &mut lse, bias)?;
            let got: Vec<f64> = device.download(&out)?.iter().map(|x| x.to_f64()).collect();
            rows.push(FidelityRow {
                method: if bias { "chelsea + log n" } else { "chelsea" }.into(),
                target,
                entries,
                reduction,
                output_error: rel_err(&got, &dense),
            });
        }
        for (method, ids) in [
            ("recent", recent_tokens(s, setting.sink as usize, entries)),
            (
                "evenly spaced",
                evenly_spaced(s, setting.sink as usize, entries),
            ),
        ] {
            rows.push(FidelityRow {
                method: method.into(),
                target,
                entries,
                reduction,
                output_error: kept(&ids),
            });
        }
    }
    Ok(rows)
}

/// The first `sink` tokens and the most recent `keep − sink` of `seq`.
pub fn recent_tokens(seq: usize, sink: usize, keep: usize) -> Vec<u32> {
    let sink = sink.min(keep);
    (0..sink)
        .chain(seq - (keep - sink)..seq)
        .map(|t| t as u32)
        .collect()
}

/// The first `sink` tokens and `keep − sink` evenly spaced over the rest of `seq`, the
/// last token included.
pub fn evenly_spaced(seq: usize, sink: usize, keep: usize) -> Vec<u32> {
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
