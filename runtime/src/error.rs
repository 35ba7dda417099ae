//! The one error type of the Kiln runtime.
//!
//! Every fallible runtime entry point returns [`RuntimeError`]. Messages are written for the person
//! who has to fix the problem: a missing library lists every path that was tried and how to install
//! it; a compile error carries NVRTC's full log.

use std::fmt::Write as _;

use thiserror::Error;

use crate::search_log::{render_tried, TriedPath};

/// Everything that can go wrong in the Kiln runtime.
///
/// It is `Clone` so that the process-wide result of locating a library can be cached once and
/// handed to every caller.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// A shared library (NVRTC or the CUDA driver) was not found or could not be loaded from any
    /// candidate path. `tried` holds every candidate in search order with why it was rejected,
    /// `notes` says which search roots were unavailable, `hint` says how to install the library.
    #[error(
        "{library} could not be loaded. Searched, in order:\n{}{}How to fix: {hint}",
        render_tried(tried),
        render_notes(notes)
    )]
    LibraryNotFound {
        /// Human name of the library, e.g. "NVRTC (libnvrtc)".
        library: &'static str,
        /// Every candidate tried, in search order.
        tried: Vec<TriedPath>,
        /// Search roots that were skipped, and why (e.g. "CUDA_HOME is not set").
        notes: Vec<String>,
        /// How to install the library or point Kiln at it.
        hint: &'static str,
    },

    /// The library was loaded from a path, but cudarc (which resolves it by soname) would bind a
    /// different copy, or none at all. Calling into cudarc in that state could panic or use
    /// bindings of the wrong version, so Kiln refuses.
    #[error(
        "{library} was loaded from {loaded} but cudarc would not use that copy: {detail}. \
         Remove the other copy from the loader path (LD_LIBRARY_PATH, ld.so.conf) \
         or point {env_var} at the copy you want"
    )]
    CudarcMismatch {
        /// Human name of the library.
        library: &'static str,
        /// The path Kiln loaded.
        loaded: String,
        /// What cudarc would bind instead.
        detail: String,
        /// The environment variable that selects a library explicitly.
        env_var: &'static str,
    },

    /// NVRTC rejected the source: `log` is NVRTC's complete program log (errors and warnings).
    #[error("NVRTC failed to compile program `{program}`:\n{log}")]
    Compile {
        /// The program name given to NVRTC (appears in the log's file positions).
        program: String,
        /// NVRTC's full program log.
        log: String,
    },

    /// The compiler crashed (or could not run) in a compile worker's child process: the
    /// program is named with its specialisation; this process is unharmed.
    #[error("the compiler crashed on `{program}`: {detail}. The kernel was not built; this process continues. Report it with the kernel's CUDA (`kiln emit`) and NVRTC's version.")]
    CompilerCrashed {
        /// The kernel and its specialisation, e.g. `gemm [BM=128, T=bf16; target sm_90]`.
        program: String,
        /// How the worker ended (signal, exit status) and what it printed.
        detail: String,
    },

    /// An NVRTC API call failed for a reason other than a compile error in the source (for
    /// example an option NVRTC does not accept). `log` is the program log when one exists.
    #[error("NVRTC call {call} failed with {code}{}", if log.is_empty() { String::new() } else { format!(":\n{log}") })]
    Nvrtc {
        /// The NVRTC function that failed.
        call: &'static str,
        /// NVRTC's result code, e.g. `NVRTC_ERROR_INVALID_OPTION`.
        code: String,
        /// The program log, possibly empty.
        log: String,
    },

    /// An argument was rejected before reaching NVRTC (e.g. an interior NUL byte or an unknown
    /// architecture name).
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// Which argument.
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },

    /// A call into cudarc panicked and the panic was caught. This should not happen once the
    /// library has been located; it indicates a bug in Kiln or cudarc.
    #[error("internal error: cudarc panicked during {context}: {message}")]
    Panicked {
        /// What Kiln was doing.
        context: &'static str,
        /// The panic payload, if it was a string.
        message: String,
    },

    /// A CUDA driver call failed.
    #[error("CUDA driver error: {0}")]
    Driver(String),

    /// A kernel could not be specialised (missing or out-of-range comptime values, …).
    #[error("{0}")]
    Spec(#[from] kiln_codegen::SpecError),

    /// A launch was rejected before reaching the GPU or emulator (shape, arguments, shared
    /// memory), or the emulator reported a problem.
    #[error("cannot launch `{kernel}`: {reason}")]
    Launch {
        /// The kernel.
        kernel: String,
        /// What is wrong, and how to fix it.
        reason: String,
    },

    /// A collective-communication call (NCCL, or the emulator's stand-in for it) failed, or the
    /// loaded NCCL lacks a function Kiln calls. `detail` has NCCL's own message when it gave one.
    #[error("{call} failed: {detail}")]
    Comm {
        /// The NCCL function (or Kiln operation) that failed, e.g. `ncclGroupEnd`.
        call: &'static str,
        /// What went wrong, and how to fix it where Kiln can tell.
        detail: String,
    },

    /// A GPU was required but none is usable.
    #[error("no usable GPU: {0}")]
    NoGpu(String),
}

/// A driver error as a [`RuntimeError`].
pub fn driver(e: cudarc::driver::DriverError) -> RuntimeError {
    RuntimeError::Driver(format!("{e:?}"))
}

fn render_notes(notes: &[String]) -> String {
    let mut s = String::new();
    for n in notes {
        let _ = writeln!(s, "  note: {n}");
    }
    s
}
