//! Launching on the CPU emulator (being written; see the emulator issue).

use crate::error::RuntimeError;
use crate::kernel::Kernel;
use crate::launch::LaunchConfig;
use crate::memory::KernelArg;

/// Runs `kernel` on the emulator.
pub fn launch(
    kernel: &Kernel,
    _cfg: &LaunchConfig,
    _args: &mut [KernelArg<'_>],
) -> Result<(), RuntimeError> {
    Err(RuntimeError::Launch {
        kernel: kernel.name().to_string(),
        reason: "the CPU emulator is not available yet".into(),
    })
}
