//! The CPU emulator backend: runs a specialised Kiln kernel — the same IR the CUDA printer
//! lowers — on the CPU, with GPU semantics, and checks it while it runs.
//!
//! ```text
//! Program ──compile──▶ bytecode ──scheduler──▶ blocks on host threads ──interp──▶ threads
//!                                               └─ warps (collectives), barriers, shadow memory
//! ```
//!
//! * **Semantics.** Grids and blocks of up to 1024 threads, warps of 32 lanes, barriers
//!   anywhere (in loops and branches), shuffles/ballot/all/any/`activemask`/`sync_warp`
//!   with PTX's lane rules, atomics that are real read-modify-writes across blocks, static
//!   and dynamic shared memory, register arrays, 16-byte vector loads and stores,
//!   `cp_async` copies that read global memory when issued and land in shared memory at
//!   `cp_async_wait`, and tensor-core fragments (`ldmatrix`, `mma.sync` m16n8k16, packed
//!   conversions) with the PTX ISA's lane layouts, and the Hopper instructions (see `hopper`):
//!   transaction barriers (`mbarrier_init`/`arrive`/`expect_tx`/`wait`, the wait blocking
//!   the thread), `tma_load_2d` box loads from the emulator's tensor maps (swizzled, zero
//!   outside the tensor, completing bytes on their barrier), `wgmma_desc` and `wgmma`/
//!   `wgmma_tb` m64nNk16 with commit groups and `wgmma_wait`; the fences and `setmaxnreg` have
//!   no effect. With Hopper instructions, dynamic shared memory starts 1024-byte aligned. Arithmetic is CUDA's as the printer writes it (see `value`): `f32`
//!   stays `f32`, `f16`/`bf16` round to nearest even, integers wrap, shifts clamp like PTX,
//!   float→int casts saturate with NaN→0.
//! * **Checks.** Out-of-bounds global, shared and register-array accesses; shared-memory
//!   races between two barriers; barrier divergence; shuffles reading inactive lanes and
//!   collective masks naming absent lanes; `ldmatrix`/`mma` without all 32 lanes of the
//!   warp; reads of shared memory never written;
//!   misaligned 16-byte accesses; integer division by zero; `wgmma` accumulators used and
//!   operands overwritten while in flight; TMA destinations read before their barrier
//!   phase is seen complete; bad tensor maps and TMA destinations; mbarriers used
//!   uninitialised, over-arrived or completing more bytes than armed for; `mbarrier_wait`s
//!   nothing can release (a deadlock, not a step limit). Each [`Finding`] names the
//!   kernel, the Rust line, and the block and thread.
//! * **Findings are not errors.** A faulty access never touches memory (a bad load gives 0,
//!   a bad store is dropped) and the launch runs to the end, so one run reports every
//!   problem; they come back in [`EmuReport::findings`]. Use [`EmuReport::into_result`] to
//!   turn any finding into [`EmuError::Findings`]. Only a launch that cannot run or finish
//!   is an `Err` from [`run`].
//! * **Determinism.** With [`Schedule::Deterministic`] the result of a race-free kernel
//!   does not depend on `host_threads`: blocks only interact through global memory, and a
//!   kernel whose result depends on the order of its global atomics (float atomics,
//!   exchanges, compare-and-swap, or atomics whose old value is used) runs its blocks in
//!   order on one host thread. [`Schedule::Shuffled`] interleaves the threads of each
//!   block differently per seed (reproducibly), to make order-dependent bugs show.
//! * **Global memory and Rust.** Read-only slices are read in place; writable slices are
//!   copied into 64-bit atomic words for the launch (relaxed loads and stores, CAS for
//!   narrower stores, acquire/release read-modify-writes for atomics) and copied back into
//!   the caller's slices afterwards, so concurrent blocks never race in the Rust sense.
//!
//! Known differences from a GPU: the GPU may contract `a * b + c` into an FMA
//! (`--fmad=true` is NVRTC's default) and its `expf`/`sinf`/… differ from the host's libm by
//! a few ulp; NaN payloads may differ; data races on *global* memory are not detected;
//! `mma` sums its products exactly and rounds once to f32, where tensor cores may truncate
//! intermediate sums in the last bits.
//! Ordering through mbarriers is not known to the race check: ordinary shared stores handed
//! from one thread to another by `mbarrier_arrive`/`mbarrier_wait` (not `sync_threads`) are
//! reported as races; data the copy engine writes is ordered by its barrier instead.
//! `wgmma` is issued per thread (each computes its own accumulator entries), not as one
//! warpgroup-wide rendezvous.
//! `u8`/`u16` arithmetic wraps in its own width here (Kiln's rule), whereas the printed
//! CUDA currently promotes such operands to `int` before e.g. a shift or a comparison.

mod check;
mod compile;
mod hopper;
mod interp;
mod isa;
mod matrix;
mod memory;
mod report;
mod scheduler;
mod value;
mod warp;

use kiln_codegen::spec::Program;
use kiln_codegen::types::Ty;

use crate::launch::{LaunchConfig, ScalarValue};
use compile::ArgBinding;
use memory::{Global, GlobalBuf};

pub use report::{Finding, FindingKind};

/// Most threads in a block.
pub const MAX_THREADS_PER_BLOCK: u64 = 1024;
/// Most shared memory (static and dynamic) a block may use: 228 KiB, as on sm_90.
pub const MAX_SHARED_BYTES: u32 = 228 * 1024;
/// Most register-frame slots one block may need (register arrays are kept per thread).
const MAX_BLOCK_SLOTS: u64 = 1 << 26;

/// One kernel argument, in parameter order: slices as their little-endian bytes (the
/// element type comes from the kernel's parameter), scalars with their type and bits.
#[derive(Debug)]
pub enum EmuArg<'a> {
    /// A `&[T]` parameter.
    Slice(&'a [u8]),
    /// A `&mut [T]` parameter; it holds the kernel's writes after the run.
    SliceMut(&'a mut [u8]),
    /// A scalar parameter.
    Scalar(ScalarValue),
}

/// In which order the threads of a block run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Schedule {
    /// Thread order, each thread until it stops at a barrier, a collective or its end (or
    /// has run 16384 instructions: then round-robin).
    #[default]
    Deterministic,
    /// A pseudo-random interleaving, in slices of 1–64 instructions, fixed by the seed.
    Shuffled {
        /// The seed; the same seed gives the same interleaving.
        seed: u64,
    },
}

/// How to run a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmuOptions {
    /// Thread interleaving within blocks.
    pub schedule: Schedule,
    /// Host threads running blocks in parallel; 0 means one per available core.
    pub host_threads: usize,
    /// Track shared memory in shadow state to find races and uninitialised reads (the
    /// other checks cost nothing and always run).
    pub checks: bool,
    /// Instructions one GPU thread may execute before the launch is stopped with
    /// [`EmuError::StepLimit`] (an endless loop, or a spin-wait nothing will release).
    pub max_steps_per_thread: u64,
}

impl Default for EmuOptions {
    fn default() -> Self {
        EmuOptions {
            schedule: Schedule::Deterministic,
            host_threads: 0,
            checks: true,
            max_steps_per_thread: 1 << 28,
        }
    }
}

/// What a launch did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmuReport {
    /// Blocks run.
    pub blocks: u64,
    /// Threads run (all blocks).
    pub threads: u64,
    /// Bytecode instructions executed, over all threads.
    pub instructions: u64,
    /// What the checks found, ordered by block and thread; empty for a clean run.
    pub findings: Vec<Finding>,
}

impl EmuReport {
    /// Whether no check fired.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// `Ok(self)` when clean, else [`EmuError::Findings`].
    pub fn into_result(self) -> Result<EmuReport, EmuError> {
        if self.findings.is_empty() {
            Ok(self)
        } else {
            Err(EmuError::Findings(self.findings))
        }
    }
}

/// Why a launch could not run or finish.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmuError {
    /// The launch shape or shared-memory size is invalid (the message names the kernel).
    #[error("invalid launch: {0}")]
    BadLaunch(String),
    /// The arguments do not match the kernel's parameters (the message names the kernel).
    #[error("bad arguments: {0}")]
    BadArguments(String),
    /// The program uses something the emulator cannot run, e.g. an unspecialised type.
    #[error("cannot emulate: {0}")]
    Unsupported(String),
    /// A thread ran longer than [`EmuOptions::max_steps_per_thread`].
    #[error("kernel `{kernel}` ({file}:{line}), block {block:?} thread {thread:?}: still running after {limit} instructions (endless loop or a wait nothing releases)")]
    StepLimit {
        /// The kernel.
        kernel: String,
        /// Its file.
        file: String,
        /// Where the thread was.
        line: u32,
        /// Its block.
        block: (u32, u32, u32),
        /// The thread.
        thread: (u32, u32, u32),
        /// The limit.
        limit: u64,
    },
    /// Checks fired (from [`EmuReport::into_result`]).
    #[error("{} finding(s):\n{}", .0.len(), .0.iter().map(|f| format!("  {f}")).collect::<Vec<_>>().join("\n"))]
    Findings(Vec<Finding>),
    /// A bug in the emulator itself.
    #[error("internal emulator error: {0}")]
    Internal(String),
}

/// Runs `program` with launch shape `cfg` on the CPU. `args` has one entry per kernel
/// parameter; writable slices hold the kernel's results afterwards.
pub fn run(
    program: &Program,
    cfg: &LaunchConfig,
    args: &mut [EmuArg<'_>],
    opts: &EmuOptions,
) -> Result<EmuReport, EmuError> {
    let kernel = program.kernel.name.clone();
    let bad_launch = |message: String| EmuError::BadLaunch(format!("`{kernel}`: {message}"));
    check_launch(program, cfg).map_err(&bad_launch)?;
    let (bindings, global) = bind_args(program, args)
        .map_err(|message| EmuError::BadArguments(format!("`{kernel}`: {message}")))?;
    let code = compile::compile(program, &bindings, cfg.dyn_shared_bytes)
        .map_err(|message| EmuError::Unsupported(format!("`{kernel}`: {message}")))?;
    if code.shared_bytes > MAX_SHARED_BYTES {
        return Err(bad_launch(format!(
            "the block needs {} bytes of shared memory (static and dynamic), more than the {MAX_SHARED_BYTES} available",
            code.shared_bytes
        )));
    }
    if code.frame as u64 * cfg.threads_per_block() > MAX_BLOCK_SLOTS {
        return Err(bad_launch(format!(
            "{} registers per thread × {} threads is more than the emulator holds per block; use smaller register arrays or blocks",
            code.frame,
            cfg.threads_per_block()
        )));
    }
    let host_threads = match opts.host_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let launch = scheduler::Launch {
        code: &code,
        global: &global,
        grid: [cfg.grid.0, cfg.grid.1, cfg.grid.2],
        block: [cfg.block.0, cfg.block.1, cfg.block.2],
        checks: opts.checks,
        seed: match opts.schedule {
            Schedule::Deterministic => None,
            Schedule::Shuffled { seed } => Some(seed),
        },
        step_limit: opts.max_steps_per_thread.max(1),
        host_threads,
    };
    let outcome = scheduler::run_grid(&launch);
    // results go back to the caller even when the run stopped early
    let mut outs = args.iter_mut().filter_map(|a| match a {
        EmuArg::SliceMut(s) => Some(s),
        _ => None,
    });
    for buf in &global.bufs {
        if let GlobalBuf::Rw(_) = buf {
            if let Some(out) = outs.next() {
                buf.copy_back(out);
            }
        }
    }
    if outcome.panicked {
        return Err(EmuError::Internal(format!(
            "a host thread panicked while running `{kernel}`"
        )));
    }
    if let Some(s) = outcome.step_limit {
        return Err(EmuError::StepLimit {
            kernel,
            file: code.file(code.origin(s.pc).func).to_string(),
            line: code.origin(s.pc).line,
            block: (s.block[0], s.block[1], s.block[2]),
            thread: (s.thread[0], s.thread[1], s.thread[2]),
            limit: launch.step_limit,
        });
    }
    Ok(EmuReport {
        blocks: cfg.blocks(),
        threads: cfg.blocks().saturating_mul(cfg.threads_per_block()),
        instructions: outcome.instructions,
        findings: outcome.findings.into_findings(&code, &program.kernel.name),
    })
}

fn check_launch(program: &Program, cfg: &LaunchConfig) -> Result<(), String> {
    let (g, b) = (cfg.grid, cfg.block);
    if g.0 == 0 || g.1 == 0 || g.2 == 0 || b.0 == 0 || b.1 == 0 || b.2 == 0 {
        return Err(format!(
            "every grid and block dimension must be at least 1 (grid {g:?}, block {b:?})"
        ));
    }
    if g.0 > i32::MAX as u32 || g.1 > 65_535 || g.2 > 65_535 {
        return Err(format!(
            "grid {g:?} exceeds the limits (2^31-1, 65535, 65535)"
        ));
    }
    if b.0 > 1024 || b.1 > 1024 || b.2 > 64 {
        return Err(format!("block {b:?} exceeds the limits (1024, 1024, 64)"));
    }
    let threads = cfg.threads_per_block();
    if threads > MAX_THREADS_PER_BLOCK {
        return Err(format!(
            "a block of {threads} threads is larger than the {MAX_THREADS_PER_BLOCK} a block may have"
        ));
    }
    if let Some(max) = program.kernel.max_threads {
        if threads > max as u64 {
            return Err(format!(
                "the kernel is declared with `threads = {max}` but launched with {threads} threads per block"
            ));
        }
    }
    if cfg.dyn_shared_bytes > MAX_SHARED_BYTES {
        return Err(format!(
            "{} bytes of dynamic shared memory is more than the {MAX_SHARED_BYTES} a block may have",
            cfg.dyn_shared_bytes
        ));
    }
    Ok(())
}

/// Checks `args` against the kernel's parameters; the per-parameter bindings and the
/// global memory (the buffers in slice order).
fn bind_args<'a>(
    program: &Program,
    args: &[EmuArg<'a>],
) -> Result<(Vec<ArgBinding>, Global<'a>), String> {
    let params = &program.kernel.params;
    if params.len() != args.len() {
        return Err(format!(
            "the kernel takes {} argument(s) ({}), {} given",
            params.len(),
            params
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            args.len()
        ));
    }
    let mut bindings = Vec::new();
    let mut bufs = Vec::new();
    let mut addresses = Vec::new();
    for (i, (p, a)) in params.iter().zip(args).enumerate() {
        let which = format!("argument {} (`{}`)", i + 1, p.name);
        let binding = match (&p.ty, a) {
            (Ty::Slice { elem, mutable }, EmuArg::Slice(_) | EmuArg::SliceMut(_)) => {
                let bytes: &[u8] = match a {
                    EmuArg::Slice(s) => s,
                    EmuArg::SliceMut(s) => s,
                    EmuArg::Scalar(_) => &[],
                };
                match (mutable, a) {
                    (true, EmuArg::Slice(_)) => {
                        return Err(format!(
                            "{which} is `&mut [{}]`: pass EmuArg::SliceMut",
                            elem.rust_name()
                        ))
                    }
                    (false, EmuArg::SliceMut(_)) => {
                        return Err(format!(
                            "{which} is `&[{}]`: pass EmuArg::Slice",
                            elem.rust_name()
                        ))
                    }
                    _ => {}
                }
                let size = elem
                    .size_bytes()
                    .ok_or_else(|| format!("{which} has an unspecialised element type"))?;
                if !(bytes.len() as u64).is_multiple_of(size) {
                    return Err(format!(
                        "{which}: {} bytes is not a whole number of {}-byte `{}` elements",
                        bytes.len(),
                        size,
                        elem.rust_name()
                    ));
                }
                let len = bytes.len() as u64 / size;
                if len > u32::MAX as u64 {
                    return Err(format!(
                        "{which}: {len} elements is more than a slice's u32 length can hold"
                    ));
                }
                let buf = u16::try_from(bufs.len()).map_err(|_| "too many slices".to_string())?;
                addresses.push(bytes.as_ptr() as u64);
                bufs.push(match a {
                    EmuArg::Slice(s) => GlobalBuf::Ro(s),
                    _ => GlobalBuf::writable(bytes),
                });
                ArgBinding::Slice { buf, len }
            }
            (Ty::Scalar(s), EmuArg::Scalar(v)) => {
                if v.ty != *s {
                    return Err(format!(
                        "{which} is `{}` but a `{}` was given",
                        s.rust_name(),
                        v.ty.rust_name()
                    ));
                }
                let size = s
                    .size_bytes()
                    .ok_or_else(|| format!("{which} has an unspecialised type"))?;
                let fits = match s {
                    kiln_codegen::types::Scalar::Bool => v.bits <= 1,
                    _ => size == 8 || v.bits >> (8 * size) == 0,
                };
                if !fits {
                    return Err(format!(
                        "{which}: bits {:#x} do not fit `{}`",
                        v.bits,
                        s.rust_name()
                    ));
                }
                ArgBinding::Scalar(v.bits)
            }
            (Ty::Slice { elem, mutable }, EmuArg::Scalar(v)) => {
                return Err(format!(
                    "{which} is `&{}[{}]` but a `{}` scalar was given",
                    if *mutable { "mut " } else { "" },
                    elem.rust_name(),
                    v.ty.rust_name()
                ))
            }
            (Ty::Scalar(s), _) => {
                return Err(format!(
                    "{which} is a `{}` scalar but a slice was given",
                    s.rust_name()
                ))
            }
            (other, _) => return Err(format!("{which} has unsupported type {other:?}")),
        };
        bindings.push(binding);
    }
    Ok((bindings, Global { bufs, addresses }))
}
