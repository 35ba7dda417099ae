//! Compiling in a child process. NVRTC 13.0 was seen to crash (segfault) inside
//! `nvrtcCompileProgram` on a wgmma inline-PTX kernel; in-process, that ends the user's
//! program. With a *compile worker* set — a `kiln` executable, whose hidden `compile-worker`
//! subcommand compiles one program read from stdin — every compile that misses the caches
//! runs in a child process, and a crash there comes back as
//! [`RuntimeError::CompilerCrashed`] naming the kernel and its specialisation. `kiln check`,
//! `kiln tune` (and so the autotuner's compiles under it) use the running `kiln` as their
//! worker; a library user opts in with [`set_compile_worker`] or the `KILN_COMPILE_WORKER`
//! variable. The child only compiles: caching stays in the parent (memory and disk, as for
//! in-process compiles), so a cached kernel costs no process.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::RwLock;

use crate::error::RuntimeError;
use crate::nvrtc::{compile_ptx, CompileOptions};

/// The variable naming a compile worker for processes that do not call
/// [`set_compile_worker`] (empty: compile in process).
pub const WORKER_ENV: &str = "KILN_COMPILE_WORKER";
/// Fault injection, for testing the isolation itself: a worker that finds this variable set
/// to `abort` aborts instead of compiling, as a crashing compiler would.
pub const FAULT_ENV: &str = "KILN_COMPILE_WORKER_FAULT";
/// The worker's subcommand.
pub const WORKER_COMMAND: &str = "compile-worker";

/// Exit status of a worker whose program NVRTC rejected (the log is on its stderr).
const EXIT_COMPILE_ERROR: i32 = 3;
/// Exit status of a worker that failed otherwise (the message is on its stderr).
const EXIT_OTHER: i32 = 4;

static WORKER: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Makes every later compile that misses the caches run in a child process of `exe`
/// (a `kiln` executable); `None` goes back to compiling in this process (unless
/// `KILN_COMPILE_WORKER` names a worker).
pub fn set_compile_worker(exe: Option<PathBuf>) {
    if let Ok(mut w) = WORKER.write() {
        *w = exe;
    }
}

/// The compile worker in use: the one set by [`set_compile_worker`], else `KILN_COMPILE_WORKER`.
pub fn compile_worker() -> Option<PathBuf> {
    if let Some(exe) = WORKER.read().ok().and_then(|w| w.clone()) {
        return Some(exe);
    }
    std::env::var_os(WORKER_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// "kernel [specialisation]" from the header line the CUDA printer writes.
fn describe(source: &str, program: &str) -> String {
    let spec = source
        .lines()
        .take(12)
        .find_map(|l| l.strip_prefix("// Specialisation: "))
        .map(|s| s.trim_end_matches('.'));
    let name = program.trim_end_matches(".cu");
    match spec {
        Some(s) => format!("{name} [{s}]"),
        None => name.to_string(),
    }
}

/// Compiles `source` with `opts` in a child process of `worker`: the CUBIN and NVRTC's log,
/// or the error — [`RuntimeError::Compile`] with the child's log when NVRTC rejected the
/// program, [`RuntimeError::CompilerCrashed`] when the child died or could not run.
pub fn compile_in_child(
    worker: &Path,
    source: &str,
    program: &str,
    opts: &CompileOptions,
) -> Result<(Vec<u8>, String), RuntimeError> {
    let what = describe(source, program);
    let expected = crate::cache::kernel_options_for(&opts.arch, opts.fast_math);
    if *opts != expected {
        return Err(RuntimeError::InvalidInput {
            what: "compile worker options",
            reason: format!(
                "a worker compiles with Kiln's kernel options (cache::kernel_options_for) only; got {opts:?}"
            ),
        });
    }
    let crashed = |detail: String| RuntimeError::CompilerCrashed {
        program: what.clone(),
        detail,
    };
    let mut cmd = Command::new(worker);
    cmd.arg(WORKER_COMMAND)
        .arg("--arch")
        .arg(&opts.arch)
        .arg("--program")
        .arg(program);
    if opts.fast_math {
        cmd.arg("--fast-math");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            crashed(format!(
                "the compile worker {} did not start: {e}",
                worker.display()
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // a worker that died before reading is reported by its status below
        let _ = stdin.write_all(source.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|e| crashed(format!("waiting for the compile worker: {e}")))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    match output.status.code() {
        Some(0) if output.stdout.starts_with(b"\x7fELF") => Ok((output.stdout, stderr)),
        Some(0) => Err(crashed(format!(
            "the compile worker returned {} bytes that are not a CUBIN",
            output.stdout.len()
        ))),
        Some(EXIT_COMPILE_ERROR) => Err(RuntimeError::Compile {
            program: program.to_string(),
            log: stderr,
        }),
        Some(code) => Err(crashed(format!(
            "the compile worker exited with status {code}: {}",
            stderr.trim()
        ))),
        None => Err(crashed(format!(
            "the compile worker was killed by {}{}",
            signal_name(&output.status),
            if stderr.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", stderr.trim())
            }
        ))),
    }
}

#[cfg(unix)]
fn signal_name(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(6) => "signal 6 (SIGABRT)".into(),
        Some(11) => "signal 11 (SIGSEGV)".into(),
        Some(s) => format!("signal {s}"),
        None => "an unknown cause".into(),
    }
}

#[cfg(not(unix))]
fn signal_name(_: &std::process::ExitStatus) -> String {
    "an unknown cause".into()
}

/// The worker's side (`kiln compile-worker --arch A --program P [--fast-math]`): reads the
/// source from stdin, compiles it in this process, and writes the CUBIN to stdout and NVRTC's
/// log to stderr (no file, so concurrent workers cannot meet). Returns the exit status.
pub fn run_worker(arch: &str, program: &str, fast_math: bool) -> i32 {
    if std::env::var(FAULT_ENV).as_deref() == Ok("abort") {
        std::process::abort();
    }
    let mut source = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut source) {
        eprintln!("reading the source from stdin: {e}");
        return EXIT_OTHER;
    }
    let opts = crate::cache::kernel_options_for(arch, fast_math);
    match compile_ptx(&source, program, &opts) {
        Ok(c) => match c.cubin {
            Some(cubin) => {
                let mut stdout = std::io::stdout().lock();
                match stdout.write_all(&cubin).and_then(|_| stdout.flush()) {
                    Ok(()) => {
                        eprint!("{}", c.log);
                        0
                    }
                    Err(e) => {
                        eprintln!("writing the CUBIN to stdout: {e}");
                        EXIT_OTHER
                    }
                }
            }
            None => {
                eprintln!("NVRTC produced no CUBIN");
                EXIT_OTHER
            }
        },
        Err(RuntimeError::Compile { log, .. }) => {
            eprint!("{log}");
            EXIT_COMPILE_ERROR
        }
        Err(e) => {
            eprintln!("{e}");
            EXIT_OTHER
        }
    }
}
