//! Host-side pieces of the language: the `Float` bound, and the specialisation builder
//! behind every kernel's `spec()`.

use crate::cuda::{self, CudaModule};
use crate::defs::FnDef;
use crate::spec::{self, Arch, Bindings, Dtype, Program, SpecError};

pub use half::{bf16, f16};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// The element types a `T: Float` comptime parameter ranges over: f32, f16, bf16, f64.
pub trait Float: sealed::Sealed + Copy + Send + Sync + 'static {
    /// The dtype this Rust type stands for.
    const DTYPE: Dtype;
}

impl Float for f32 {
    const DTYPE: Dtype = Dtype::F32;
}
impl Float for f64 {
    const DTYPE: Dtype = Dtype::F64;
}
impl Float for half::f16 {
    const DTYPE: Dtype = Dtype::F16;
}
impl Float for half::bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
}

/// The host-side name of an A fragment (a warp's share of a 16×16 `T` matrix), so that
/// `#[device]` functions can take and return fragments; it has no value on the host.
pub struct FragA<T>(std::marker::PhantomData<T>);

/// The host-side name of a B fragment (a warp's share of a 16×8 `T` matrix).
pub struct FragB<T>(std::marker::PhantomData<T>);

/// The host-side name of an accumulator fragment (a warp's share of a 16×8 f32 matrix).
pub struct FragC;

/// The host-side stand-in for a `#[device]` function's array-reference parameter
/// (`&mut [E; N]`): Kiln checks those arguments when it specialises the caller.
pub struct ArrayRef;

/// Collects a kernel's comptime values; `#[kernel]` wraps it in a builder with one method
/// per comptime parameter.
#[derive(Clone, Debug)]
pub struct SpecBuilder {
    /// The kernel being specialised.
    pub def: &'static FnDef,
    /// The comptime values bound so far.
    pub bindings: Bindings,
}

impl SpecBuilder {
    /// A builder for `def` with nothing bound.
    pub fn new(def: &'static FnDef) -> SpecBuilder {
        SpecBuilder {
            def,
            bindings: Bindings::default(),
        }
    }

    /// Binds the `const` parameter `name`.
    pub fn with_const(mut self, name: &str, value: i128) -> SpecBuilder {
        self.bindings = self.bindings.with_const(name, value);
        self
    }

    /// Binds the element-type parameter `name`.
    pub fn with_type(mut self, name: &str, dtype: Dtype) -> SpecBuilder {
        self.bindings = self.bindings.with_type(name, dtype);
        self
    }

    /// The specialised program (IR with every comptime value bound).
    pub fn program(&self, arch: Arch) -> Result<Program, SpecError> {
        spec::specialize(self.def, &self.bindings, arch)
    }

    /// The specialised CUDA.
    pub fn cuda(&self, arch: Arch) -> Result<CudaModule, SpecError> {
        Ok(cuda::print(&self.program(arch)?))
    }
}

/// What the host-side stub of a `#[device]` function calls: device functions run only
/// inside kernels (GPU or emulator).
#[track_caller]
pub fn device_only(name: &str) -> ! {
    panic!("`{name}` is a Kiln #[device] function: call it from a #[kernel], not from host code")
}
