//! The `kiln` command: list, emit, check and demo the registered kernels.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Kiln: GPU kernels written as Rust functions"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every registered kernel with its comptime parameters.
    List,
    /// Print the CUDA of one specialisation of a kernel.
    Emit {
        /// Kernel name (or module::name when ambiguous).
        kernel: String,
        /// A comptime value, NAME=VALUE (repeatable).
        #[arg(long = "const", value_name = "NAME=VALUE")]
        consts: Vec<String>,
        /// The element type bound to the kernel's `T: Float` parameter.
        #[arg(long)]
        dtype: Option<String>,
        /// Target architecture.
        #[arg(long, default_value = "sm_90")]
        arch: String,
    },
    /// Compile every registered kernel's example specialisations with NVRTC.
    Check {
        /// Target architectures (repeatable).
        #[arg(long = "arch", default_values = ["sm_80", "sm_90"])]
        arches: Vec<String>,
    },
    /// Launch a kernel on random inputs (GPU, or the CPU emulator with its checks).
    Run {
        /// Kernel name (or module::name when ambiguous).
        kernel: String,
        /// A comptime value, NAME=VALUE (repeatable).
        #[arg(long = "const", value_name = "NAME=VALUE")]
        consts: Vec<String>,
        /// The element type bound to the kernel's `T: Float` parameter(s).
        #[arg(long)]
        dtype: Option<String>,
        /// Run on the CPU emulator (bounds, race and divergence checks on) even with a GPU.
        #[arg(long)]
        emulate: bool,
        /// Elements in each slice argument.
        #[arg(long, default_value_t = 4096)]
        len: u32,
        /// Blocks in the grid: X, XxY or XxYxZ.
        #[arg(long, default_value = "16", value_parser = kiln::runner::parse_dim)]
        grid: (u32, u32, u32),
        /// Threads per block: X, XxY or XxYxZ.
        #[arg(long, default_value = "256", value_parser = kiln::runner::parse_dim)]
        block: (u32, u32, u32),
        /// Bytes of dynamic shared memory per block.
        #[arg(long, default_value_t = 0)]
        dyn_shared: u32,
        /// A scalar argument, NAME=VALUE (repeatable); unset integers get --len, floats 1.0.
        #[arg(long = "arg", value_name = "NAME=VALUE")]
        args: Vec<String>,
        /// Seed of the random inputs.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Search the launch shape (and comptime values given with --search) of a kernel.
    Tune {
        /// Kernel name (or module::name); omit with --show.
        kernel: Option<String>,
        /// Print every stored search instead.
        #[arg(long)]
        show: bool,
        /// Search again even if a result is stored.
        #[arg(long)]
        force: bool,
        /// A comptime value to search, NAME=v1,v2,… (repeatable).
        #[arg(long = "search", value_name = "NAME=V1,V2")]
        search: Vec<String>,
        /// A fixed comptime value, NAME=VALUE (repeatable).
        #[arg(long = "const", value_name = "NAME=VALUE")]
        consts: Vec<String>,
        /// The element type bound to the kernel's `T: Float` parameter(s).
        #[arg(long)]
        dtype: Option<String>,
        /// Tune on the CPU emulator (for trying the command without a GPU).
        #[arg(long)]
        emulate: bool,
        /// Elements in each slice argument.
        #[arg(long, default_value_t = 1 << 24)]
        len: u32,
        /// Bytes of dynamic shared memory per block.
        #[arg(long, default_value_t = 0)]
        dyn_shared: u32,
        /// A scalar argument, NAME=VALUE (repeatable); unset integers get --len, floats 1.0.
        #[arg(long = "arg", value_name = "NAME=VALUE")]
        args: Vec<String>,
    },
    /// Measure the present GPU's copy and host-to-device bandwidth and store them for the benches.
    Roofline,
    /// HATA (hash-aware top-k attention): train its hash weights.
    Hata {
        #[command(subcommand)]
        command: kiln::hata_cli::HataCommand,
    },
    /// Fidelity of the sparse pipelines (HATA, Chelsea) on captured Q/K/V (a safetensors file).
    Fidelity(kiln::fidelity_cli::FidelityArgs),
    /// The main job: run Kiln end to end on this machine and print what it did.
    Demo {
        /// Target architecture when no GPU is present.
        #[arg(long, default_value = "sm_90")]
        arch: String,
    },
    /// Compile one program read from stdin (what `check`, `tune` and a library with a
    /// compile worker run in a child process, so a compiler crash cannot take them down).
    #[command(name = "compile-worker", hide = true)]
    CompileWorker {
        /// Target architecture, e.g. sm_90.
        #[arg(long)]
        arch: String,
        /// The program's name in NVRTC's log.
        #[arg(long)]
        program: String,
        /// Approximate transcendentals, flushed denormals.
        #[arg(long)]
        fast_math: bool,
    },
}

fn main() {
    let args = Args::parse();
    // checking and tuning compile many kernels: each cache miss in a child process, so that a
    // compiler crash is reported as an error naming the kernel instead of ending the command
    if matches!(args.command, Command::Check { .. } | Command::Tune { .. }) {
        kiln::runtime::isolated::set_compile_worker(std::env::current_exe().ok());
    }
    let result = match args.command {
        Command::CompileWorker {
            arch,
            program,
            fast_math,
        } => std::process::exit(kiln::runtime::isolated::run_worker(&arch, &program, fast_math)),
        Command::List => Ok(kiln::cli::list()),
        Command::Emit {
            kernel,
            consts,
            dtype,
            arch,
        } => kiln::cli::emit(&kernel, &consts, dtype.as_deref(), &arch),
        Command::Check { arches } => kiln::cli::check(&arches),
        Command::Demo { arch } => kiln::demo::run(&arch),
        Command::Hata { command } => kiln::hata_cli::run(&command),
        Command::Fidelity(args) => kiln::fidelity_cli::run(&args),
        Command::Roofline => kiln::runtime::Device::from_env()
            .and_then(|d| kiln::roofline::measure(&d))
            .map(|r| {
                format!(
                    "{}: device copy {:.0} GB/s (read + write), pinned host->device {:.1} GB/s, mma.sync bf16 {:.0} TFLOP/s\n",
                    r.device,
                    r.copy_gb_s,
                    r.h2d_gb_s,
                    r.mma_bf16_tflops.unwrap_or(f64::NAN)
                )
            })
            .map_err(|e| kiln::cli_error::CliError { message: e.to_string(), code: 1 }),
        Command::Tune { show: true, .. } => Ok(kiln::tuning::show()),
        Command::Tune { kernel: None, .. } => Err(kiln::cli_error::CliError {
            message: "name a kernel to tune, or pass --show".into(),
            code: 2,
        }),
        Command::Tune {
            kernel: Some(kernel),
            force,
            search,
            consts,
            dtype,
            emulate,
            len,
            dyn_shared,
            args,
            ..
        } => kiln::tuning::run(&kiln::tuning::TuneRequest {
            run: kiln::runner::RunRequest {
                kernel: &kernel,
                consts: &consts,
                dtype: dtype.as_deref(),
                emulate,
                len,
                grid: (1, 1, 1),
                block: (1, 1, 1),
                dyn_shared,
                args: &args,
                seed: 1,
            },
            search: &search,
            force,
        }),
        Command::Run {
            kernel,
            consts,
            dtype,
            emulate,
            len,
            grid,
            block,
            dyn_shared,
            args,
            seed,
        } => kiln::runner::run(&kiln::runner::RunRequest {
            kernel: &kernel,
            consts: &consts,
            dtype: dtype.as_deref(),
            emulate,
            len,
            grid,
            block,
            dyn_shared,
            args: &args,
            seed,
        }),
    };
    match result {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprint!("{}", e.message);
            if !e.message.ends_with('\n') {
                eprintln!();
            }
            std::process::exit(e.code);
        }
    }
}
