//! Page-locked (pinned) host memory: copies to and from it run at full PCIe speed, and when
//! it is also mapped into the device's address space, kernels read and write it directly
//! (zero-copy). On the emulator it is ordinary host memory.

use std::sync::Arc;

use cudarc::driver::{sys, CudaContext};

use crate::error::{driver, RuntimeError};
use crate::memory::{AsKernelSlice, AsKernelSliceMut, Element, KernelArg, SliceMem};

/// Pinned host memory, optionally mapped for zero-copy kernel access.
pub struct PinnedBuffer<T: Element> {
    host: *mut T,
    len: usize,
    /// The device address when mapped.
    device: Option<sys::CUdeviceptr>,
    ctx: Option<Arc<CudaContext>>,
    /// Backing store on the emulator.
    emulated: Vec<T>,
    mapped: bool,
}

/// Pinned host memory that kernels read and write directly.
pub type MappedBuffer<T> = PinnedBuffer<T>;

// SAFETY: the buffer owns its allocation; access goes through &/&mut like a Vec.
unsafe impl<T: Element> Send for PinnedBuffer<T> {}
// SAFETY: shared access only reads.
unsafe impl<T: Element> Sync for PinnedBuffer<T> {}

impl<T: Element> PinnedBuffer<T> {
    /// `len` zeroed elements of pinned memory in `ctx`, mapped into the device when `mapped`.
    pub(crate) fn alloc_cuda(
        ctx: &Arc<CudaContext>,
        len: usize,
        mapped: bool,
    ) -> Result<PinnedBuffer<T>, RuntimeError> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            RuntimeError::InvalidInput {
                what: "pinned buffer",
                reason: format!("{len} elements overflow the address space"),
            }
        })?;
        ctx.bind_to_thread().map_err(driver)?;
        let flags = if mapped {
            sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE
        } else {
            sys::CU_MEMHOSTALLOC_PORTABLE
        };
        // SAFETY: a plain allocation of `bytes.max(1)` bytes in the bound context.
        let host = unsafe { cudarc::driver::result::malloc_host(bytes.max(1), flags) }
            .map_err(driver)? as *mut T;
        // SAFETY: `host` points to at least `bytes` writable bytes just allocated.
        unsafe { std::ptr::write_bytes(host as *mut u8, 0, bytes) };
        let mut buf = PinnedBuffer {
            host,
            len,
            device: None,
            ctx: Some(ctx.clone()),
            emulated: Vec::new(),
            mapped,
        };
        if mapped {
            let mut device: sys::CUdeviceptr = 0;
            // SAFETY: `host` was allocated with DEVICEMAP in this context.
            let r = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device, host as *mut _, 0) };
            if r != sys::CUresult::CUDA_SUCCESS {
                return Err(driver(cudarc::driver::DriverError(r))); // `buf` frees the memory
            }
            buf.device = Some(device);
        }
        Ok(buf)
    }

    /// Host memory standing in for pinned memory on the emulator.
    pub(crate) fn emulated(len: usize, mapped: bool) -> PinnedBuffer<T> {
        let mut emulated = vec![T::default(); len];
        PinnedBuffer {
            host: emulated.as_mut_ptr(),
            len,
            device: None,
            ctx: None,
            emulated,
            mapped,
        }
    }

    /// Whether kernels can access it directly.
    pub fn is_mapped(&self) -> bool {
        self.mapped
    }

    /// The device address, when mapped on a GPU.
    pub fn device_ptr(&self) -> Option<sys::CUdeviceptr> {
        self.device
    }

    fn arg(&self, writable: bool) -> KernelArg<'_> {
        match (&self.ctx, self.device) {
            (Some(ctx), Some(ptr)) => KernelArg::Slice { elem: T::SCALAR, len: self.len, mem: SliceMem::Device { ptr, ctx: ctx.cu_ctx() }, writable },
            (Some(_), None) => KernelArg::Invalid("a pinned buffer that is not mapped cannot be read by kernels; allocate it with `Device::mapped`".into()),
            (None, _) if !self.mapped => KernelArg::Invalid("a pinned buffer that is not mapped cannot be read by kernels; allocate it with `Device::mapped`".into()),
            (None, _) => KernelArg::Slice { elem: T::SCALAR, len: self.len, mem: SliceMem::Host(bytemuck::cast_slice(&self.emulated)), writable },
        }
    }
}

impl<T: Element> std::ops::Deref for PinnedBuffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        if self.ctx.is_none() {
            return &self.emulated;
        }
        // SAFETY: `host` holds `len` initialised elements owned by self.
        unsafe { std::slice::from_raw_parts(self.host, self.len) }
    }
}

impl<T: Element> std::ops::DerefMut for PinnedBuffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        if self.ctx.is_none() {
            return &mut self.emulated;
        }
        // SAFETY: `host` holds `len` initialised elements owned by self, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.host, self.len) }
    }
}

impl<T: Element> Drop for PinnedBuffer<T> {
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

impl<T: Element> AsKernelSlice<T> for PinnedBuffer<T> {
    fn kernel_arg(&self) -> KernelArg<'_> {
        self.arg(false)
    }
}

impl<T: Element> AsKernelSliceMut<T> for PinnedBuffer<T> {
    fn kernel_arg_mut(&mut self) -> KernelArg<'_> {
        if self.ctx.is_none() && self.mapped {
            let len = self.len;
            return KernelArg::Slice {
                elem: T::SCALAR,
                len,
                mem: SliceMem::HostMut(bytemuck::cast_slice_mut(&mut self.emulated)),
                writable: true,
            };
        }
        self.arg(true)
    }
}
