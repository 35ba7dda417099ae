//! The files of `kiln hata train`: a safetensors capture of one layer's queries and keys in,
//! the trained hash weights and their loss history out. Errors name the file, the tensor and
//! what is wrong with it, so a user can fix the capture.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::CaptureShape;
use crate::workload::io::to_f32;

/// Why a capture could not be used or the weights could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CaptureFileError {
    /// The capture is missing, not safetensors, or its tensors do not fit (the user's to fix).
    #[error("{0}")]
    Unusable(String),
    /// Writing the weights failed.
    #[error("{0}")]
    Write(String),
}

fn unusable(message: String) -> CaptureFileError {
    CaptureFileError::Unusable(message)
}

/// One tensor of the file as f32 with its shape, which must have the dimensions `dims`
/// (their names, for the message); errors name the file and the tensor.
fn read_tensor(
    file: &SafeTensors,
    name: &str,
    dims: &[&str],
    path: &Path,
) -> Result<(Vec<usize>, Vec<f32>), CaptureFileError> {
    let view = file.tensor(name).map_err(|_| {
        let mut names = file.names();
        names.sort();
        unusable(format!(
            "{}: no tensor \"{name}\" (the file holds: {})",
            path.display(),
            if names.is_empty() {
                "nothing".to_string()
            } else {
                names.join(", ")
            }
        ))
    })?;
    let shape = view.shape().to_vec();
    if shape.len() != dims.len() {
        return Err(unusable(format!(
            "{}: \"{name}\" has shape {shape:?}; it must have {} dimensions [{}]",
            path.display(),
            dims.len(),
            dims.join(", ")
        )));
    }
    let Some(values) = to_f32(view.dtype(), view.data()) else {
        return Err(unusable(format!(
            "{}: \"{name}\" is {:?}; F32, F16 or BF16 are read",
            path.display(),
            view.dtype()
        )));
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(unusable(format!(
            "{}: \"{name}\" holds a non-finite value ({}) at flat index {i}",
            path.display(),
            values[i]
        )));
    }
    Ok((shape, values))
}

/// Reads "q" [B, H, S_q, D] and "k" [B, H_kv, S, D] (F32, F16 or BF16) of a safetensors
/// file as f32 and checks that their shapes fit together and every value is finite.
pub fn read_capture(path: &Path) -> Result<(CaptureShape, Vec<f32>, Vec<f32>), CaptureFileError> {
    let bytes = std::fs::read(path)
        .map_err(|e| unusable(format!("cannot read {}: {e}", path.display())))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| unusable(format!("{}: not a safetensors file: {e}", path.display())))?;
    const CAPTURE: [&str; 4] = ["batch", "heads", "seq", "dim"];
    let (qs, q) = read_tensor(&file, "q", &CAPTURE, path)?;
    let (ks, k) = read_tensor(&file, "k", &CAPTURE, path)?;
    let shape = CaptureShape {
        batch: qs[0],
        heads: qs[1],
        kv_heads: ks[1],
        q_seq: qs[2],
        seq: ks[2],
        dim: qs[3],
    };
    let wrong = |why: String| {
        Err(unusable(format!(
            "{}: q {qs:?} and k {ks:?} do not fit together ({why}); want q [B, H, S_q, D] and k [B, H_kv, S, D]",
            path.display()
        )))
    };
    if qs.iter().chain(&ks).any(|&n| n == 0) {
        return wrong("a dimension is 0".into());
    }
    if ks[0] != qs[0] {
        return wrong("different batch".into());
    }
    if ks[3] != qs[3] {
        return wrong("different head dimension".into());
    }
    if !shape.heads.is_multiple_of(shape.kv_heads) {
        return wrong("H is not a multiple of H_kv".into());
    }
    if shape.q_seq > shape.seq {
        return wrong("more query rows than keys".into());
    }
    Ok((shape, q, k))
}

/// Trained hash weights as `kiln hata train` writes them: "w" `[kv_heads, dim, rbit]` (F32,
/// F16 or BF16), and whether they were trained on centred keys (the file's
/// `kiln.hata.center_keys`; true when absent, the training default).
pub struct HashWeights {
    /// `[kv_heads, dim, rbit]`, row-major.
    pub w: Vec<f32>,
    /// `[kv_heads, dim, rbit]`.
    pub shape: [usize; 3],
    /// Trained on keys centred on their sequence's mean.
    pub center_keys: bool,
}

/// Reads the hash weights of `path` (see [`HashWeights`]).
pub fn read_weights(path: &Path) -> Result<HashWeights, CaptureFileError> {
    let bytes = std::fs::read(path)
        .map_err(|e| unusable(format!("cannot read {}: {e}", path.display())))?;
    let bad = |e: safetensors::SafeTensorError| {
        unusable(format!("{}: not a safetensors file: {e}", path.display()))
    };
    let file = SafeTensors::deserialize(&bytes).map_err(bad)?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(bad)?;
    let (shape, w) = read_tensor(&file, "w", &["kv_heads", "dim", "rbit"], path)?;
    let center_keys = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("kiln.hata.center_keys"))
        .is_none_or(|v| v != "false");
    Ok(HashWeights {
        w,
        shape: [shape[0], shape[1], shape[2]],
        center_keys,
    })
}

/// Writes the trained "w" and the "loss" history (F32) with the run's settings in the
/// metadata.
pub fn write_weights(
    path: &Path,
    weights: &[f32],
    w_shape: Vec<usize>,
    losses: &[f32],
    loss_shape: Vec<usize>,
    metadata: HashMap<String, String>,
) -> Result<(), CaptureFileError> {
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let (wb, lb) = (bytes(weights), bytes(losses));
    let err = |e: safetensors::SafeTensorError| {
        CaptureFileError::Write(format!("cannot write {}: {e}", path.display()))
    };
    let w = safetensors::tensor::TensorView::new(Dtype::F32, w_shape, &wb).map_err(err)?;
    let l = safetensors::tensor::TensorView::new(Dtype::F32, loss_shape, &lb).map_err(err)?;
    safetensors::serialize_to_file([("w", w), ("loss", l)], Some(metadata), path).map_err(err)
}
