//! `kiln fidelity --data FILE`: both sparse pipelines' fidelity reports (HATA and Chelsea
//! against dense attention and their baselines) on captured Q/K/V, e.g. activations dumped
//! from PyTorch in the layout `kiln_algorithms::workload` documents.

use std::path::PathBuf;

use clap::Args;
use kiln_algorithms::hata::train::capture_file::{read_weights, CaptureFileError};
use kiln_algorithms::workload::Workload;
use kiln_runtime::Device;

use crate::cli_error::CliError;

/// The arguments of `kiln fidelity`.
#[derive(Debug, Args)]
pub struct FidelityArgs {
    /// A safetensors file with "q" [B, H, S_q, D], "k" and "v" [B, H_kv, S, D] (F32, F16 or
    /// BF16); each sequence's last query row is the decode step.
    #[arg(long)]
    pub data: PathBuf,
    /// HATA hash weights from `kiln hata train` ("w" [H_kv, D, rbit]), reported beside random
    /// ones.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Bits per hash code when no weights are given (128 or 256).
    #[arg(long, default_value_t = 128)]
    pub rbit: u32,
    /// Run on the CPU emulator even when a GPU is present (small captures only).
    #[arg(long)]
    pub emulate: bool,
}

/// Runs both reports and returns them; a pipeline that cannot run on the capture (its shape
/// outside what the kernels take) says why in its place and makes the command fail.
pub fn run(args: &FidelityArgs) -> Result<String, CliError> {
    let wl = Workload::load(&args.data).map_err(|e| CliError::usage(e.to_string()))?;
    let weights = match &args.weights {
        Some(p) => Some(read_weights(p).map_err(|e| match e {
            CaptureFileError::Unusable(m) | CaptureFileError::Write(m) => CliError::usage(m),
        })?),
        None => None,
    };
    let rbit = weights.as_ref().map_or(args.rbit, |w| w.shape[2] as u32);
    let device = if args.emulate {
        Device::emulator()
    } else {
        Device::from_env().map_err(|e| CliError::usage(e.to_string()))?
    };
    let mut out = format!("{}: {:?}\n\n", args.data.display(), wl.shape);
    let mut failed = false;
    match kiln_algorithms::hata::fidelity::report(&device, &wl, weights.as_ref(), rbit) {
        Ok(r) => out.push_str(&r),
        Err(e) => {
            failed = true;
            out.push_str(&format!("HATA: not run: {e}\n"));
        }
    }
    out.push('\n');
    match kiln_algorithms::chelsea::fidelity::report(&device, &wl) {
        Ok(r) => out.push_str(&r),
        Err(e) => {
            failed = true;
            out.push_str(&format!("Chelsea: not run: {e}\n"));
        }
    }
    if failed {
        return Err(CliError::failure(out));
    }
    Ok(out)
}
