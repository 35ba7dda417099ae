//! `safetensors` files of Q/K/V: tensors `"q"` `[B, H, S_q, D]`, `"k"` and `"v"`
//! `[B, H_kv, S, D]`, F32/F16/BF16 on load, F32 or BF16 on save (see the parent module docs).

use super::{Shape, Workload, WorkloadError, WorkloadSpec};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The element type [`Workload::save_as`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveDtype {
    /// 32-bit floats: the exact values (the default of [`Workload::save`]).
    F32,
    /// bfloat16, rounded to nearest even: half the bytes; what the GPU pipelines compute in.
    Bf16,
}

/// Prefix of the metadata keys that hold a generated workload's spec.
const META_PREFIX: &str = "kiln.workload.";

/// One f32 tensor to write, converted to the file's dtype when the writer asks for its bytes.
struct OutTensor<'a> {
    data: &'a [f32],
    shape: Vec<usize>,
    dtype: SaveDtype,
}

impl View for OutTensor<'_> {
    fn dtype(&self) -> Dtype {
        match self.dtype {
            SaveDtype::F32 => Dtype::F32,
            SaveDtype::Bf16 => Dtype::BF16,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let bytes: Vec<u8> = match self.dtype {
            SaveDtype::F32 => self.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            SaveDtype::Bf16 => self
                .data
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
        };
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        self.data.len()
            * match self.dtype {
                SaveDtype::F32 => 4,
                SaveDtype::Bf16 => 2,
            }
    }
}

impl Workload {
    /// Writes the workload to `path` as F32 `safetensors` (see [`Workload::save_as`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), WorkloadError> {
        self.save_as(path, SaveDtype::F32)
    }

    /// Writes the workload to `path` as `safetensors` with tensors `q` `[B, H, S_q, D]`, `k`
    /// and `v` `[B, H_kv, S, D]` in `dtype`, plus the spec in the metadata when there is one.
    /// The file is written beside `path` and renamed over it.
    pub fn save_as(&self, path: impl AsRef<Path>, dtype: SaveDtype) -> Result<(), WorkloadError> {
        let path = path.as_ref();
        let s = &self.shape;
        let q_shape = vec![s.batch, s.heads, s.queries, s.dim];
        let kv_shape = vec![s.batch, s.kv_heads, s.seq, s.dim];
        let tensors = [
            ("q", &self.q, q_shape),
            ("k", &self.k, kv_shape.clone()),
            ("v", &self.v, kv_shape),
        ]
        .map(|(name, data, shape)| (name, OutTensor { data, shape, dtype }));
        let mut metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        if let Some(spec) = &self.spec {
            metadata.extend(spec_to_metadata(spec));
        }
        safetensors::serialize_to_file(tensors, Some(metadata), path).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(source) => WorkloadError::Io {
                path: path.to_path_buf(),
                source,
            },
            other => WorkloadError::Format {
                path: path.to_path_buf(),
                message: other.to_string(),
            },
        })
    }

    /// Reads a workload from a `safetensors` file holding `q` `[B, H, S_q, D]`, `k` and `v`
    /// `[B, H_kv, S, D]` (F32, F16 or BF16; other tensors are ignored). Checks names, dtypes,
    /// ranks, that the shapes fit together (same batch and `D`, `k` and `v` alike, `H` a
    /// multiple of `H_kv`, `S_q ≤ S`, no empty dimension) and that every value is finite.
    /// The spec comes back when the file was written by [`Workload::save`] from a generated
    /// workload.
    pub fn load(path: impl AsRef<Path>) -> Result<Workload, WorkloadError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| WorkloadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let format = |e: safetensors::SafeTensorError| WorkloadError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let file = SafeTensors::deserialize(&bytes).map_err(format)?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(format)?;
        let mut names: Vec<&str> = file.names();
        names.sort_unstable();
        let found = if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        };
        let read = |name: &'static str| -> Result<(Vec<usize>, Vec<f32>), WorkloadError> {
            let view = file
                .tensor(name)
                .map_err(|_| WorkloadError::MissingTensor {
                    path: path.to_path_buf(),
                    name,
                    found: found.clone(),
                })?;
            let shape = view.shape().to_vec();
            if shape.len() != 4 {
                return Err(WorkloadError::WrongRank {
                    path: path.to_path_buf(),
                    name,
                    shape,
                });
            }
            let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
                WorkloadError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name,
                    dtype: format!("{:?}", view.dtype()),
                }
            })?;
            if let Some(index) = data.iter().position(|x| !x.is_finite()) {
                return Err(WorkloadError::NonFinite {
                    path: path.to_path_buf(),
                    name,
                    index,
                });
            }
            Ok((shape, data))
        };
        let (qs, q) = read("q")?;
        let (ks, k) = read("k")?;
        let (vs, v) = read("v")?;
        let shape = check_shapes(path, &qs, &ks, &vs)?;
        let spec = header
            .metadata()
            .as_ref()
            .and_then(|m| spec_from_metadata(m, &shape));
        Ok(Workload {
            shape,
            spec,
            q,
            k,
            v,
        })
    }
}

/// The elements of a little-endian tensor as f32, or `None` for an unsupported dtype (the
/// byte count was checked by `safetensors`).
pub(crate) fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let out = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    };
    Some(out)
}

/// The [`Shape`] of rank-4 tensors `q`, `k`, `v`, or what does not fit.
fn check_shapes(
    path: &Path,
    q: &[usize],
    k: &[usize],
    v: &[usize],
) -> Result<Shape, WorkloadError> {
    let mismatch = |message: String| WorkloadError::ShapeMismatch {
        path: path.to_path_buf(),
        message,
    };
    if k != v {
        return Err(mismatch(format!(
            "k {k:?} and v {v:?} must have the same shape [batch, kv_heads, seq, dim]"
        )));
    }
    if q[0] != k[0] {
        return Err(mismatch(format!(
            "q has batch {} but k/v have {}",
            q[0], k[0]
        )));
    }
    if q[3] != k[3] {
        return Err(mismatch(format!(
            "q has head dimension {} but k/v have {}",
            q[3], k[3]
        )));
    }
    if q.contains(&0) || k.contains(&0) {
        return Err(mismatch(format!("empty dimension in q {q:?} or k/v {k:?}")));
    }
    if !q[1].is_multiple_of(k[1]) {
        return Err(WorkloadError::HeadMismatch {
            path: PathBuf::from(path),
            heads: q[1],
            kv_heads: k[1],
        });
    }
    if q[2] > k[2] {
        return Err(mismatch(format!(
            "q has {} query rows but k/v only {} tokens (query rows are the last positions)",
            q[2], k[2]
        )));
    }
    Ok(Shape {
        batch: q[0],
        heads: q[1],
        kv_heads: k[1],
        queries: q[2],
        seq: k[2],
        dim: q[3],
    })
}

/// The spec as `kiln.workload.<field>` metadata (numbers in Rust's round-trip notation).
fn spec_to_metadata(spec: &WorkloadSpec) -> Vec<(String, String)> {
    let s = spec;
    let fields: [(&str, String); 22] = [
        ("batch", s.batch.to_string()),
        ("heads", s.heads.to_string()),
        ("kv_heads", s.kv_heads.to_string()),
        ("seq", s.seq.to_string()),
        ("queries", s.queries.to_string()),
        ("dim", s.dim.to_string()),
        ("seed", s.seed.to_string()),
        ("sinks", s.sinks.to_string()),
        ("sink_logit", s.sink_logit.to_string()),
        ("heavy_hitters", s.heavy_hitters.to_string()),
        ("heavy_logit", s.heavy_logit.to_string()),
        ("recency", s.recency.to_string()),
        ("recency_window", s.recency_window.to_string()),
        ("clusters", s.clusters.to_string()),
        ("cluster_spread", s.cluster_spread.to_string()),
        ("cluster_logit", s.cluster_logit.to_string()),
        ("outlier_channels", s.outlier_channels.to_string()),
        ("outlier_scale", s.outlier_scale.to_string()),
        ("noise_logit", s.noise_logit.to_string()),
        ("head_variation", s.head_variation.to_string()),
        ("sharpness", s.sharpness.to_string()),
        ("value_coherence", s.value_coherence.to_string()),
    ];
    fields
        .into_iter()
        .map(|(k, v)| (format!("{META_PREFIX}{k}"), v))
        .collect()
}

/// The spec stored in a file's metadata, if all of it is there, parses, is valid and agrees
/// with the tensors' shape; otherwise `None` (the metadata is informative only).
fn spec_from_metadata(meta: &HashMap<String, String>, shape: &Shape) -> Option<WorkloadSpec> {
    fn get<T: std::str::FromStr>(meta: &HashMap<String, String>, key: &str) -> Option<T> {
        meta.get(&format!("{META_PREFIX}{key}"))?.parse().ok()
    }
    let spec = WorkloadSpec {
        batch: get(meta, "batch")?,
        heads: get(meta, "heads")?,
        kv_heads: get(meta, "kv_heads")?,
        seq: get(meta, "seq")?,
        queries: get(meta, "queries")?,
        dim: get(meta, "dim")?,
        seed: get(meta, "seed")?,
        sinks: get(meta, "sinks")?,
        sink_logit: get(meta, "sink_logit")?,
        heavy_hitters: get(meta, "heavy_hitters")?,
        heavy_logit: get(meta, "heavy_logit")?,
        recency: get(meta, "recency")?,
        recency_window: get(meta, "recency_window")?,
        clusters: get(meta, "clusters")?,
        cluster_spread: get(meta, "cluster_spread")?,
        cluster_logit: get(meta, "cluster_logit")?,
        outlier_channels: get(meta, "outlier_channels")?,
        outlier_scale: get(meta, "outlier_scale")?,
        noise_logit: get(meta, "noise_logit")?,
        head_variation: get(meta, "head_variation")?,
        sharpness: get(meta, "sharpness")?,
        value_coherence: get(meta, "value_coherence")?,
    };
    (spec.shape() == *shape && spec.validate().is_ok()).then_some(spec)
}
