//! Page-locked (pinned) host memory: copies to and from it run at full PCIe speed, and when
//! it is also mapped into the device's address space, kernels read and write it directly
//! (zero-copy). On the emulator it is ordinary host memory.
//!
//! A kernel may still be using mapped memory after `launch` returns, so every launch that
//! uses a buffer records an event in it, and host access (`Deref`, `DerefMut`) and `Drop`
//! wait for that event first.

use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaContext, CudaEvent};

use crate::error::{driver, RuntimeError};
use crate::memory::{AsKernelSlice, AsKernelSliceMut, Element, KernelArg, SliceMem};

/// Where the elements live.
enum Storage<T> {
    /// `cuMemHostAlloc` memory in `ctx`, with its device address when mapped.
    Cuda {
        host: *mut T,
        device: Option<sys::CUdeviceptr>,
        ctx: Arc<CudaContext>,
    },
    /// Host memory standing in on the emulator.
    Emulated(Vec<T>),
}

/// Pinned host memory, optionally mapped for zero-copy kernel access.
pub struct PinnedBuffer<T: Element> {
    storage: Storage<T>,
    len: usize,
    mapped: bool,
    /// The last launch that used the buffer, which host access waits for.
    last_use: Arc<Mutex<Option<CudaEvent>>>,
}

/// Pinned host memory that kernels read and write directly.
pub type MappedBuffer<T> = PinnedBuffer<T>;

// SAFETY: the buffer owns its allocation; host access goes through &/&mut like a Vec and
// waits for the kernels that use it (`last_use`).
unsafe impl<T: Element> Send for PinnedBuffer<T> {}
// SAFETY: as above; `&self` only reads, after pending kernels finished.
unsafe impl<T: Element> Sync for PinnedBuffer<T> {}

const NOT_MAPPED: &str = "a pinned buffer that is not mapped cannot be read by kernels; allocate it with `Device::mapped`";

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
            storage: Storage::Cuda {
                host,
                device: None,
                ctx: ctx.clone(),
            },
            len,
            mapped,
            last_use: Arc::new(Mutex::new(None)),
        };
        if mapped {
            let mut device: sys::CUdeviceptr = 0;
            // SAFETY: `host` was allocated with DEVICEMAP in this context.
            let r = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device, host as *mut _, 0) };
            if r != sys::CUresult::CUDA_SUCCESS {
                return Err(driver(cudarc::driver::DriverError(r))); // dropping `buf` frees the memory
            }
            if let Storage::Cuda { device: d, .. } = &mut buf.storage {
                *d = Some(device);
            }
        }
        Ok(buf)
    }

    /// Host memory standing in for pinned memory on the emulator.
    pub(crate) fn emulated(len: usize, mapped: bool) -> PinnedBuffer<T> {
        PinnedBuffer {
            storage: Storage::Emulated(vec![T::default(); len]),
            len,
            mapped,
            last_use: Arc::new(Mutex::new(None)),
        }
    }

    /// Whether kernels can access it directly.
    pub fn is_mapped(&self) -> bool {
        self.mapped
    }

    /// The device address, when mapped on a GPU.
    pub fn device_ptr(&self) -> Option<sys::CUdeviceptr> {
        match &self.storage {
            Storage::Cuda { device, .. } => *device,
            Storage::Emulated(_) => None,
        }
    }

    /// The address kernels use (device address when mapped on a GPU, else the host
    /// address): what a captured [`crate::Graph`] remembers the buffer by.
    pub fn address(&self) -> u64 {
        match &self.storage {
            Storage::Cuda { device, host, .. } => device.unwrap_or(*host as u64),
            Storage::Emulated(v) => v.as_ptr() as u64,
        }
    }

    /// The host address of the first element.
    pub(crate) fn host_ptr(&self) -> *const T {
        match &self.storage {
            Storage::Cuda { host, .. } => *host,
            Storage::Emulated(v) => v.as_ptr(),
        }
    }

    /// Where work that uses the buffer leaves the event host access waits for.
    pub(crate) fn last_use_slot(&self) -> &Arc<Mutex<Option<CudaEvent>>> {
        &self.last_use
    }

    /// Waits for the last kernel that used the buffer.
    pub(crate) fn wait_for_kernels(&self) {
        let pending = self
            .last_use
            .lock()
            .map(|mut e| e.take())
            .unwrap_or_else(|p| p.into_inner().take());
        if let Some(event) = pending {
            // a failed wait means the context is broken; the kernel is no longer running
            let _ = event.synchronize();
        }
    }
}

/// The kernel argument for GPU pinned memory: its device address when mapped.
fn device_arg<'a, T: Element>(
    device: Option<sys::CUdeviceptr>,
    ctx: &Arc<CudaContext>,
    len: usize,
    last_use: &'a Arc<Mutex<Option<CudaEvent>>>,
    writable: bool,
) -> KernelArg<'a> {
    match device {
        Some(ptr) => KernelArg::Slice {
            elem: T::SCALAR,
            len,
            mem: SliceMem::Device {
                ptr,
                ctx: ctx.cu_ctx(),
                stream: None,
                last_use: Some(last_use),
            },
            writable,
        },
        None => KernelArg::Invalid(NOT_MAPPED.into()),
    }
}

impl<T: Element> std::ops::Deref for PinnedBuffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.wait_for_kernels();
        match &self.storage {
            // SAFETY: `host` holds `len` initialised elements owned by self; no kernel uses them now.
            Storage::Cuda { host, .. } => unsafe { std::slice::from_raw_parts(*host, self.len) },
            Storage::Emulated(v) => v,
        }
    }
}

impl<T: Element> std::ops::DerefMut for PinnedBuffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.wait_for_kernels();
        match &mut self.storage {
            // SAFETY: as for Deref, borrowed mutably.
            Storage::Cuda { host, .. } => unsafe {
                std::slice::from_raw_parts_mut(*host, self.len)
            },
            Storage::Emulated(v) => v,
        }
    }
}

impl<T: Element> Drop for PinnedBuffer<T> {
    fn drop(&mut self) {
        self.wait_for_kernels();
        crate::graph::released(self.address(), "pinned host buffer");
        if let Storage::Cuda { host, ctx, .. } = &self.storage {
            let _ = ctx.bind_to_thread();
            // SAFETY: `host` came from cuMemHostAlloc, no kernel uses it, and it is freed once.
            unsafe {
                let _ = cudarc::driver::result::free_host(*host as *mut _);
            }
        }
    }
}

impl<T: Element> AsKernelSlice<T> for PinnedBuffer<T> {
    fn kernel_arg(&self) -> KernelArg<'_> {
        match &self.storage {
            Storage::Emulated(_) if !self.mapped => KernelArg::Invalid(NOT_MAPPED.into()),
            Storage::Emulated(v) => KernelArg::Slice {
                elem: T::SCALAR,
                len: self.len,
                mem: SliceMem::Host(bytemuck::cast_slice(v)),
                writable: false,
            },
            Storage::Cuda { device, ctx, .. } => {
                device_arg::<T>(*device, ctx, self.len, &self.last_use, false)
            }
        }
    }
}

impl<T: Element> AsKernelSliceMut<T> for PinnedBuffer<T> {
    fn kernel_arg_mut(&mut self) -> KernelArg<'_> {
        let (len, mapped, last_use) = (self.len, self.mapped, &self.last_use);
        match &mut self.storage {
            Storage::Emulated(_) if !mapped => KernelArg::Invalid(NOT_MAPPED.into()),
            Storage::Emulated(v) => KernelArg::Slice {
                elem: T::SCALAR,
                len,
                mem: SliceMem::HostMut(bytemuck::cast_slice_mut(v)),
                writable: true,
            },
            Storage::Cuda { device, ctx, .. } => device_arg::<T>(*device, ctx, len, last_use, true),
        }
    }
}
