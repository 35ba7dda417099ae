//! `kiln fidelity --data FILE`: both sparse decode pipelines' fidelity reports (HATA and
//! Chelsea against dense attention and their baselines) on captured Q/K/V, e.g. activations
//! dumped from PyTorch in the layout `kiln_algorithms::workload` documents; with
//! `--video FxHxW`, AdaCluster's report on a captured video DiT layer instead.

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
    /// The capture is a video DiT attention layer (full attention, `q` with a row per token)
    /// whose tokens sit on a FRAMES×HEIGHT×WIDTH latent grid in raster order, then text
    /// tokens: run AdaCluster's report (against a spatio-temporal window and k-means on Q
    /// only, at the same key budget; a frame step counts as 1.5 row steps in the window's
    /// distance) instead of the decode pipelines'.
    #[arg(long, value_name = "FxHxW")]
    pub video: Option<String>,
    /// Query rows per head the AdaCluster report scores in float64 (0: every row).
    #[arg(long, default_value_t = 64)]
    pub rows: usize,
}

/// Parses `FxHxW` (e.g. `13x30x45`).
fn parse_grid(text: &str) -> Result<kiln_algorithms::adacluster::fidelity::Grid, CliError> {
    let dims: Vec<usize> = text
        .split(['x', 'X', ','])
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| CliError::usage(format!("--video {text}: expected FRAMESxHEIGHTxWIDTH")))?;
    match dims[..] {
        [frames, height, width] if frames * height * width > 0 => {
            Ok(kiln_algorithms::adacluster::fidelity::Grid {
                frames,
                height,
                width,
                frame_weight: 1.5,
            })
        }
        _ => Err(CliError::usage(format!(
            "--video {text}: expected three positive sizes FRAMESxHEIGHTxWIDTH"
        ))),
    }
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
    if let Some(video) = &args.video {
        use kiln_algorithms::adacluster::fidelity::{evaluate_on, table, verdict};
        let grid = parse_grid(video)?;
        if grid.frames * grid.height * grid.width > wl.shape.seq {
            return Err(CliError::usage(format!(
                "--video {video}: the grid holds more tokens than the capture's {}",
                wl.shape.seq
            )));
        }
        let config = kiln_algorithms::adacluster::layer::AdaClusterConfig::default();
        let sample = (args.rows > 0).then_some(args.rows);
        return match evaluate_on(&device, &wl, grid, &config, sample) {
            Ok(rows) => {
                out.push_str(&format!(
                    "AdaCluster (top-p 0.9), {} query rows per head:\n{}{}\n",
                    sample.map_or("all".to_string(), |s| s.to_string()),
                    table(&rows),
                    verdict(&rows)
                ));
                Ok(out)
            }
            Err(e) => Err(CliError::failure(format!(
                "{out}AdaCluster: not run: {e}\n"
            ))),
        };
    }
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
