//! Launching on the CPU emulator: the checked kernel arguments become emulator arguments,
//! and any check that fires (out-of-bounds access, shared-memory race, barrier divergence,
//! …) fails the launch with the kernel, Rust line, block and thread.

use kiln_codegen::Program;

use crate::emu::{self, EmuArg, EmuOptions};
use crate::error::RuntimeError;
use crate::launch::LaunchConfig;
use crate::memory::{KernelArg, SliceMem};

/// Runs the specialised `program` (the kernel called `name`, for error messages) on the
/// emulator with `opts`.
pub fn launch(
    name: &str,
    program: &Program,
    cfg: &LaunchConfig,
    args: &mut [KernelArg<'_>],
    opts: &EmuOptions,
) -> Result<(), RuntimeError> {
    let reject = |reason: String| RuntimeError::Launch {
        kernel: name.to_string(),
        reason,
    };
    if crate::graph::capturing() {
        crate::graph::note_args(args);
    }
    let mut emu_args = Vec::with_capacity(args.len());
    for a in args.iter_mut() {
        emu_args.push(match a {
            KernelArg::Slice {
                mem: SliceMem::Host(bytes),
                ..
            } => EmuArg::Slice(bytes),
            KernelArg::Slice {
                mem: SliceMem::HostMut(bytes),
                ..
            } => EmuArg::SliceMut(bytes),
            KernelArg::Slice {
                mem: SliceMem::Device { .. },
                ..
            } => {
                return Err(reject(
                    "a GPU buffer was passed to a kernel running on the emulator".into(),
                ))
            }
            KernelArg::Scalar(v) => EmuArg::Scalar(*v),
            KernelArg::Invalid(why) => return Err(reject(why.clone())),
        });
    }
    if crate::graph::capturing() {
        crate::graph::record_emulated(program, cfg, opts, &mut emu_args);
        return Ok(());
    }
    let report = emu::run(program, cfg, &mut emu_args, opts).map_err(|e| reject(e.to_string()))?;
    report
        .into_result()
        .map(|_| ())
        .map_err(|e| reject(e.to_string()))
}
