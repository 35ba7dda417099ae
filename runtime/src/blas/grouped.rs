//! cuBLAS's grouped GEMM (`cublasGemmGroupedBatchedEx`, cuBLAS 12.5 and later): one call for
//! a mixture-of-experts projection, `C_g = A_g · W_g` for every expert `g` over its own
//! number of rows — the grouped API the MoE benches compare Kiln's grouped GEMM with, beside
//! a loop of [`Blas::gemm`] calls.
//!
//! A call is prepared once ([`Blas::grouped_gemm`]: the per-group sizes and the device array
//! of operand addresses cuBLAS reads) and then enqueued as often as wanted
//! ([`Blas::run_grouped`]), so a timed run is the cuBLAS call alone, as for a Kiln launch.

use std::ffi::c_void;
use std::marker::PhantomData;

use cudarc::cublas::sys;

use super::{check, gpu_of, host_buffer, Blas, BlasError, GemmCall, GemmInput, Layout};
use crate::error::driver;
use crate::memory::DeviceBuffer;

/// The cuBLAS function a grouped call needs (absent before cuBLAS 12.5).
const SYMBOL: &str = "cublasGemmGroupedBatchedEx";

/// One group's product inside the buffers of a grouped call (element offsets), for a group
/// with rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupPart {
    /// The group (expert) index.
    pub group: usize,
    /// Its rows: the `m` of its `m×k · k×n` product.
    pub rows: usize,
    /// Where its rows start in A (`[Σ rows, k]` row-major).
    pub a_offset: usize,
    /// Where its weight starts in W (`[groups, k, n]`, each `k×n` row-major).
    pub w_offset: usize,
    /// Where its rows start in C (`[Σ rows, n]` row-major).
    pub c_offset: usize,
}

/// The groups of a grouped call with `rows[g]` rows each (groups without rows are left out:
/// cuBLAS takes no empty product), checked to fit cuBLAS's 32-bit sizes.
pub fn group_parts(rows: &[usize], k: usize, n: usize) -> Result<Vec<GroupPart>, BlasError> {
    let mut parts = Vec::new();
    let mut start = 0usize;
    for (g, &r) in rows.iter().enumerate() {
        if r > 0 {
            // the same bounds as one GEMM of that group's size
            GemmCall::for_row_major(r, n, k, Layout::RowMajor)?;
            parts.push(GroupPart {
                group: g,
                rows: r,
                a_offset: start * k,
                w_offset: g * k * n,
                c_offset: start * n,
            });
        }
        start += r;
    }
    if parts.is_empty() {
        return Err(BlasError::InvalidArgument(format!(
            "a grouped GEMM over {} groups without a single row",
            rows.len()
        )));
    }
    if i32::try_from(parts.len()).is_err() {
        return Err(BlasError::InvalidArgument(format!(
            "{} groups do not fit cuBLAS's 32-bit group count",
            parts.len()
        )));
    }
    Ok(parts)
}

/// A prepared grouped GEMM: the sizes of every group's product and, in device memory, the
/// addresses of its operands. It borrows the buffers it was made for (C mutably), so they
/// outlive it and nothing else writes C while it exists.
pub struct GroupedGemm<'a> {
    parts: Vec<GroupPart>,
    /// cuBLAS's per-group arrays (column-major view: `m = n`, `n = rows`, see [`GemmCall`]).
    sizes: [Vec<i32>; 6],
    ops: Vec<sys::cublasOperation_t>,
    scalars: (Vec<f32>, Vec<f32>),
    ones: Vec<i32>,
    /// The operands' addresses: every group's W, then its A, then its C.
    addresses: DeviceBuffer<u64>,
    dtype: sys::cudaDataType,
    _buffers: PhantomData<&'a mut [u8]>,
}

impl GroupedGemm<'_> {
    /// The groups with rows, in order.
    pub fn parts(&self) -> &[GroupPart] {
        &self.parts
    }
}

impl Blas {
    /// Prepares `C_g = A_g · W_g` (row-major, f32 accumulation, C in the inputs' type: the
    /// grouped API takes no f32 C with 16-bit inputs, and Kiln's grouped GEMM writes that
    /// type too) for every group `g` with `rows[g] > 0`: `a` `[Σ rows, k]` with the groups'
    /// rows one after another, `w` `[rows.len(), k, n]`, `c` `[Σ rows, n]` (overwritten,
    /// β = 0). The buffers must be GPU
    /// memory of this device ordered on its stream. Errors: lengths that do not match, sizes
    /// past cuBLAS's 32-bit ints, a cuBLAS without the grouped API
    /// ([`BlasError::MissingSymbol`]).
    pub fn grouped_gemm<'a, T: GemmInput>(
        &self,
        a: &'a DeviceBuffer<T>,
        w: &'a DeviceBuffer<T>,
        c: &'a mut DeviceBuffer<T>,
        rows: &[usize],
        k: usize,
        n: usize,
    ) -> Result<GroupedGemm<'a>, BlasError> {
        let parts = group_parts(rows, k, n)?;
        let total: usize = rows.iter().sum();
        super::check_len("A", a.len(), total * k, "Σ rows·k")?;
        super::check_len("W", w.len(), rows.len() * k * n, "groups·k·n")?;
        super::check_len("C", c.len(), total * n, "Σ rows·n")?;
        let g = gpu_of(&self.device)?;
        for (name, s) in [
            ("A", a.as_cuda_slice().map(|s| s.stream().cu_stream())),
            ("W", w.as_cuda_slice().map(|s| s.stream().cu_stream())),
            ("C", c.as_cuda_slice().map(|s| s.stream().cu_stream())),
        ] {
            match s {
                None => return Err(host_buffer(name)),
                Some(s) if s != g.stream.cu_stream() => {
                    return Err(BlasError::InvalidArgument(format!(
                        "{name} is ordered on another stream than this device's; a grouped call \
                         takes buffers of the device's own stream"
                    )))
                }
                Some(_) => {}
            }
        }
        let lib = crate::preload::open_global(self.library.library.as_os_str()).map_err(|why| {
            BlasError::Reopen {
                library: self.library.library.clone(),
                why,
            }
        })?;
        if crate::preload::symbol_address(&lib, SYMBOL).is_none() {
            return Err(BlasError::MissingSymbol {
                library: self.library.library.clone(),
                symbol: SYMBOL,
            });
        }
        let elem = std::mem::size_of::<T>() as u64;
        let (pa, pw, pc) = (a.address(), w.address(), c.address());
        let mut addresses: Vec<u64> = parts
            .iter()
            .map(|p| pw + p.w_offset as u64 * elem)
            .collect();
        addresses.extend(parts.iter().map(|p| pa + p.a_offset as u64 * elem));
        addresses.extend(parts.iter().map(|p| pc + p.c_offset as u64 * elem));
        let count = parts.len();
        let each = |v: usize| vec![v as i32; count];
        // column-major: Cᵀ_g (n × rows) = W_gᵀ (n × k, leading dimension n) · A_gᵀ (k × rows)
        let sizes = [
            each(n),
            parts.iter().map(|p| p.rows as i32).collect(),
            each(k),
            each(n),
            each(k),
            each(n),
        ];
        Ok(GroupedGemm {
            parts,
            sizes,
            ops: vec![sys::cublasOperation_t::CUBLAS_OP_N; count],
            scalars: (vec![1.0; count], vec![0.0; count]),
            ones: vec![1; count],
            addresses: self.device.upload(&addresses)?,
            dtype: T::CUDA_TYPE,
            _buffers: PhantomData,
        })
    }

    /// Enqueues a prepared grouped GEMM on the device's stream (returns before it runs).
    pub fn run_grouped(&self, call: &GroupedGemm<'_>) -> Result<(), BlasError> {
        let g = gpu_of(&self.device)?;
        g.ctx.bind_to_thread().map_err(driver)?;
        let count = call.parts.len();
        let base = call.addresses.address() as *const u64;
        let [m, n, k, lda, ldb, ldc] = &call.sizes;
        // SAFETY: the handle is live; every per-group array holds `count` entries; the address
        // array is device memory of this context holding `3·count` addresses of live
        // allocations (borrowed by `call`) whose extents were checked against the sizes; alpha
        // and beta are host f32 values, as CUBLAS_COMPUTE_32F takes in the default pointer
        // mode; the symbol was found when `call` was made.
        let status = unsafe {
            sys::cublasGemmGroupedBatchedEx(
                self.handle,
                call.ops.as_ptr(),
                call.ops.as_ptr(),
                m.as_ptr(),
                n.as_ptr(),
                k.as_ptr(),
                call.scalars.0.as_ptr() as *const c_void,
                base as *const *const c_void,
                call.dtype,
                lda.as_ptr(),
                base.add(count) as *const *const c_void,
                call.dtype,
                ldb.as_ptr(),
                call.scalars.1.as_ptr() as *const c_void,
                base.add(2 * count) as *const *mut c_void,
                call.dtype,
                ldc.as_ptr(),
                count as i32,
                call.ones.as_ptr(),
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            )
        };
        check(SYMBOL, status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_skip_empty_groups_and_follow_the_rows() {
        let parts = group_parts(&[3, 0, 5, 1], 64, 32).unwrap();
        let got: Vec<_> = parts
            .iter()
            .map(|p| (p.group, p.rows, p.a_offset, p.w_offset, p.c_offset))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 3, 0, 0, 0),
                (2, 5, 3 * 64, 2 * 64 * 32, 3 * 32),
                (3, 1, 8 * 64, 3 * 64 * 32, 8 * 32),
            ]
        );
    }

    #[test]
    fn empty_and_oversized_calls_are_refused() {
        let e = group_parts(&[0, 0], 64, 32).unwrap_err();
        assert!(e.to_string().contains("without a single row"), "{e}");
        let e = group_parts(&[1], 1 << 31, 32).unwrap_err();
        assert!(e.to_string().contains("32-bit"), "{e}");
        let e = group_parts(&[2], 64, 0).unwrap_err();
        assert!(e.to_string().contains("positive"), "{e}");
    }
}
