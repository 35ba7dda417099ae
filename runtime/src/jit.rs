//! Compiling a specialised kernel's CUDA with NVRTC, with compiler messages mapped back to
//! the Rust lines they came from.

use kiln_codegen::{Arch, CudaModule};

use crate::error::RuntimeError;
use crate::nvrtc::{compile_ptx, CompileOptions};

/// PTX for one specialisation.
#[derive(Clone, Debug)]
pub struct CompiledModule {
    /// The PTX text.
    pub ptx: String,
    /// NVRTC's log (warnings), with Rust locations added.
    pub log: String,
    /// Wall time of the NVRTC compile.
    pub compile_ms: f64,
    /// The kernel's entry point in the PTX.
    pub entry: String,
}

/// Compiles `module` for `arch`; NVRTC diagnostics name the Rust line of each CUDA line.
pub fn compile_module(module: &CudaModule, arch: Arch) -> Result<CompiledModule, RuntimeError> {
    let program = format!("{}.cu", module.entry);
    let opts = CompileOptions::for_arch(arch.sm_name());
    match compile_ptx(&module.source, &program, &opts) {
        Ok(c) => Ok(CompiledModule {
            ptx: c.ptx,
            log: annotate_log(&c.log, &program, module),
            compile_ms: c.compile_ms,
            entry: module.entry.clone(),
        }),
        Err(RuntimeError::Compile { program, log }) => {
            let log = annotate_log(&log, &program, module);
            Err(RuntimeError::Compile { program, log })
        }
        Err(other) => Err(other),
    }
}

/// Appends `[at file.rs:N]` to every log line of the form `program(LINE): …`.
pub fn annotate_log(log: &str, program: &str, module: &CudaModule) -> String {
    let prefix = format!("{program}(");
    log.lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix(&prefix) else {
                return line.to_string();
            };
            let Some(close) = rest.find(')') else {
                return line.to_string();
            };
            match rest[..close]
                .parse::<u32>()
                .ok()
                .and_then(|l| module.rust_line(l))
            {
                Some(rust) => format!("{line} [at {}:{rust}]", module.rust_file),
                None => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
