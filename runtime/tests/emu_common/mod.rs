//! Helpers shared by the emulator tests: build specialised programs from source text (no
//! proc macro), convert typed buffers to bytes and back, and run launches.

#![allow(dead_code)] // each test binary uses a different subset

use kiln_codegen::defs::{Dep, FnDef};
use kiln_codegen::front::check_source;
use kiln_codegen::ir::FnKind;
use kiln_codegen::spec::{specialize, Arch, Bindings, Program};
use kiln_runtime::emu::{self, EmuArg, EmuOptions, EmuReport, Finding, FindingKind};
use kiln_runtime::launch::{KernelScalar, LaunchConfig, ScalarValue};

/// The file name findings report for kernels built here.
pub const FILE: &str = "emu_test.rs";

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Checks one function from source and embeds it like `#[kernel]`/`#[device]` would.
fn def(source: &str, kind: FnKind, deps: &'static [Dep]) -> &'static FnDef {
    def_in(source, kind, deps, FILE)
}

/// [`def`] for a function defined in `file`.
fn def_in(source: &str, kind: FnKind, deps: &'static [Dep], file: &'static str) -> &'static FnDef {
    let f = match check_source(source, kind) {
        Ok(f) => f,
        Err(d) => panic!(
            "the front end rejected:\n{source}\n{}: {:?}",
            d.message, d.hint
        ),
    };
    Box::leak(Box::new(FnDef {
        name: leak(f.name.clone()),
        module: "emu_test",
        file,
        ir_json: leak(FnDef::encode(&f)),
        deps,
        examples: &[],
    }))
}

/// A kernel calling the device functions `devices` (by their names), specialised with
/// `bindings` for sm_90.
pub fn program_with(source: &str, devices: &[&str], bindings: Bindings) -> Program {
    let in_file: Vec<(&str, &'static str)> = devices.iter().map(|d| (*d, FILE)).collect();
    program_with_files(source, &in_file, bindings)
}

/// [`program_with`] where each device function comes with the file that defines it.
pub fn program_with_files(
    source: &str,
    devices: &[(&str, &'static str)],
    bindings: Bindings,
) -> Program {
    let deps: Vec<Dep> = devices
        .iter()
        .map(|(d, file)| {
            let def = def_in(d, FnKind::Device, &[], file);
            Dep {
                path: def.name,
                def,
            }
        })
        .collect();
    let def = def(source, FnKind::Kernel, Box::leak(deps.into_boxed_slice()));
    specialize(def, &bindings, Arch::SM90).unwrap_or_else(|e| panic!("specialisation failed: {e}"))
}

/// A kernel without device calls or comptime parameters.
pub fn program(source: &str) -> Program {
    program_with(source, &[], Bindings::default())
}

/// The 1-based line of `source` containing `marker` (e.g. a `// here` comment).
pub fn line_of(source: &str, marker: &str) -> u32 {
    source
        .lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no line contains `{marker}`")) as u32
        + 1
}

/// Little-endian bytes of typed values.
pub fn bytes<T: KernelScalar>(v: &[T]) -> Vec<u8> {
    let size = T::SCALAR.size_bytes().expect("concrete") as usize;
    v.iter()
        .flat_map(|x| x.to_bits64().to_le_bytes()[..size].to_vec())
        .collect()
}

/// Typed values from little-endian bytes.
pub fn values<T: KernelScalar>(b: &[u8]) -> Vec<T> {
    let size = T::SCALAR.size_bytes().expect("concrete") as usize;
    b.chunks(size)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..size].copy_from_slice(c);
            T::from_bits64(u64::from_le_bytes(w))
        })
        .collect()
}

/// A scalar argument.
pub fn scalar<T: KernelScalar>(v: T) -> EmuArg<'static> {
    EmuArg::Scalar(ScalarValue::of(v))
}

/// Runs with the default options, panicking on an error.
pub fn run(p: &Program, cfg: LaunchConfig, args: &mut [EmuArg<'_>]) -> EmuReport {
    run_with(p, cfg, args, &EmuOptions::default())
}

/// Runs with `opts`, panicking on an error.
pub fn run_with(
    p: &Program,
    cfg: LaunchConfig,
    args: &mut [EmuArg<'_>],
    opts: &EmuOptions,
) -> EmuReport {
    emu::run(p, &cfg, args, opts)
        .unwrap_or_else(|e| panic!("launch of `{}` failed: {e}", p.kernel.name))
}

/// Runs and asserts that no check fired.
pub fn run_clean(p: &Program, cfg: LaunchConfig, args: &mut [EmuArg<'_>]) -> EmuReport {
    let r = run(p, cfg, args);
    assert!(
        r.is_clean(),
        "`{}` should be clean, found:\n{}",
        p.kernel.name,
        r.findings
            .iter()
            .map(|f| format!("  {f}\n"))
            .collect::<String>()
    );
    r
}

/// The findings of `kind`.
pub fn of_kind(r: &EmuReport, kind: FindingKind) -> Vec<&Finding> {
    r.findings.iter().filter(|f| f.kind == kind).collect()
}
