//! `kiln hata …`: the HATA pipeline's commands. `kiln hata train` trains the hash weights
//! `W` (`[kv_heads, D, rbit]`) of one layer on captured queries and keys.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand};
use kiln_algorithms::hata::train::{
    random_weights, samples_from_capture, CaptureShape, HashTrainer, HeadSamples, Progress,
    SampleOptions, TrainOptions,
};
use kiln_runtime::Device;
use safetensors::{Dtype, SafeTensors};

use crate::cli::CliError;

/// The subcommands of `kiln hata`.
#[derive(Debug, Subcommand)]
pub enum HataCommand {
    /// Train the hash weights W [kv_heads, D, rbit] on one layer's captured Q/K (GPU, or the
    /// CPU emulator at small sizes).
    Train(TrainArgs),
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
    /// Samples per KV head in one SGD step.
    #[arg(long, default_value_t = 1024)]
    pub batch: u32,
    /// At most this many samples per KV head (uniform subsampling; 0: all).
    #[arg(long, default_value_t = 1 << 16)]
    pub max_samples: usize,
    /// Train on the CPU emulator even when a GPU is present.
    #[arg(long)]
    pub emulate: bool,
}

/// Runs a `kiln hata` subcommand and returns what to print.
pub fn run(command: &HataCommand) -> Result<String, CliError> {
    match command {
        HataCommand::Train(args) => train(args),
    }
}

fn usage(message: impl Into<String>) -> CliError {
    CliError {
        message: message.into(),
        code: 2,
    }
}

fn failure(message: impl Into<String>) -> CliError {
    CliError {
        message: message.into(),
        code: 1,
    }
}

/// One tensor of the file as f32 with its shape; errors name the file and the tensor.
fn read_tensor(
    file: &SafeTensors,
    name: &str,
    path: &Path,
) -> Result<(Vec<usize>, Vec<f32>), CliError> {
    let view = file.tensor(name).map_err(|_| {
        let mut names = file.names();
        names.sort();
        usage(format!(
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
    if shape.len() != 4 {
        return Err(usage(format!(
            "{}: \"{name}\" has shape {shape:?}; it must have 4 dimensions [batch, heads, seq, dim]",
            path.display()
        )));
    }
    let bytes = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        other => {
            return Err(usage(format!(
                "{}: \"{name}\" is {other:?}; F32, F16 or BF16 are read",
                path.display()
            )))
        }
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(usage(format!(
            "{}: \"{name}\" holds a non-finite value ({}) at flat index {i}",
            path.display(),
            values[i]
        )));
    }
    Ok((shape, values))
}

/// Reads "q" and "k" and checks that their shapes fit together.
fn read_capture(path: &Path) -> Result<(CaptureShape, Vec<f32>, Vec<f32>), CliError> {
    let bytes =
        std::fs::read(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| usage(format!("{}: not a safetensors file: {e}", path.display())))?;
    let (qs, q) = read_tensor(&file, "q", path)?;
    let (ks, k) = read_tensor(&file, "k", path)?;
    let shape = CaptureShape {
        batch: qs[0],
        heads: qs[1],
        kv_heads: ks[1],
        q_seq: qs[2],
        seq: ks[2],
        dim: qs[3],
    };
    let wrong = |why: String| {
        Err(usage(format!(
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

/// Writes "w" and "loss" (F32) with the run's settings in the metadata.
fn write_weights(
    path: &Path,
    weights: &[f32],
    w_shape: Vec<usize>,
    losses: &[f32],
    loss_shape: Vec<usize>,
    metadata: HashMap<String, String>,
) -> Result<(), CliError> {
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let (wb, lb) = (bytes(weights), bytes(losses));
    let err =
        |e: safetensors::SafeTensorError| failure(format!("cannot write {}: {e}", path.display()));
    let w = safetensors::tensor::TensorView::new(Dtype::F32, w_shape, &wb).map_err(err)?;
    let l = safetensors::tensor::TensorView::new(Dtype::F32, loss_shape, &lb).map_err(err)?;
    safetensors::serialize_to_file([("w", w), ("loss", l)], Some(metadata), path).map_err(err)
}

/// `kiln hata train`: samples from the capture, trains on the device, writes the weights
/// and returns a report with the loss history.
pub fn train(args: &TrainArgs) -> Result<String, CliError> {
    let started = Instant::now();
    let options = TrainOptions {
        batch: args.batch,
        ..TrainOptions::new(args.rbit, args.epochs, args.seed)
    };
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(usage(format!(
                "--out {}: the folder {} does not exist",
                args.out.display(),
                parent.display()
            )));
        }
    }
    let (shape, q, k) = read_capture(&args.data)?;
    let samples = samples_from_capture(
        &q,
        &k,
        &shape,
        &SampleOptions {
            max_samples_per_head: args.max_samples,
            seed: args.seed,
            ..SampleOptions::default()
        },
    )
    .map_err(|e| usage(e.to_string()))?;
    drop((q, k));
    let device = if args.emulate {
        Device::emulator()
    } else {
        Device::from_env().map_err(|e| usage(e.to_string()))?
    };
    let trainer = HashTrainer::new(&device, options).map_err(|e| usage(e.to_string()))?;
    let sizes: Vec<usize> = samples.iter().map(HeadSamples::len).collect();
    let total: usize = sizes.iter().sum();
    let steps = kiln_algorithms::hata::train::steps_per_epoch(&sizes, args.batch as usize);
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
    let w0 = random_weights(shape.kv_heads, shape.dim, args.rbit as usize, args.seed);
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
        .map_err(|e| failure(e.to_string()))?;
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
        ("kiln.hata.batch".to_string(), args.batch.to_string()),
        ("kiln.hata.seed".to_string(), args.seed.to_string()),
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
    )?;
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
