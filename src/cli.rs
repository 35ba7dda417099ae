//! The `kiln` command's subcommands as library functions (the binary only parses
//! arguments), so that tests can run them.

use std::fmt::Write as _;

use kiln_codegen::ir::Generic;
use kiln_codegen::{registered_kernels, Arch, FnDef};
use kiln_runtime::cache::{compile_cached, JitOptions};
use kiln_runtime::RuntimeError;

use crate::cli_error::CliError;

/// Renders rows as an aligned text table with a header and a rule.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let fmt_row = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = fmt_row(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  "),
    );
    out.push('\n');
    for r in rows {
        out.push_str(&fmt_row(r.clone()));
        out.push('\n');
    }
    out
}

fn generics_text(def: &FnDef) -> String {
    match def.ir() {
        Ok(f) => f
            .generics
            .iter()
            .map(|g| match g {
                Generic::Const { name, ty } => format!("const {name}: {}", ty.rust_name()),
                Generic::Type { name } => format!("{name}: Float"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("<unreadable IR: {e}>"),
    }
}

/// `kiln list`: every registered kernel with its comptime parameters and examples.
pub fn list() -> String {
    let rows: Vec<Vec<String>> = registered_kernels()
        .into_iter()
        .map(|d| {
            let examples = d
                .examples
                .iter()
                .map(|ex| {
                    ex.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect::<Vec<_>>()
                .join("; ");
            vec![
                d.qualified_name(),
                generics_text(d),
                examples,
                d.file.to_string(),
            ]
        })
        .collect();
    let n = rows.len();
    format!(
        "{}{n} kernels\n",
        table(
            &["kernel", "comptime parameters", "examples", "file"],
            &rows
        )
    )
}

/// `kiln emit`: the CUDA of one specialisation (`--dtype` binds every element-type parameter).
pub fn emit(
    kernel: &str,
    consts: &[String],
    dtype: Option<&str>,
    arch: &str,
) -> Result<String, CliError> {
    let arch: Arch = arch.parse().map_err(CliError::usage)?;
    let request = crate::runner::RunRequest {
        kernel,
        consts,
        dtype,
        emulate: false,
        len: 0,
        grid: (1, 1, 1),
        block: (1, 1, 1),
        dyn_shared: 0,
        args: &[],
        seed: 0,
    };
    let spec = crate::runner::spec_for(&request, &[])?;
    let program = kiln_codegen::spec::specialize(spec.def, &spec.bindings, arch)
        .map_err(|e| CliError::usage(e.to_string()))?;
    Ok(kiln_codegen::cuda::print(&program).source)
}

/// One compiled specialisation, as `check` and `demo` report it.
pub struct CheckRow {
    /// The kernel's qualified name.
    pub kernel: String,
    /// Its comptime values (`-` when it has none).
    pub spec: String,
    /// The target architecture.
    pub arch: Arch,
    /// Lines of generated CUDA.
    pub cuda_lines: usize,
    /// Build time in ms (NVRTC, or a cache hit) with where the CUBIN came from, and its size; or the error.
    pub result: Result<(f64, &'static str, usize), String>,
}

/// Specialises and compiles every example of every registered kernel for `arches`.
/// Fails only when NVRTC itself cannot be found.
pub fn compile_all(arches: &[Arch]) -> Result<Vec<CheckRow>, RuntimeError> {
    kiln_runtime::locate_nvrtc()?;
    let mut rows = Vec::new();
    for def in registered_kernels() {
        let examples = kiln_codegen::Bindings::examples_of(def);
        for &arch in arches {
            let list = match &examples {
                Ok(l) => l.clone(),
                Err(e) => {
                    rows.push(CheckRow {
                        kernel: def.qualified_name(),
                        spec: "-".into(),
                        arch,
                        cuda_lines: 0,
                        result: Err(e.clone()),
                    });
                    continue;
                }
            };
            for b in list {
                if arch < Arch::SM90 && kiln_codegen::spec::uses_hopper(def, &b) {
                    continue; // a Hopper kernel has no specialisation for older targets
                }
                let spec = if b.describe().is_empty() {
                    "-".to_string()
                } else {
                    b.describe()
                };
                let row = match kiln_codegen::spec::specialize(def, &b, arch) {
                    Err(e) => CheckRow {
                        kernel: def.qualified_name(),
                        spec,
                        arch,
                        cuda_lines: 0,
                        result: Err(e.to_string()),
                    },
                    Ok(p) => {
                        let m = kiln_codegen::cuda::print(&p);
                        let result = compile_cached(&m, arch, &JitOptions::default())
                            .map(|c| {
                                let from = match c.source {
                                    kiln_runtime::cache::CacheSource::Compiled => "nvrtc",
                                    kiln_runtime::cache::CacheSource::Disk => "disk cache",
                                    kiln_runtime::cache::CacheSource::Memory => "memory",
                                };
                                (c.millis, from, c.cubin.len())
                            })
                            .map_err(|e| e.to_string());
                        CheckRow {
                            kernel: def.qualified_name(),
                            spec,
                            arch,
                            cuda_lines: m.source.lines().count(),
                            result,
                        }
                    }
                };
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

/// `kiln check`: compiles every registered kernel's examples with NVRTC and prints a table.
pub fn check(arches: &[String]) -> Result<String, CliError> {
    let arches: Vec<Arch> = arches
        .iter()
        .map(|a| a.parse::<Arch>())
        .collect::<Result<_, _>>()
        .map_err(CliError::usage)?;
    let rows = compile_all(&arches).map_err(|e| CliError {
        message: e.to_string(),
        code: 2,
    })?;
    let failures: Vec<&CheckRow> = rows.iter().filter(|r| r.result.is_err()).collect();
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let (status, ms) = match &r.result {
                Ok((ms, from, _)) => ("ok".to_string(), format!("{ms:.1} ({from})")),
                Err(_) => ("error".to_string(), "-".to_string()),
            };
            vec![
                r.kernel.clone(),
                r.spec.clone(),
                r.arch.sm_name(),
                status,
                ms,
            ]
        })
        .collect();
    let mut out = table(
        &["kernel", "specialisation", "arch", "status", "build ms"],
        &table_rows,
    );
    let _ = writeln!(
        out,
        "{} compiled, {} failed",
        rows.len() - failures.len(),
        failures.len()
    );
    if failures.is_empty() {
        return Ok(out);
    }
    for f in failures {
        let _ = writeln!(
            out,
            "\n{} [{}] {}:\n{}",
            f.kernel,
            f.spec,
            f.arch.sm_name(),
            f.result.as_ref().err().cloned().unwrap_or_default()
        );
    }
    Err(CliError {
        message: out,
        code: 1,
    })
}
