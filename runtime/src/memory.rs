//! Device memory (a cudarc `CudaSlice` on the GPU, host memory on the emulator) and the
//! kernel-argument traits: kernels take device buffers, mapped host buffers
//! (`crate::host_memory`) and a cudarc user's own `CudaSlice` through [`AsKernelSlice`] /
//! [`AsKernelSliceMut`].

use std::sync::{Arc, Mutex};

use cudarc::driver::{
    sys, CudaEvent, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits,
};
use kiln_codegen::types::Scalar;

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

impl<T: Element> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        crate::graph::released(self.address(), "device buffer");
    }
}

impl<T: Element> DeviceBuffer<T> {
    /// The address of the first element (device address on a GPU, host address on the
    /// emulator): what a captured [`crate::Graph`] remembers the buffer by.
    pub fn address(&self) -> u64 {
        match self {
            DeviceBuffer::Cuda(s) => s.device_ptr(s.stream()).0,
            DeviceBuffer::Host(v) => v.as_ptr() as u64,
        }
    }

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
        /// The stream the memory's other work (allocation, copies, frees) is ordered on; a
        /// launch on another stream waits for it and makes it wait for the launch.
        stream: Option<Arc<CudaStream>>,
        /// For host memory: where the launch leaves an event that host access waits for.
        last_use: Option<&'a Arc<Mutex<Option<CudaEvent>>>>,
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
    /// Something that cannot be a kernel argument, and why (reported by the launch check).
    Invalid(String),
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
    // the launch orders itself against the slice's stream (see `Kernel::launch_args_on`)
    let (ptr, guard) = s.device_ptr(s.stream());
    drop(guard);
    KernelArg::Slice {
        elem: T::SCALAR,
        len: s.len(),
        mem: SliceMem::Device {
            ptr,
            ctx: s.context().cu_ctx(),
            stream: Some(s.stream().clone()),
            last_use: None,
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
