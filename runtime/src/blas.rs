//! cuBLAS GEMM on Kiln's own [`Device`] and [`DeviceBuffer`]s: the in-process baseline the
//! benches compare Kiln's tensor-core kernels with.
//!
//! [`Blas::gemm`] computes the row-major product `C = A·B` with 16-bit inputs (bf16 or f16), f32
//! accumulation (`CUBLAS_COMPUTE_32F`) and an f32 result, exactly what Kiln's GEMM kernels
//! compute, through `cublasGemmEx` on the device's own stream. It can therefore be timed with
//! the same CUDA events as a Kiln launch ([`crate::time`]):
//!
//! ```no_run
//! # use kiln_runtime::{blas::{Blas, Layout}, time, Device};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::gpu(0)?;
//! let blas = Blas::new(&device)?; // finds libcublas (pip wheel, CUDA toolkit) or says where it looked
//! let (m, n, k) = (4096, 4096, 4096);
//! let a = device.zeros::<half::bf16>(m * k)?; // row-major m×k
//! let b = device.zeros::<half::bf16>(k * n)?; // row-major k×n
//! let mut c = device.zeros::<f32>(m * n)?; // row-major m×n
//! let t = time(&device, 3, 20, || Ok(blas.gemm_bf16(&a, &b, &mut c, m, n, k, Layout::RowMajor)?))?;
//! # Ok(()) }
//! ```
//!
//! cuBLAS is column-major; a row-major matrix is the column-major view of its transpose, so the
//! row-major `C = A·B` is issued as the column-major `Cᵀ = Bᵀ·Aᵀ` (see [`GemmCall::for_row_major`],
//! a pure function with its own tests). The library is found by [`crate::locate::locate_cublas`]
//! (`KILN_CUBLAS_PATH`, the loader path, `CUDA_HOME`, `/usr/local/cuda/lib64`, the
//! `nvidia-cublas` pip wheel); when it is missing, [`Blas::new`] returns an error listing every
//! path tried and how to install it. Nothing here panics on bad input.
//!
//! [`Blas::grouped_gemm`] and [`Blas::run_grouped`] issue cuBLAS's grouped GEMM: one call for
//! the per-expert products of a mixture-of-experts layer (module `grouped`).

mod grouped;

pub use grouped::{group_parts, GroupPart, GroupedGemm};

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::cublas::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::{bf16, f16};
use thiserror::Error;

use crate::device::{Device, Gpu};
use crate::error::{driver, RuntimeError};
use crate::locate::{locate_cublas, LibraryLocation};
use crate::memory::{DeviceBuffer, Element};

/// The workspace given to cuBLAS (the size NVIDIA recommends for Hopper). Allocated once, so no
/// allocation happens inside a timed call.
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// Every cuBLAS entry point [`Blas`] calls; checked to exist in the loaded library before the
/// first call, because cudarc panics on a missing symbol.
const SYMBOLS: &[&str] = &[
    "cublasCreate_v2",
    "cublasDestroy_v2",
    "cublasSetStream_v2",
    "cublasSetWorkspace_v2",
    "cublasGetVersion_v2",
    "cublasGemmEx",
];

/// What can go wrong with cuBLAS. Converts into [`RuntimeError`] (so a GEMM can run inside
/// [`crate::time`]'s closure with `?`).
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum BlasError {
    /// Locating or loading the library, or a CUDA driver call, failed. A missing library is
    /// [`RuntimeError::LibraryNotFound`], which lists every path tried and how to install cuBLAS.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),

    /// cuBLAS needs a GPU; the device is the CPU emulator.
    #[error("cuBLAS needs a GPU device, but the device is the {0} (set KILN_DEVICE=gpu, or run on a GPU machine)")]
    NeedsGpu(String),

    /// The library that was loaded does not export a function Kiln calls (too old a cuBLAS).
    #[error("{library} does not export `{symbol}`; install cuBLAS 12 or 13 (`python3 -m pip install nvidia-cublas`)")]
    MissingSymbol {
        /// The loaded file.
        library: PathBuf,
        /// The missing function.
        symbol: &'static str,
    },

    /// The located library could not be opened again to check the functions Kiln calls.
    #[error("{library} could not be reopened to check its functions: {why}")]
    Reopen {
        /// The loaded file.
        library: PathBuf,
        /// The loader's message.
        why: String,
    },

    /// An argument was rejected before reaching cuBLAS (sizes, buffer lengths, buffers of
    /// another device or of the emulator).
    #[error("invalid cuBLAS GEMM argument: {0}")]
    InvalidArgument(String),

    /// A cuBLAS call returned an error status.
    #[error("{call} failed with {status}")]
    Cublas {
        /// The cuBLAS function.
        call: &'static str,
        /// Its status, e.g. `CUBLAS_STATUS_NOT_SUPPORTED`.
        status: String,
    },
}

impl From<BlasError> for RuntimeError {
    fn from(e: BlasError) -> RuntimeError {
        match e {
            BlasError::Runtime(r) => r,
            BlasError::NeedsGpu(_) => RuntimeError::NoGpu(e.to_string()),
            BlasError::InvalidArgument(reason) => RuntimeError::InvalidInput {
                what: "cuBLAS GEMM argument",
                reason,
            },
            other => RuntimeError::Launch {
                kernel: "cuBLAS".into(),
                reason: other.to_string(),
            },
        }
    }
}

fn check(call: &'static str, status: sys::cublasStatus_t) -> Result<(), BlasError> {
    if status == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(BlasError::Cublas {
            call,
            status: format!("{status:?}"),
        })
    }
}

/// How B is stored. A and C are always row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// B is `k×n` row-major (`b[p * n + j]`), as Kiln's GEMM kernels take it.
    RowMajor,
    /// B is `k×n` column-major (`b[j * k + p]`), i.e. Bᵀ stored `n×k` row-major: the layout of a
    /// linear layer's `[out, in]` weight, and of K in attention's `Q·Kᵀ`.
    ColMajor,
}

impl Layout {
    /// A short name for bench rows: `"B row-major"` / `"B col-major"`.
    pub fn label(self) -> &'static str {
        match self {
            Layout::RowMajor => "B row-major",
            Layout::ColMajor => "B col-major",
        }
    }
}

/// cuBLAS's transpose flag for one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Use the operand as stored (`CUBLAS_OP_N`).
    N,
    /// Use its transpose (`CUBLAS_OP_T`).
    T,
}

impl Op {
    fn cublas(self) -> sys::cublasOperation_t {
        match self {
            Op::N => sys::cublasOperation_t::CUBLAS_OP_N,
            Op::T => sys::cublasOperation_t::CUBLAS_OP_T,
        }
    }
}

/// The column-major `cublasGemmEx` call that computes a row-major product: the row-major
/// `C (m×n) = A (m×k) · B (k×n)` is the column-major `Cᵀ (n×m) = Bᵀ (n×k) · Aᵀ (k×m)`, so cuBLAS's
/// first operand is **our B** and its second **our A**, with cuBLAS's `m, n` = our `n, m`.
///
/// Each field is the cuBLAS parameter of the same name: `C[i + j·ldc] = Σ_p op(X)[i,p]·op(Y)[p,j]`
/// for `i < m`, `j < n`, `p < k`, where `X` (leading dimension `lda`) is the first pointer and `Y`
/// (`ldb`) the second, and `op(X)[i,p]` is `X[i + p·lda]` for [`Op::N`] and `X[p + i·lda]` for
/// [`Op::T`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmCall {
    /// Transpose flag of the first operand (our B).
    pub transa: Op,
    /// Transpose flag of the second operand (our A): always [`Op::N`].
    pub transb: Op,
    /// Rows of the column-major result: our `n`.
    pub m: i32,
    /// Columns of the column-major result: our `m`.
    pub n: i32,
    /// The shared dimension: our `k`.
    pub k: i32,
    /// Leading dimension of the first operand (our B): `n` when B is row-major, `k` when it is
    /// column-major.
    pub lda: i32,
    /// Leading dimension of the second operand (our A, row-major `m×k`): `k`.
    pub ldb: i32,
    /// Leading dimension of the result (our C, row-major `m×n`): `n`.
    pub ldc: i32,
}

impl GemmCall {
    /// The call for row-major `C (m×n) = A (m×k) · B (k×n)` with B stored as `b_layout`.
    /// Sizes must be positive and fit cuBLAS's 32-bit `int`.
    pub fn for_row_major(
        m: usize,
        n: usize,
        k: usize,
        b_layout: Layout,
    ) -> Result<GemmCall, BlasError> {
        if m == 0 || n == 0 || k == 0 {
            return Err(BlasError::InvalidArgument(format!(
                "m, n and k must be positive (got m={m}, n={n}, k={k})"
            )));
        }
        let int = |name: &str, v: usize| {
            i32::try_from(v).map_err(|_| {
                BlasError::InvalidArgument(format!(
                    "{name}={v} does not fit cuBLAS's 32-bit int (at most {})",
                    i32::MAX
                ))
            })
        };
        let (m, n, k) = (int("m", m)?, int("n", n)?, int("k", k)?);
        let (transa, lda) = match b_layout {
            // row-major k×n B is, column-major, Bᵀ (n×k) with leading dimension n: use as is
            Layout::RowMajor => (Op::N, n),
            // column-major k×n B (row-major n×k) is, column-major, B (k×n) with leading
            // dimension k: transpose it to get Bᵀ
            Layout::ColMajor => (Op::T, k),
        };
        Ok(GemmCall {
            transa,
            transb: Op::N,
            m: n,
            n: m,
            k,
            lda,
            ldb: k,
            ldc: n,
        })
    }
}

/// Element types cuBLAS multiplies here: bf16 and f16 (16-bit inputs, f32 accumulation and
/// result). Sealed.
pub trait GemmInput: Element + sealed::Sealed {
    /// cuBLAS's name for the type.
    const CUDA_TYPE: sys::cudaDataType;
}

impl GemmInput for bf16 {
    const CUDA_TYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_16BF;
}

impl GemmInput for f16 {
    const CUDA_TYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_16F;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// A cuBLAS handle bound to one GPU [`Device`] and issuing all its work on that device's stream
/// (the stream Kiln launches and times on), with its own workspace.
///
/// Create it once per device and reuse it: creation loads the library and initialises cuBLAS.
/// A `Blas` may be moved to another thread but not shared (cuBLAS handles are not reentrant).
pub struct Blas {
    device: Device,
    handle: sys::cublasHandle_t,
    version: i32,
    library: &'static LibraryLocation,
    // the workspace the handle uses; kept alive with it
    workspace: CudaSlice<u8>,
}

// SAFETY: a cuBLAS handle may be used from any thread as long as calls are not concurrent; `Blas`
// is not `Sync`, and every call first makes the device's context current on the calling thread.
unsafe impl Send for Blas {}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Blas(cuBLAS {} from {}, on {})",
            self.version_string(),
            self.library.library.display(),
            self.device.name()
        )
    }
}

impl Blas {
    /// A cuBLAS handle on `device` (a GPU), set to the device's stream and a
    /// [`WORKSPACE_BYTES`] workspace.
    ///
    /// Errors, never panics: [`BlasError::NeedsGpu`] on the emulator; the not-found error of
    /// [`locate_cublas`] (every path tried, how to install) when libcublas is missing;
    /// [`BlasError::MissingSymbol`] for a library too old; [`BlasError::Cublas`] when cuBLAS
    /// fails to initialise.
    pub fn new(device: &Device) -> Result<Blas, BlasError> {
        let g = gpu_of(device)?;
        let library = locate_cublas()?;
        check_symbols(&library.library)?;
        g.ctx.bind_to_thread().map_err(driver)?;
        let workspace = g
            .stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(driver)?;
        let mut handle: sys::cublasHandle_t = std::ptr::null_mut();
        // SAFETY: the library is loaded and exports the symbol (checked above); `handle` is a
        // valid out-pointer.
        check("cublasCreate_v2", unsafe {
            sys::cublasCreate_v2(&mut handle)
        })?;
        let blas = Blas {
            device: device.clone(),
            handle,
            version: 0,
            library,
            workspace,
        };
        blas.configure(g)
    }

    /// Sets the stream, the workspace and reads the version; the handle is destroyed (by `Drop`)
    /// if any of it fails.
    fn configure(mut self, g: &Gpu) -> Result<Blas, BlasError> {
        // SAFETY: the handle is live and the stream belongs to the context it was created in.
        check("cublasSetStream_v2", unsafe {
            sys::cublasSetStream_v2(self.handle, g.stream.cu_stream() as sys::cudaStream_t)
        })?;
        // after the stream: setting a stream resets the workspace to cuBLAS's default
        let (ptr, _sync) = self.workspace.device_ptr_mut(&g.stream);
        // SAFETY: the workspace is a live allocation of WORKSPACE_BYTES in this context, kept
        // alive by `self` for as long as the handle exists.
        check("cublasSetWorkspace_v2", unsafe {
            sys::cublasSetWorkspace_v2(self.handle, ptr as *mut c_void, WORKSPACE_BYTES)
        })?;
        drop(_sync);
        let mut version = 0;
        // SAFETY: live handle, valid out-pointer.
        check("cublasGetVersion_v2", unsafe {
            sys::cublasGetVersion_v2(self.handle, &mut version)
        })?;
        self.version = version;
        Ok(self)
    }

    /// cuBLAS's version number, e.g. `130002` for 13.0.2 (`major·10000 + minor·100 + patch`).
    pub fn version(&self) -> i32 {
        self.version
    }

    /// The version as `"13.0.2"`.
    pub fn version_string(&self) -> String {
        let v = self.version;
        format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
    }

    /// The libcublas file that was loaded.
    pub fn library(&self) -> &Path {
        &self.library.library
    }

    /// The device this handle works on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Row-major `C (m×n) = A (m×k) · B` in bf16 with f32 accumulation and result; see
    /// [`Blas::gemm`].
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16(
        &self,
        a: &DeviceBuffer<bf16>,
        b: &DeviceBuffer<bf16>,
        c: &mut DeviceBuffer<f32>,
        m: usize,
        n: usize,
        k: usize,
        b_layout: Layout,
    ) -> Result<(), BlasError> {
        self.gemm(a, b, c, m, n, k, b_layout)
    }

    /// Row-major `C (m×n) = A (m×k) · B` in f16 with f32 accumulation and result; see
    /// [`Blas::gemm`].
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_f16(
        &self,
        a: &DeviceBuffer<f16>,
        b: &DeviceBuffer<f16>,
        c: &mut DeviceBuffer<f32>,
        m: usize,
        n: usize,
        k: usize,
        b_layout: Layout,
    ) -> Result<(), BlasError> {
        self.gemm(a, b, c, m, n, k, b_layout)
    }

    /// Enqueues row-major `C = A·B` on the device's stream (returns before it runs, like a
    /// kernel launch): `a` is `m×k` row-major (`m·k` elements), `b` is `k×n` stored as `b_layout`
    /// (`k·n` elements), `c` receives the `m×n` row-major f32 result (`m·n` elements; overwritten,
    /// β = 0). Accumulation is in f32 (`CUBLAS_COMPUTE_32F`), cuBLAS picks the algorithm
    /// (`CUBLAS_GEMM_DEFAULT`, tensor cores for 16-bit inputs).
    ///
    /// Buffer lengths must match exactly; buffers must be GPU memory of this device. Buffers
    /// ordered on another stream are ordered with this call the way a Kiln launch orders them.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm<T: GemmInput>(
        &self,
        a: &DeviceBuffer<T>,
        b: &DeviceBuffer<T>,
        c: &mut DeviceBuffer<f32>,
        m: usize,
        n: usize,
        k: usize,
        b_layout: Layout,
    ) -> Result<(), BlasError> {
        let call = GemmCall::for_row_major(m, n, k, b_layout)?;
        // the sizes fit i32, so their products fit usize
        check_len("A", a.len(), m * k, "m·k")?;
        check_len("B", b.len(), k * n, "k·n")?;
        check_len("C", c.len(), m * n, "m·n")?;
        let g = gpu_of(&self.device)?;
        let (sa, sb) = (cuda_slice(a, "A")?, cuda_slice(b, "B")?);
        let sc = match c {
            DeviceBuffer::Cuda(s) => s,
            DeviceBuffer::Host(_) => return Err(host_buffer("C")),
        };
        let ctx = g.ctx.cu_ctx();
        for (name, s_ctx) in [
            ("A", sa.context().cu_ctx()),
            ("B", sb.context().cu_ctx()),
            ("C", sc.context().cu_ctx()),
        ] {
            if s_ctx != ctx {
                return Err(BlasError::InvalidArgument(format!(
                    "{name} belongs to another CUDA context than this cuBLAS handle's device"
                )));
            }
        }
        let stream = &g.stream;
        let mut others: Vec<Arc<CudaStream>> = Vec::new();
        for s in [sa.stream(), sb.stream(), sc.stream()] {
            if s.cu_stream() != stream.cu_stream()
                && !others.iter().any(|o| o.cu_stream() == s.cu_stream())
            {
                others.push(s.clone());
            }
        }
        g.ctx.bind_to_thread().map_err(driver)?;
        for o in &others {
            stream.join(o).map_err(driver)?;
        }
        let (pa, _ga) = sa.device_ptr(stream);
        let (pb, _gb) = sb.device_ptr(stream);
        let (pc, _gc) = sc.device_ptr_mut(stream);
        let (alpha, beta) = (1.0f32, 0.0f32);
        // cuBLAS's first operand is our B, its second our A (see `GemmCall`)
        // SAFETY: the handle is live; the pointers are live allocations of this context whose
        // lengths were checked against the sizes and leading dimensions of `call`; alpha and
        // beta are host f32 values as CUBLAS_COMPUTE_32F requires in the default pointer mode.
        let status = unsafe {
            sys::cublasGemmEx(
                self.handle,
                call.transa.cublas(),
                call.transb.cublas(),
                call.m,
                call.n,
                call.k,
                &alpha as *const f32 as *const c_void,
                pb as *const c_void,
                T::CUDA_TYPE,
                call.lda,
                pa as *const c_void,
                T::CUDA_TYPE,
                call.ldb,
                &beta as *const f32 as *const c_void,
                pc as *mut c_void,
                sys::cudaDataType::CUDA_R_32F,
                call.ldc,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        check("cublasGemmEx", status)?;
        // later work on the buffers' own streams (writes, frees) waits for this GEMM
        for o in &others {
            o.join(stream).map_err(driver)?;
        }
        Ok(())
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        if self.handle.is_null() {
            return;
        }
        if let Some(g) = self.device.as_gpu() {
            let _ = g.ctx.bind_to_thread();
        }
        // SAFETY: the handle is live and destroyed once; a failure cannot be reported from
        // `drop` and leaves at most a leaked handle.
        let _ = unsafe { sys::cublasDestroy_v2(self.handle) };
        self.handle = std::ptr::null_mut();
    }
}

fn gpu_of(device: &Device) -> Result<&Gpu, BlasError> {
    device
        .as_gpu()
        .ok_or_else(|| BlasError::NeedsGpu(device.name()))
}

fn check_len(name: &str, got: usize, want: usize, what: &str) -> Result<(), BlasError> {
    if got == want {
        Ok(())
    } else {
        Err(BlasError::InvalidArgument(format!(
            "{name} holds {got} elements but {what} = {want}"
        )))
    }
}

fn host_buffer(name: &str) -> BlasError {
    BlasError::InvalidArgument(format!(
        "{name} is a host (emulator) buffer; cuBLAS needs GPU buffers of the same device"
    ))
}

fn cuda_slice<'a, T: Element>(
    buf: &'a DeviceBuffer<T>,
    name: &str,
) -> Result<&'a CudaSlice<T>, BlasError> {
    buf.as_cuda_slice().ok_or_else(|| host_buffer(name))
}

/// Checks that `library` exports every function [`Blas`] calls (cudarc would panic on the first
/// call of a missing one).
fn check_symbols(library: &Path) -> Result<(), BlasError> {
    let lib =
        crate::preload::open_global(library.as_os_str()).map_err(|why| BlasError::Reopen {
            library: library.to_path_buf(),
            why,
        })?;
    for &symbol in SYMBOLS {
        if crate::preload::symbol_address(&lib, symbol).is_none() {
            return Err(BlasError::MissingSymbol {
                library: library.to_path_buf(),
                symbol,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What cuBLAS computes for `call` (column-major BLAS semantics, β = 0), on the host.
    fn reference_gemm_ex(call: &GemmCall, x: &[f64], y: &[f64]) -> Vec<f64> {
        let (m, n, k) = (call.m as usize, call.n as usize, call.k as usize);
        let (lda, ldb, ldc) = (call.lda as usize, call.ldb as usize, call.ldc as usize);
        let op = |t: Op, mat: &[f64], ld: usize, i: usize, p: usize| match t {
            Op::N => mat[i + p * ld],
            Op::T => mat[p + i * ld],
        };
        let mut c = vec![f64::NAN; ldc * n];
        for j in 0..n {
            for i in 0..m {
                c[i + j * ldc] = (0..k)
                    .map(|p| op(call.transa, x, lda, i, p) * op(call.transb, y, ldb, p, j))
                    .sum();
            }
        }
        c
    }

    fn check_layout(m: usize, n: usize, k: usize, layout: Layout) {
        let a: Vec<f64> = (0..m * k)
            .map(|i| ((i * 7 + 3) % 11) as f64 - 5.0)
            .collect();
        // logical B[p][j]
        let bv = |p: usize, j: usize| ((p * 5 + j * 3 + 1) % 13) as f64 - 6.0;
        let b: Vec<f64> = match layout {
            Layout::RowMajor => (0..k * n).map(|i| bv(i / n, i % n)).collect(),
            Layout::ColMajor => (0..k * n).map(|i| bv(i % k, i / k)).collect(),
        };
        let call = GemmCall::for_row_major(m, n, k, layout).expect("valid sizes");
        // first operand our B, second our A
        let got = reference_gemm_ex(&call, &b, &a);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|p| a[i * k + p] * bv(p, j)).sum();
                assert_eq!(got[i * n + j], want, "{layout:?} {m}x{n}x{k} C[{i}][{j}]");
            }
        }
    }

    #[test]
    fn row_major_product_through_the_column_major_call() {
        for layout in [Layout::RowMajor, Layout::ColMajor] {
            for (m, n, k) in [(1, 1, 1), (3, 5, 7), (8, 2, 4), (5, 9, 1), (16, 16, 16)] {
                check_layout(m, n, k, layout);
            }
        }
    }

    #[test]
    fn call_arguments() {
        let row = GemmCall::for_row_major(32, 64, 128, Layout::RowMajor).unwrap();
        assert_eq!(
            row,
            GemmCall {
                transa: Op::N,
                transb: Op::N,
                m: 64,
                n: 32,
                k: 128,
                lda: 64,
                ldb: 128,
                ldc: 64
            }
        );
        let col = GemmCall::for_row_major(32, 64, 128, Layout::ColMajor).unwrap();
        assert_eq!((col.transa, col.lda), (Op::T, 128));
    }

    #[test]
    fn bad_sizes_are_errors() {
        for (m, n, k) in [(0, 1, 1), (1, 0, 1), (1, 1, 0)] {
            let e = GemmCall::for_row_major(m, n, k, Layout::RowMajor).unwrap_err();
            assert!(e.to_string().contains("must be positive"), "{e}");
        }
        let e = GemmCall::for_row_major(1 << 31, 1, 1, Layout::RowMajor).unwrap_err();
        assert!(e.to_string().contains("32-bit int"), "{e}");
        assert!(matches!(
            RuntimeError::from(e),
            RuntimeError::InvalidInput { .. }
        ));
    }

    #[test]
    fn the_emulator_has_no_cublas() {
        let e = Blas::new(&Device::emulator()).unwrap_err();
        assert!(matches!(e, BlasError::NeedsGpu(_)), "{e}");
        assert!(e.to_string().contains("CPU emulator"), "{e}");
    }

    /// With `KILN_TEST_CUBLAS_SITE` pointing at a site-packages-like folder holding the
    /// `nvidia-cublas` wheel, its library exports everything `Blas` calls.
    #[test]
    fn a_real_cublas_exports_what_blas_calls() {
        let Some(site) = std::env::var_os("KILN_TEST_CUBLAS_SITE") else {
            return;
        };
        let roots = crate::locate::SearchRoots {
            site_packages: vec![PathBuf::from(site)],
            ..crate::locate::SearchRoots::empty()
        };
        let loc = crate::locate::locate_cublas_in(&roots).unwrap_or_else(|e| panic!("{e}"));
        check_symbols(&loc.library).unwrap_or_else(|e| panic!("{e}"));
        let e = check_symbols(Path::new("/nonexistent/libcublas.so.13")).unwrap_err();
        assert!(e.to_string().contains("could not be reopened"), "{e}");
    }

    #[test]
    fn status_errors_name_the_call() {
        let e = check(
            "cublasGemmEx",
            sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cublasGemmEx failed with CUBLAS_STATUS_NOT_SUPPORTED"
        );
        let r = RuntimeError::from(e);
        assert!(r.to_string().contains("cublasGemmEx"), "{r}");
    }
}
