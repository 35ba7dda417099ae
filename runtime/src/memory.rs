//! Memory: device buffers (a cudarc `CudaSlice` on the GPU, host memory on the emulator),
//! and mapped pinned host buffers whose device pointer kernels read directly (zero-copy).
//! Kernels take any of them, and a cudarc user's own `CudaSlice`, through
//! [`AsKernelSlice`] / [`AsKernelSliceMut`].

use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaSlice, DevicePtr, DeviceRepr, ValidAsZeroBits};
use kiln_codegen::types::Scalar;

use crate::error::RuntimeError;
use crate::launch::{KernelScalar, ScalarValue};

/// Element types a buffer can hold (every Kiln scalar but `bool`).
pub trait Element:
    KernelScalar + DeviceRepr + ValidAsZeroBits + bytemuck::Pod + Default + Send + Sync + 'static
{
}

impl Element for u8 {}
impl Element for u16 {}
impl Element for u32 {}
impl Element for u64 {}
impl Element for i32 {}
impl Element for i64 {}
impl Element for f32 {}
impl Element for f64 {}
impl Element for half::f16 {}
impl Element for half::bf16 {}

/// An array in the memory of a [`crate::Device`].
#[derive(Debug)]
pub enum DeviceBuffer<T: Element> {
    /// GPU memory.
    Cuda(CudaSlice<T>),
    /// Host memory standing in for device memory (the emulator).
    Host(Vec<T>),
}

impl<T: Element> DeviceBuffer<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            DeviceBuffer::Cuda(s) => s.len(),
            DeviceBuffer::Host(v) => v.len(),
        }
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cudarc slice, for interop (GPU buffers only).
    pub fn as_cuda_slice(&self) -> Option<&CudaSlice<T>> {
        match self {
            DeviceBuffer::Cuda(s) => Some(s),
            DeviceBuffer::Host(_) => None,
        }
    }

    /// Wraps a cudarc slice (e.g. a candle or cudarc user's tensor storage).
    pub fn from_cuda_slice(slice: CudaSlice<T>) -> DeviceBuffer<T> {
        DeviceBuffer::Cuda(slice)
    }
}

/// Where a kernel argument's elements live.
pub enum SliceMem<'a> {
    /// A device pointer (GPU memory or mapped host memory), valid in context `ctx`.
    Device {
        /// The device address.
        ptr: sys::CUdeviceptr,
        /// The context the address is valid in.
        ctx: sys::CUcontext,
    },
    /// Read-only host memory (emulator).
    Host(&'a [u8]),
    /// Writable host memory (emulator).
    HostMut(&'a mut [u8]),
}

/// One kernel argument, as the typed launchers produce it.
pub enum KernelArg<'a> {
    /// A slice parameter.
    Slice {
        /// Element type.
        elem: Scalar,
        /// Number of elements.
        len: usize,
        /// Where the elements are.
        mem: SliceMem<'a>,
        /// Whether the kernel may write them.
        writable: bool,
    },
    /// A scalar parameter.
    Scalar(ScalarValue),
}

impl KernelArg<'_> {
    /// A scalar argument.
    pub fn scalar<T: KernelScalar>(v: T) -> KernelArg<'static> {
        KernelArg::Scalar(ScalarValue::of(v))
    }
}

/// Things a kernel's `&[T]` parameter accepts.
pub trait AsKernelSlice<T: Element> {
    /// The argument describing this memory.
    fn kernel_arg(&self) -> KernelArg<'_>;
}

/// Things a kernel's `&mut [T]` parameter accepts.
pub trait AsKernelSliceMut<T: Element> {
    /// The argument describing this memory, writable.
    fn kernel_arg_mut(&mut self) -> KernelArg<'_>;
}

fn cuda_arg<T: Element>(s: &CudaSlice<T>, writable: bool) -> KernelArg<'_> {
    let (ptr, guard) = s.device_ptr(s.stream());
    drop(guard);
    KernelArg::Slice {
        elem: T::SCALAR,
        len: s.len(),
        mem: SliceMem::Device {
            ptr,
            ctx: s.context().cu_ctx(),
        },
        writable,
    }
}

impl<T: Element> AsKernelSlice<T> for CudaSlice<T> {
    fn kernel_arg(&self) -> KernelArg<'_> {
        cuda_arg(self, false)
    }
}

impl<T: Element> AsKernelSliceMut<T> for CudaSlice<T> {
    fn kernel_arg_mut(&mut self) -> KernelArg<'_> {
        cuda_arg(self, true)
    }
}

impl<T: Element> AsKernelSlice<T> for DeviceBuffer<T> {
    fn kernel_arg(&self) -> KernelArg<'_> {
        match self {
            DeviceBuffer::Cuda(s) => cuda_arg(s, false),
            DeviceBuffer::Host(v) => KernelArg::Slice {
                elem: T::SCALAR,
                len: v.len(),
                mem: SliceMem::Host(bytemuck::cast_slice(v)),
                writable: false,
            },
        }
    }
}

impl<T: Element> AsKernelSliceMut<T> for DeviceBuffer<T> {
    fn kernel_arg_mut(&mut self) -> KernelArg<'_> {
        match self {
            DeviceBuffer::Cuda(s) => cuda_arg(s, true),
            DeviceBuffer::Host(v) => {
                let len = v.len();
                KernelArg::Slice {
                    elem: T::SCALAR,
                    len,
                    mem: SliceMem::HostMut(bytemuck::cast_slice_mut(v)),
                    writable: true,
                }
            }
        }
    }
}

/// Page-locked host memory mapped into the device's address space: kernels read and write
/// it directly over PCIe (zero-copy), the host reads and writes it as a slice.
pub struct MappedBuffer<T: Element> {
    host: *mut T,
    device: sys::CUdeviceptr,
    len: usize,
    ctx: Option<Arc<CudaContext>>,
    /// Backing store on the emulator (no GPU).
    emulated: Vec<T>,
}

// SAFETY: the buffer owns its allocation; access goes through &/&mut like a Vec.
unsafe impl<T: Element> Send for MappedBuffer<T> {}
// SAFETY: shared access only reads.
unsafe impl<T: Element> Sync for MappedBuffer<T> {}

impl<T: Element> MappedBuffer<T> {
    /// Allocates `len` zeroed elements of mapped pinned memory in `ctx`.
    pub(crate) fn alloc_cuda(
        ctx: &Arc<CudaContext>,
        len: usize,
    ) -> Result<MappedBuffer<T>, RuntimeError> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            RuntimeError::InvalidInput {
                what: "mapped buffer",
                reason: format!("{len} elements overflow the address space"),
            }
        })?;
        ctx.bind_to_thread().map_err(crate::error::driver)?;
        let flags = sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE;
        // SAFETY: a plain allocation of `bytes.max(1)` bytes in the bound context.
        let host = unsafe { cudarc::driver::result::malloc_host(bytes.max(1), flags) }
            .map_err(crate::error::driver)? as *mut T;
        // SAFETY: `host` points to `bytes` writable bytes just allocated.
        unsafe { std::ptr::write_bytes(host as *mut u8, 0, bytes) };
        let mut device: sys::CUdeviceptr = 0;
        // SAFETY: `host` was allocated with DEVICEMAP in this context.
        let r = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device, host as *mut _, 0) };
        if r != sys::CUresult::CUDA_SUCCESS {
            // SAFETY: freeing what was allocated above.
            unsafe {
                let _ = cudarc::driver::result::free_host(host as *mut _);
            }
            return Err(crate::error::driver(cudarc::driver::DriverError(r)));
        }
        Ok(MappedBuffer {
            host,
            device,
            len,
            ctx: Some(ctx.clone()),
            emulated: Vec::new(),
        })
    }

    /// Host memory standing in for mapped memory on the emulator.
    pub(crate) fn emulated(len: usize) -> MappedBuffer<T> {
        let mut emulated = vec![T::default(); len];
        MappedBuffer {
            host: emulated.as_mut_ptr(),
            device: 0,
            len,
            ctx: None,
            emulated,
        }
    }

    /// The device address of the memory (0 on the emulator).
    pub fn device_ptr(&self) -> sys::CUdeviceptr {
        self.device
    }
}

impl<T: Element> std::ops::Deref for MappedBuffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        if self.ctx.is_none() {
            return &self.emulated;
        }
        // SAFETY: `host` holds `len` initialised elements owned by self.
        unsafe { std::slice::from_raw_parts(self.host, self.len) }
    }
}

impl<T: Element> std::ops::DerefMut for MappedBuffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        if self.ctx.is_none() {
            return &mut self.emulated;
        }
        // SAFETY: `host` holds `len` initialised elements owned by self, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.host, self.len) }
    }
}

impl<T: Element> Drop for MappedBuffer<T> {
    fn drop(&mut self) {
        if let Some(ctx) = &self.ctx {
            let _ = ctx.bind_to_thread();
            // SAFETY: `host` came from cuMemHostAlloc and is freed once.
            unsafe {
                let _ = cudarc::driver::result::free_host(self.host as *mut _);
            }
        }
    }
}

impl<T: Element> AsKernelSlice<T> for MappedBuffer<T> {
    fn kernel_arg(&self) -> KernelArg<'_> {
        match &self.ctx {
            Some(ctx) => KernelArg::Slice {
                elem: T::SCALAR,
                len: self.len,
                mem: SliceMem::Device {
                    ptr: self.device,
                    ctx: ctx.cu_ctx(),
                },
                writable: false,
            },
            None => KernelArg::Slice {
                elem: T::SCALAR,
                len: self.len,
                mem: SliceMem::Host(bytemuck::cast_slice(&self.emulated)),
                writable: false,
            },
        }
    }
}

impl<T: Element> AsKernelSliceMut<T> for MappedBuffer<T> {
    fn kernel_arg_mut(&mut self) -> KernelArg<'_> {
        match &self.ctx {
            Some(ctx) => KernelArg::Slice {
                elem: T::SCALAR,
                len: self.len,
                mem: SliceMem::Device {
                    ptr: self.device,
                    ctx: ctx.cu_ctx(),
                },
                writable: true,
            },
            None => {
                let len = self.len;
                KernelArg::Slice {
                    elem: T::SCALAR,
                    len,
                    mem: SliceMem::HostMut(bytemuck::cast_slice_mut(&mut self.emulated)),
                    writable: true,
                }
            }
        }
    }
}
