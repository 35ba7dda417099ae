//! Tools for checking kernels against references: seeded random inputs, relative norm
//! error, and the error a failed check returns. Shared by the algorithm checks here and the
//! `kiln` corpus checks.

use kiln_codegen::Dtype;
use kiln_runtime::{Device, Element, RuntimeError};

/// A check of some kernels on a device: `Ok` when they match their reference.
pub type Check = fn(&Device) -> Result<(), VerifyError>;

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The kernel could not be built or launched.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The kernel ran but its output differs from the reference.
    #[error("output differs from the reference: {0}")]
    Mismatch(String),
}

/// Fails the check with a message unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if $cond {
        } else {
            return Err($crate::verify::VerifyError::Mismatch(format!($($msg)+)));
        }
    };
    ($cond:expr) => {
        if $cond {
        } else {
            return Err($crate::verify::VerifyError::Mismatch(stringify!($cond).to_string()));
        }
    };
}

/// Fails the check unless the two values are equal, showing both.
#[macro_export]
macro_rules! ensure_eq {
    ($a:expr, $b:expr, $($msg:tt)+) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            return Err($crate::verify::VerifyError::Mismatch(format!("{}: {:?} != {:?}", format!($($msg)+), a, b)));
        }
    }};
    ($a:expr, $b:expr) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            return Err($crate::verify::VerifyError::Mismatch(format!("{:?} != {:?}", a, b)));
        }
    }};
}

pub use crate::{ensure, ensure_eq};

/// SplitMix64: small, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// 32 random bits.
    pub fn u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// `n` values uniform in [-1, 1).
    pub fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }

    /// `n` random u32.
    pub fn u32s(&mut self, n: usize) -> Vec<u32> {
        (0..n).map(|_| self.u32()).collect()
    }
}

pub use crate::metrics::rel_err;

/// `n` random values of `T`: `scale` times the generator's `f32`s, rounded to `T`.
pub fn random_real<T: Real>(rng: &mut Rng, n: usize, scale: f32) -> Vec<T> {
    rng.f32s(n)
        .into_iter()
        .map(|v| T::from_f32(scale * v))
        .collect()
}

/// `T` values widened (exactly) to f64, for the float64 references.
pub fn widen<T: Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f32() as f64).collect()
}

/// The float element types a check runs in, with their conversions.
pub trait Real: Element + PartialEq + std::fmt::Debug {
    /// The dtype a `T: Float` parameter is bound to for this type.
    const DTYPE: Dtype;
    /// A NaN, for poisoning outputs.
    const NAN: Self;
    /// Rounds an f32 to this type (to nearest even).
    fn from_f32(v: f32) -> Self;
    /// The value as f32 (exact).
    fn to_f32(self) -> f32;
}

impl Real for f32 {
    const DTYPE: Dtype = Dtype::F32;
    const NAN: f32 = f32::NAN;
    fn from_f32(v: f32) -> f32 {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Real for half::bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
    const NAN: half::bf16 = half::bf16::NAN;
    fn from_f32(v: f32) -> half::bf16 {
        half::bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

impl Real for half::f16 {
    const DTYPE: Dtype = Dtype::F16;
    const NAN: half::f16 = half::f16::NAN;
    fn from_f32(v: f32) -> half::f16 {
        half::f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}
