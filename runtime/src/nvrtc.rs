//! JIT compilation of Kiln's generated CUDA C++ to PTX with NVRTC.
//!
//! Kiln's generated CUDA is self-contained (no `#include`), so no include paths are passed. NVRTC
//! is located and preloaded by [`crate::locate_nvrtc`] before any cudarc call, so a missing
//! library is an error, never a panic. The cudarc calls are additionally wrapped in
//! `catch_unwind` as a last resort.

use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use cudarc::nvrtc::result::{self, NvrtcError};
use cudarc::nvrtc::sys::{self, nvrtcProgram, nvrtcResult};

use crate::error::RuntimeError;
use crate::locate::locate_nvrtc;

/// How to compile one program.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CompileOptions {
    /// Target architecture: `sm_80`, `sm_90`, `sm_90a`, ... (or the `compute_` spelling). PTX is
    /// generated for the matching virtual architecture (`sm_90a` -> `compute_90a`).
    pub arch: String,
    /// Emit line information (`--generate-line-info`) so profilers map PTX/SASS back to the
    /// generated source. Default `true`.
    pub line_info: bool,
    /// Pass `--use_fast_math` (approximate transcendentals, flush denormals). Default `false`.
    pub fast_math: bool,
    /// Further NVRTC options, passed last and verbatim.
    pub extra: Vec<String>,
    /// Also produce a CUBIN (machine code for the real architecture) that the driver loads
    /// without a second JIT step. Default `false` (PTX only).
    pub cubin: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            arch: "sm_80".into(),
            line_info: true,
            fast_math: false,
            extra: Vec::new(),
            cubin: false,
        }
    }
}

impl CompileOptions {
    /// Default options for the given architecture (e.g. `"sm_90"`).
    pub fn for_arch(arch: impl Into<String>) -> Self {
        Self {
            arch: arch.into(),
            ..Self::default()
        }
    }

    /// The exact NVRTC option list these options produce. Fails on a malformed `arch`.
    pub fn nvrtc_args(&self) -> Result<Vec<String>, RuntimeError> {
        let target = if self.cubin {
            virtual_arch(&self.arch)?.replace("compute_", "sm_")
        } else {
            virtual_arch(&self.arch)?
        };
        let mut args = vec![
            format!("--gpu-architecture={target}"),
            "--std=c++17".to_string(),
        ];
        if self.line_info {
            args.push("--generate-line-info".into());
        }
        if self.fast_math {
            args.push("--use_fast_math".into());
        }
        args.extend(self.extra.iter().cloned());
        Ok(args)
    }
}

/// Maps `sm_90a` / `compute_90a` to `compute_90a` (PTX is produced for virtual architectures);
/// rejects anything that is not `sm_`/`compute_` followed by digits and an optional `a`/`f`.
fn virtual_arch(arch: &str) -> Result<String, RuntimeError> {
    let rest = arch
        .strip_prefix("sm_")
        .or_else(|| arch.strip_prefix("compute_"));
    let valid = rest.is_some_and(|r| {
        let digits = r.trim_end_matches(['a', 'f']);
        !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && r.len() - digits.len() <= 1
    });
    match rest {
        Some(r) if valid => Ok(format!("compute_{r}")),
        _ => Err(RuntimeError::InvalidInput {
            what: "architecture",
            reason: format!("`{arch}` is not of the form sm_80, sm_90, sm_90a"),
        }),
    }
}

/// The result of a successful compilation.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledPtx {
    /// The PTX text (without the trailing NUL).
    pub ptx: String,
    /// NVRTC's program log: empty, or warnings.
    pub log: String,
    /// Wall time of program creation, compilation and PTX retrieval, in milliseconds.
    pub compile_ms: f64,
    /// Machine code for the real architecture, when [`CompileOptions::cubin`] was set.
    pub cubin: Option<Vec<u8>>,
}

/// Compiles self-contained CUDA C++ `source` to PTX. `program_name` names the program in NVRTC's
/// log (use the kernel name). A compile error returns [`RuntimeError::Compile`] with NVRTC's
/// full log; a missing NVRTC returns [`RuntimeError::LibraryNotFound`].
pub fn compile_ptx(
    source: &str,
    program_name: &str,
    opts: &CompileOptions,
) -> Result<CompiledPtx, RuntimeError> {
    let args = opts.nvrtc_args()?;
    let src = c_string("source", source)?;
    let name = c_string("program name", program_name)?;
    let args: Vec<CString> = args
        .into_iter()
        .map(|a| c_string("compile option", &a))
        .collect::<Result<_, _>>()?;
    locate_nvrtc()?;
    guarded("nvrtc compilation", || {
        compile_located(&src, &name, &args, program_name, opts.cubin)
    })?
}

/// NVRTC's version as `(major, minor)`, e.g. `(13, 0)`.
pub fn nvrtc_version() -> Result<(i32, i32), RuntimeError> {
    locate_nvrtc()?;
    guarded("nvrtcVersion", || {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: NVRTC is loaded; both out-pointers are valid.
        let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
        check("nvrtcVersion", r, String::new)?;
        Ok((major, minor))
    })?
}

/// Destroys the program when dropped, on every path.
struct Program(nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

fn compile_located(
    src: &CString,
    name: &CString,
    args: &[CString],
    program_name: &str,
    want_cubin: bool,
) -> Result<CompiledPtx, RuntimeError> {
    let start = Instant::now();
    let prog = result::create_program(src, Some(name))
        .map_err(|e| nvrtc_err("nvrtcCreateProgram", e, ""))?;
    let prog = Program(prog);
    // SAFETY: `prog` is a live program; the option strings outlive the call.
    let compiled = unsafe { result::compile_program(prog.0, args) };
    // SAFETY: `prog` is a live program.
    let log = unsafe { result::get_program_log(prog.0) }
        .map(|raw| c_chars_to_string(&raw))
        .unwrap_or_default();
    match compiled {
        Ok(()) => {}
        Err(NvrtcError(nvrtcResult::NVRTC_ERROR_COMPILATION)) => {
            return Err(RuntimeError::Compile {
                program: program_name.to_string(),
                log,
            })
        }
        Err(e) => return Err(nvrtc_err("nvrtcCompileProgram", e, &log)),
    }
    // SAFETY: `prog` is a live, successfully compiled program.
    let ptx = unsafe { result::get_ptx(prog.0) }.map_err(|e| nvrtc_err("nvrtcGetPTX", e, &log))?;
    let cubin = if want_cubin {
        let mut size = 0usize;
        // SAFETY: `prog` is a live, successfully compiled program; `size` is a valid out-pointer.
        check(
            "nvrtcGetCUBINSize",
            unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) },
            || log.clone(),
        )?;
        let mut bytes = vec![0u8; size];
        // SAFETY: `bytes` holds exactly the `size` bytes NVRTC reported.
        check(
            "nvrtcGetCUBIN",
            unsafe { sys::nvrtcGetCUBIN(prog.0, bytes.as_mut_ptr() as *mut c_char) },
            || log.clone(),
        )?;
        Some(bytes)
    } else {
        None
    };
    Ok(CompiledPtx {
        ptx: c_chars_to_string(&ptx),
        log,
        compile_ms: start.elapsed().as_secs_f64() * 1e3,
        cubin,
    })
}

fn check(
    call: &'static str,
    r: nvrtcResult,
    log: impl FnOnce() -> String,
) -> Result<(), RuntimeError> {
    r.result().map_err(|e| nvrtc_err(call, e, &log()))
}

fn nvrtc_err(call: &'static str, e: NvrtcError, log: &str) -> RuntimeError {
    RuntimeError::Nvrtc {
        call,
        code: format!("{:?}", e.0),
        log: log.to_string(),
    }
}

fn c_string(what: &'static str, s: &str) -> Result<CString, RuntimeError> {
    CString::new(s).map_err(|e| RuntimeError::InvalidInput {
        what,
        reason: format!("contains a NUL byte at offset {}", e.nul_position()),
    })
}

/// NVRTC returns NUL-terminated buffers; keep the text before the first NUL, trimmed at the end.
fn c_chars_to_string(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).trim_end().to_string()
}

/// Runs a cudarc call, turning a panic (which locating NVRTC first should make impossible) into
/// [`RuntimeError::Panicked`].
fn guarded<T>(context: &'static str, f: impl FnOnce() -> T) -> Result<T, RuntimeError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| RuntimeError::Panicked {
        context,
        message: payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_maps_to_virtual() {
        assert_eq!(virtual_arch("sm_80").unwrap(), "compute_80");
        assert_eq!(virtual_arch("sm_90a").unwrap(), "compute_90a");
        assert_eq!(virtual_arch("compute_100f").unwrap(), "compute_100f");
        for bad in ["", "sm_", "sm80", "sm_9x", "sm_90aa", "gfx90a"] {
            assert!(virtual_arch(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn default_args() {
        let args = CompileOptions::default().nvrtc_args().unwrap();
        assert_eq!(
            args,
            [
                "--gpu-architecture=compute_80",
                "--std=c++17",
                "--generate-line-info"
            ]
        );
    }

    #[test]
    fn nul_in_source_is_an_error_not_a_panic() {
        let err = compile_ptx("a\0b", "k", &CompileOptions::default()).unwrap_err();
        assert!(
            matches!(err, RuntimeError::InvalidInput { what: "source", .. }),
            "{err}"
        );
    }
}
