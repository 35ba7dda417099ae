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
    /// The main job: run Kiln end to end on this machine and print what it did.
    Demo {
        /// Target architecture when no GPU is present.
        #[arg(long, default_value = "sm_90")]
        arch: String,
    },
}

fn main() {
    let args = Args::parse();
    let result = match args.command {
        Command::List => Ok(kiln::cli::list()),
        Command::Emit {
            kernel,
            consts,
            dtype,
            arch,
        } => kiln::cli::emit(&kernel, &consts, dtype.as_deref(), &arch),
        Command::Check { arches } => kiln::cli::check(&arches),
        Command::Demo { arch } => kiln::demo::run(&arch),
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
