//! Helpers shared by the integration tests: a seeded random generator, the device to run
//! on, and float comparisons by relative norm error.

#![allow(dead_code)]

use kiln::runtime::{Device, RuntimeError};

/// The device the tests run on: the GPU when present (required under KILN_REQUIRE_GPU=1),
/// else the CPU emulator. `None` (with a printed reason) when neither can run kernels.
pub fn device() -> Option<Device> {
    match Device::from_env() {
        Ok(d) => {
            println!("device: {}", d.name());
            Some(d)
        }
        Err(e) => panic!("no device: {e}"),
    }
}

/// Whether an error means "this backend cannot run kernels yet" (the emulator before it lands).
pub fn unavailable(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::Launch { reason, .. } if reason.contains("not available yet"))
}
