//! What every backend (GPU, CPU emulator) needs to launch a kernel: the launch shape and
//! the scalar argument values.

use kiln_codegen::types::Scalar;

/// Grid and block shape, and the dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Blocks in x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block in x, y, z.
    pub block: (u32, u32, u32),
    /// Bytes of dynamic shared memory per block (`dyn_shared`).
    pub dyn_shared_bytes: u32,
}

impl LaunchConfig {
    /// A one-dimensional launch: `blocks` blocks of `threads` threads.
    pub fn linear(blocks: u32, threads: u32) -> LaunchConfig {
        LaunchConfig {
            grid: (blocks, 1, 1),
            block: (threads, 1, 1),
            dyn_shared_bytes: 0,
        }
    }

    /// Enough blocks of `threads` threads to cover `n` items, one per thread.
    pub fn for_elements(n: u32, threads: u32) -> LaunchConfig {
        LaunchConfig::linear(n.div_ceil(threads.max(1)).max(1), threads)
    }

    /// The same launch with `bytes` of dynamic shared memory.
    pub fn with_dyn_shared(mut self, bytes: u32) -> LaunchConfig {
        self.dyn_shared_bytes = bytes;
        self
    }

    /// Threads per block.
    pub fn threads_per_block(&self) -> u64 {
        self.block.0 as u64 * self.block.1 as u64 * self.block.2 as u64
    }

    /// Blocks in the grid.
    pub fn blocks(&self) -> u64 {
        self.grid.0 as u64 * self.grid.1 as u64 * self.grid.2 as u64
    }
}

/// A scalar kernel argument: its type and its bits (little-endian, zero-extended; f16 and
/// bf16 as their 16 bits, f32 as its 32 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalarValue {
    /// The scalar type of the parameter.
    pub ty: Scalar,
    /// The value's bits.
    pub bits: u64,
}

/// Rust values that can be passed as scalar kernel arguments.
pub trait KernelScalar: Copy {
    /// The Kiln type of this Rust type.
    const SCALAR: Scalar;
    /// The value's bits, as in [`ScalarValue`].
    fn to_bits64(self) -> u64;
    /// The value back from its bits.
    fn from_bits64(bits: u64) -> Self;
}

macro_rules! kernel_scalar {
    ($($t:ty => $s:ident, $to:expr, $from:expr;)*) => {$(
        impl KernelScalar for $t {
            const SCALAR: Scalar = Scalar::$s;
            fn to_bits64(self) -> u64 { ($to)(self) }
            fn from_bits64(bits: u64) -> Self { ($from)(bits) }
        }
    )*};
}

kernel_scalar! {
    bool => Bool, |v: bool| v as u64, |b: u64| b != 0;
    u8 => U8, |v: u8| v as u64, |b: u64| b as u8;
    u16 => U16, |v: u16| v as u64, |b: u64| b as u16;
    u32 => U32, |v: u32| v as u64, |b: u64| b as u32;
    u64 => U64, |v: u64| v, |b: u64| b;
    i32 => I32, |v: i32| v as u32 as u64, |b: u64| b as u32 as i32;
    i64 => I64, |v: i64| v as u64, |b: u64| b as i64;
    f32 => F32, |v: f32| v.to_bits() as u64, |b: u64| f32::from_bits(b as u32);
    f64 => F64, |v: f64| v.to_bits(), f64::from_bits;
    half::f16 => F16, |v: half::f16| v.to_bits() as u64, |b: u64| half::f16::from_bits(b as u16);
    half::bf16 => Bf16, |v: half::bf16| v.to_bits() as u64, |b: u64| half::bf16::from_bits(b as u16);
}

impl ScalarValue {
    /// The argument for a Rust value.
    pub fn of<T: KernelScalar>(v: T) -> ScalarValue {
        ScalarValue {
            ty: T::SCALAR,
            bits: v.to_bits64(),
        }
    }
}
