//! Baselines measured outside this process: `benches/baselines/attention.py` times PyTorch's
//! SDPA on the GPU machine and writes JSON rows; a Rust bench reads them back here (path from
//! `KILN_BASELINE_JSON`) and puts ours and PyTorch's time for the same shape in one row.
//!
//! # Shape names
//!
//! Both sides name a shape with the same string (built here by [`AttnShape::name`] and in the
//! Python script by `shape_name`; `tests/bench_support.rs` checks that they agree):
//!
//! - prefill: `"prefill b{B} h{Hq}/{Hkv} s{S} d{D} causal"` or `"... noncausal"`, e.g.
//!   `"prefill b1 h32/32 s8192 d128 causal"`, `"prefill b1 h32/8 s4096 d64 noncausal"`;
//! - decode (one query token per sequence, all `S` keys visible):
//!   `"decode b{B} h{Hq}/{Hkv} s{S} d{D}"`, e.g. `"decode b8 h32/8 s32768 d128"`.
//!
//! `B` batch, `Hq` query heads, `Hkv` key/value heads (GQA when fewer than `Hq`), `S` sequence
//! (prefill: query and key length; decode: key length), `D` head dimension; lengths in tokens
//! (`s32768`, never `32K`).
//!
//! # JSON
//!
//! Either a list of rows or an object with a `rows` list (plus free-form metadata such as the
//! device). Each row: `{"bench", "shape", "baseline", "median_ms", "tflops" or "gbps"}`; a row
//! whose `median_ms` is missing or not a number (a shape the baseline could not run, with an
//! `"error"`) is skipped.

use std::collections::BTreeMap;
use std::path::Path;

/// Environment variable with the path of the baseline JSON file.
pub const BASELINE_JSON_ENV: &str = "KILN_BASELINE_JSON";

/// One attention shape, named as in the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttnShape {
    /// Prefill (`S` queries) or decode (one query per sequence).
    pub decode: bool,
    /// Batch.
    pub b: usize,
    /// Query heads.
    pub hq: usize,
    /// Key/value heads.
    pub hkv: usize,
    /// Sequence length: prefill query = key length; decode key length.
    pub s: usize,
    /// Head dimension.
    pub d: usize,
    /// Causal mask (prefill only; decode sees every key).
    pub causal: bool,
}

impl AttnShape {
    /// A prefill shape.
    pub fn prefill(b: usize, hq: usize, hkv: usize, s: usize, d: usize, causal: bool) -> Self {
        AttnShape {
            decode: false,
            b,
            hq,
            hkv,
            s,
            d,
            causal,
        }
    }

    /// A decode shape (one query token per sequence).
    pub fn decode(b: usize, hq: usize, hkv: usize, s: usize, d: usize) -> Self {
        AttnShape {
            decode: true,
            b,
            hq,
            hkv,
            s,
            d,
            causal: false,
        }
    }

    /// The shape's name, the key of [`Baselines`].
    pub fn name(&self) -> String {
        let AttnShape {
            b, hq, hkv, s, d, ..
        } = *self;
        if self.decode {
            format!("decode b{b} h{hq}/{hkv} s{s} d{d}")
        } else {
            let mask = if self.causal { "causal" } else { "noncausal" };
            format!("prefill b{b} h{hq}/{hkv} s{s} d{d} {mask}")
        }
    }

    /// Floating-point operations of one forward pass (`Q·Kᵀ` and `P·V`, 2 flops per
    /// multiply-add), halved for a causal mask: `4·B·Hq·Sq·Skv·D`.
    pub fn flops(&self) -> f64 {
        let sq = if self.decode { 1 } else { self.s };
        let full = 4.0 * (self.b * self.hq * sq) as f64 * (self.s * self.d) as f64;
        if self.causal {
            full / 2.0
        } else {
            full
        }
    }

    /// Bytes of K and V (16-bit elements): what a decode step must read, the work its GB/s are
    /// computed from (here, in `attention.py`'s `gbps` and in the attention bench).
    pub fn kv_bytes(&self) -> f64 {
        2.0 * 2.0 * (self.b * self.hkv * self.s * self.d) as f64
    }
}

impl AttnShape {
    /// The call of the tile layer's flash attention for this prefill shape (S_q = S_kv).
    pub fn prefill_call(&self) -> kiln_algorithms::attention::prefill::PrefillCall {
        kiln_algorithms::attention::prefill::PrefillCall {
            batch: self.b as u32,
            heads: self.hq as u32,
            kv_heads: self.hkv as u32,
            s_q: self.s as u32,
            s_kv: self.s as u32,
            dim: self.d as u32,
            causal: self.causal,
        }
    }

    /// The flash-decoding shape of this decode shape (a cache of exactly S tokens).
    pub fn decode_shape(&self) -> kiln_algorithms::attention::decode::DecodeShape {
        kiln_algorithms::attention::decode::DecodeShape {
            batch: self.b as u32,
            heads: self.hq as u32,
            kv_heads: self.hkv as u32,
            seq: self.s as u32,
            dim: self.d as u32,
        }
    }
}

/// The prefill shapes `attention.py` measures: B=1, heads 32/32 and 32/8, S 4096 to 32768,
/// D 64/128, causal and not.
pub fn prefill_shapes() -> Vec<AttnShape> {
    let mut v = Vec::new();
    for (hq, hkv) in [(32, 32), (32, 8)] {
        for s in [4096, 8192, 16384, 32768] {
            for d in [64, 128] {
                for causal in [true, false] {
                    v.push(AttnShape::prefill(1, hq, hkv, s, d, causal));
                }
            }
        }
    }
    v
}

/// The decode shapes `attention.py` measures: B 1 and 8, heads 32/8, S 8K..256K, D 128.
pub fn decode_shapes() -> Vec<AttnShape> {
    let mut v = Vec::new();
    for b in [1, 8] {
        for s in [8192, 32768, 65536, 131072, 262144] {
            v.push(AttnShape::decode(b, 32, 8, s, 128));
        }
    }
    v
}

/// One baseline measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Baseline {
    /// Which bench measured it, e.g. `"attention-prefill"`.
    pub bench: String,
    /// The shape name (see the module docs).
    pub shape: String,
    /// What ran, e.g. `"torch-sdpa-flash"`.
    pub baseline: String,
    /// Median time of one run, ms.
    pub median_ms: f64,
    /// Achieved TFLOP/s, when the row reports it.
    pub tflops: Option<f64>,
    /// Achieved GB/s, when the row reports it.
    pub gbps: Option<f64>,
}

impl Baseline {
    /// Ours relative to this baseline by rate (`baseline ms / ours ms`: above 1 is faster than
    /// the baseline), the convention of the `vs` column of every bench row.
    pub fn ratio(&self, ours_ms: f64) -> f64 {
        self.median_ms / ours_ms
    }

    /// The `vs` field of a bench row comparing `ours_ms` with this baseline.
    pub fn vs(&self, ours_ms: f64) -> (String, f64) {
        (self.baseline.clone(), self.ratio(ours_ms))
    }
}

/// Baseline times keyed by shape name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Baselines {
    /// Rows by shape name (a shape measured twice keeps its last row).
    pub by_shape: BTreeMap<String, Baseline>,
    /// Rows without a time (the baseline failed on that shape), with the reason when given.
    pub skipped: Vec<(String, String)>,
}

impl Baselines {
    /// The baseline of the shape named `shape`.
    pub fn get(&self, shape: &str) -> Option<&Baseline> {
        self.by_shape.get(shape)
    }

    /// Parses the JSON text described in the module docs. Errors name what is wrong (not JSON,
    /// no rows, a row without a shape) instead of panicking.
    pub fn parse(text: &str) -> Result<Baselines, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let rows = match &value {
            serde_json::Value::Array(rows) => rows,
            serde_json::Value::Object(o) => match o.get("rows") {
                Some(serde_json::Value::Array(rows)) => rows,
                _ => return Err("the object has no `rows` list".into()),
            },
            _ => return Err("expected a list of rows or an object with `rows`".into()),
        };
        let mut out = Baselines::default();
        for (i, row) in rows.iter().enumerate() {
            let text_field = |key: &str| row.get(key).and_then(|v| v.as_str()).map(str::to_owned);
            let Some(shape) = text_field("shape") else {
                return Err(format!("row {i} has no `shape` string"));
            };
            let Some(median_ms) = row
                .get("median_ms")
                .and_then(|v| v.as_f64())
                .filter(|t| t.is_finite() && *t > 0.0)
            else {
                let why = text_field("error").unwrap_or_else(|| "no median_ms".into());
                out.skipped.push((shape, why));
                continue;
            };
            out.by_shape.insert(
                shape.clone(),
                Baseline {
                    bench: text_field("bench").unwrap_or_default(),
                    shape,
                    baseline: text_field("baseline").unwrap_or_else(|| "baseline".into()),
                    median_ms,
                    tflops: row.get("tflops").and_then(|v| v.as_f64()),
                    gbps: row.get("gbps").and_then(|v| v.as_f64()),
                },
            );
        }
        Ok(out)
    }

    /// Reads and parses the file at `path`.
    pub fn load_from(path: &Path) -> Result<Baselines, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Baselines::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The baselines in the file named by `KILN_BASELINE_JSON`; `Ok(None)` when it is not set,
    /// so a bench can run without them.
    pub fn from_env() -> Result<Option<Baselines>, String> {
        match std::env::var_os(BASELINE_JSON_ENV) {
            Some(p) if !p.is_empty() => Baselines::load_from(Path::new(&p)).map(Some),
            _ => Ok(None),
        }
    }
}
