//! Helpers shared by the integration tests: a seeded random generator, the device to run
//! on, and float comparisons by relative norm error.

#![allow(dead_code)]

use kiln::runtime::{Device, RuntimeError};

/// SplitMix64: small, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }

    pub fn u32s(&mut self, n: usize) -> Vec<u32> {
        (0..n).map(|_| self.u32()).collect()
    }
}

/// ‖got − want‖ / ‖want‖ in f64; NaN anywhere gives infinity.
pub fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    if got.iter().any(|v| v.is_nan()) {
        return f64::INFINITY;
    }
    let num: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

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
