//! `kiln hata …`: the HATA pipeline's commands. `kiln hata train` trains the hash weights
//! `W` (`[kv_heads, D, rbit]`) of one layer on captured queries and keys.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};
use kiln_algorithms::hata::train::capture_file::{read_capture, write_weights, CaptureFileError};
use kiln_algorithms::hata::train::{
    samples_from_capture, HashTrainer, HeadSamples, Progress, SampleOptions, TrainOptions,
};
use kiln_runtime::Device;

use crate::cli_error::CliError;

/// The subcommands of `kiln hata`.
#[derive(Debug, Subcommand)]
pub enum HataCommand {
    /// Train the hash weights W [kv_heads, D, rbit] on one layer's captured Q/K (GPU, or the
    /// CPU emulator at small sizes).
    Train(TrainArgs),
}

/// The loss `kiln hata train` minimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ObjectiveArg {
    /// The paper's loss (similarity, bit balance, orthogonality).
    Paper,
    /// Pairs of a query's keys in the exact order, scored as HATA's selection scores them.
    Ranking,
}

/// The arguments of `kiln hata train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A safetensors file with "q" [B, H, S_q, D] and "k" [B, H_kv, S, D] (F32, F16 or BF16;
    /// S_q ≤ S, query row r at position S − S_q + r; other tensors are ignored).
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write "w" [kv_heads, D, rbit] (F32) and "loss" [steps, kv_heads] (F32).
    #[arg(long)]
    pub out: PathBuf,
    /// Bits per hash code (a multiple of 32, at most 512; HATA uses 128 or 256).
    #[arg(long, default_value_t = 128)]
    pub rbit: u32,
    /// Passes over the samples.
    #[arg(long, default_value_t = 20)]
    pub epochs: u32,
    /// Seed of the query positions, the subsampling, the initial weights and the shuffles.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// What to minimise: the paper's loss, or the pairwise ranking objective (learns more
    /// than a tight frame; see bench-results/cpu-fidelity-2026-12-05).
    #[arg(long, value_enum, default_value_t = ObjectiveArg::Paper)]
    pub objective: ObjectiveArg,
    /// Samples (ranking: pairs) per KV head in one SGD step [default: 1024; ranking: 256].
    #[arg(long)]
    pub batch: Option<u32>,
    /// Query positions drawn per sequence and query head (the paper draws 1; the ranking
    /// objective was measured with 16).
    #[arg(long, default_value_t = 1)]
    pub queries_per_sequence: usize,
    /// At most this many samples per KV head (uniform subsampling; 0: all).
    #[arg(long, default_value_t = 1 << 16)]
    pub max_samples: usize,
    /// Train on the CPU emulator even when a GPU is present.
    #[arg(long)]
    pub emulate: bool,
    /// Train on the raw keys instead of keys centred on their sequence's mean (for a
    /// `HataLayer` with `center_keys: false`).
    #[arg(long)]
    pub no_center_keys: bool,
}

/// Runs a `kiln hata` subcommand and returns what to print.
pub fn run(command: &HataCommand) -> Result<String, CliError> {
    match command {
        HataCommand::Train(args) => train(args),
    }
}

/// An unusable capture is the user's to fix (exit code 2); a failed write is not (1).
fn file_error(e: CaptureFileError) -> CliError {
    match e {
        CaptureFileError::Unusable(m) => CliError::usage(m),
        CaptureFileError::Write(m) => CliError::failure(m),
    }
}

/// `kiln hata train`: samples from the capture, trains on the device, writes the weights
/// and returns a report with the loss history.
pub fn train(args: &TrainArgs) -> Result<String, CliError> {
    let started = Instant::now();
    let mut options = match args.objective {
        ObjectiveArg::Paper => TrainOptions::new(args.rbit, args.epochs, args.seed),
        ObjectiveArg::Ranking => TrainOptions::ranking(args.rbit, args.epochs, args.seed),
    };
    if let Some(batch) = args.batch {
        options.batch = batch;
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(CliError::usage(format!(
                "--out {}: the folder {} does not exist",
                args.out.display(),
                parent.display()
            )));
        }
    }
    let (shape, q, k) = read_capture(&args.data).map_err(file_error)?;
    let samples = samples_from_capture(
        &q,
        &k,
        &shape,
        &SampleOptions {
            max_samples_per_head: args.max_samples,
            seed: args.seed,
            center_keys: !args.no_center_keys,
            queries_per_sequence: args.queries_per_sequence,
            ..SampleOptions::default()
        },
    )
    .map_err(|e| CliError::usage(e.to_string()))?;
    drop((q, k));
    let device = if args.emulate {
        Device::emulator()
    } else {
        Device::from_env().map_err(|e| CliError::usage(e.to_string()))?
    };
    let trainer = HashTrainer::new(&device, options).map_err(|e| CliError::usage(e.to_string()))?;
    let sizes: Vec<usize> = samples.iter().map(HeadSamples::len).collect();
    let total: usize = sizes.iter().sum();
    let steps = trainer.steps_per_epoch(&samples);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: q [{}, {}, {}, {}], k [{}, {}, {}, {}]; {} samples per KV head ({} in all), {} steps per epoch, {} epochs, rbit {}, on the {}",
        args.data.display(),
        shape.batch,
        shape.heads,
        shape.q_seq,
        shape.dim,
        shape.batch,
        shape.kv_heads,
        shape.seq,
        shape.dim,
        sizes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("/"),
        total,
        steps,
        args.epochs,
        args.rbit,
        device.name()
    );
    if !device.is_gpu() {
        // measured: about 6.5e-4 s per sample and epoch at D = 64, rbit = 32
        let eta = args.epochs as f64
            * total as f64
            * 6.5e-4
            * (shape.dim as f64 / 64.0)
            * (args.rbit as f64 / 32.0);
        eprintln!(
            "warning: training on the CPU emulator, about 1000x slower than a GPU (roughly {eta:.0} s here); use small captures, --max-samples or fewer --epochs"
        );
    }
    let w0 = trainer.initial_weights(&samples);
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new((steps * args.epochs as usize) as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] step {pos}/{len} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Some(bar)
    } else {
        None
    };
    let mut report = |p: &Progress| {
        if let Some(bar) = &bar {
            bar.inc(1);
        }
        if let Some(loss) = p.epoch_loss {
            let line = format!("epoch {}/{}: loss {loss:.5}", p.epoch + 1, p.epochs);
            match &bar {
                Some(bar) => {
                    bar.set_message(format!("loss {loss:.4}"));
                    bar.println(line);
                }
                None => eprintln!("{line}"),
            }
        }
    };
    let trained = trainer
        .train_from(&samples, &w0, &mut report)
        .map_err(|e| CliError::failure(e.to_string()))?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let history = trained.epoch_losses();
    let _ = writeln!(
        out,
        "loss per epoch (mean over its steps and the KV heads):"
    );
    for (e, loss) in history.iter().enumerate() {
        let _ = writeln!(out, "  epoch {:>3}: {loss:.5}", e + 1);
    }
    let kv = trained.kv_heads;
    let last: Vec<String> = trained.losses[trained.losses.len() - kv..]
        .iter()
        .map(|v| format!("{v:.4}"))
        .collect();
    let _ = writeln!(out, "last step's loss per KV head: {}", last.join(", "));
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("kiln.hata.rbit".to_string(), args.rbit.to_string()),
        ("kiln.hata.epochs".to_string(), args.epochs.to_string()),
        ("kiln.hata.batch".to_string(), options.batch.to_string()),
        (
            "kiln.hata.objective".to_string(),
            format!("{:?}", args.objective).to_lowercase(),
        ),
        (
            "kiln.hata.queries_per_sequence".to_string(),
            args.queries_per_sequence.to_string(),
        ),
        ("kiln.hata.seed".to_string(), args.seed.to_string()),
        (
            "kiln.hata.center_keys".to_string(),
            (!args.no_center_keys).to_string(),
        ),
        (
            "kiln.hata.samples_per_head".to_string(),
            sizes
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
        (
            "kiln.hata.data".to_string(),
            args.data.display().to_string(),
        ),
    ]);
    write_weights(
        &args.out,
        &trained.weights,
        vec![kv, trained.dim, trained.rbit],
        &trained.losses,
        vec![trained.losses.len() / kv, kv],
        metadata,
    )
    .map_err(file_error)?;
    let _ = writeln!(
        out,
        "wrote {}: w [{kv}, {}, {}] F32 and loss [{}, {kv}] in {:.1?}",
        args.out.display(),
        trained.dim,
        trained.rbit,
        trained.losses.len() / kv,
        started.elapsed()
    );
    Ok(out)
}
