//! The device handle: a GPU (through cudarc) or the CPU emulator, behind one API for
//! memory, kernels and synchronisation.

use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaStream};
use kiln_codegen::Arch;

use crate::error::{driver, RuntimeError};
use crate::host_memory::{MappedBuffer, PinnedBuffer};
use crate::locate::locate_cuda_driver;
use crate::memory::{DeviceBuffer, Element};

/// Environment variable: `1` makes [`Device::from_env`] fail instead of falling back to the
/// emulator when no GPU is usable (so a GPU test can never pass by skipping it).
pub const REQUIRE_GPU_ENV: &str = "KILN_REQUIRE_GPU";

/// A GPU context with the stream Kiln issues all work on.
pub struct Gpu {
    /// The cudarc context (interoperable with cudarc and candle).
    pub ctx: Arc<CudaContext>,
    /// The stream every copy and launch of this device goes to, in order.
    pub stream: Arc<CudaStream>,
    /// Device name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Compute capability as an architecture.
    pub arch: Arch,
    /// Largest dynamic shared memory a block can opt in to, in bytes.
    pub max_shared_optin: u32,
    /// Streaming multiprocessors.
    pub multiprocessors: u32,
}

/// Where kernels run.
pub enum Backend {
    /// A CUDA GPU.
    Gpu(Gpu),
    /// The CPU emulator, with how it schedules and checks.
    Emulator(crate::emu::EmuOptions),
}

/// A device: cheap to clone (shared handle).
#[derive(Clone)]
pub struct Device {
    inner: Arc<Backend>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.name())
    }
}

fn env_true(name: &str) -> bool {
    std::env::var(name)
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

impl Device {
    /// GPU number `ordinal`. Fails (never panics) when the driver or the GPU is missing.
    pub fn gpu(ordinal: usize) -> Result<Device, RuntimeError> {
        locate_cuda_driver()?;
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| {
                RuntimeError::NoGpu("the CUDA driver panicked while creating a context".into())
            })?
            .map_err(|e| RuntimeError::NoGpu(format!("cannot open GPU {ordinal}: {e:?}")))?;
        // Kiln orders work itself: each launch waits for the streams its buffers belong to and
        // makes them wait for it, and mapped host memory waits for its last launch; cudarc's
        // own per-slice events would only duplicate that on every launch.
        // SAFETY: the ordering above covers every launch Kiln makes.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver)?;
        let name = ctx.name().map_err(driver)?;
        let (major, minor) = ctx.compute_capability().map_err(driver)?;
        let max_shared_optin = ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(driver)? as u32;
        let multiprocessors = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver)? as u32;
        let arch = Arch((major * 10 + minor) as u32);
        Ok(Device {
            inner: Arc::new(Backend::Gpu(Gpu {
                ctx,
                stream,
                name,
                arch,
                max_shared_optin,
                multiprocessors,
            })),
        })
    }

    /// How many GPUs the driver sees (0 without a driver), for spreading work over all of
    /// them (`crate::comm::CommGroup::gpus`).
    pub fn gpu_count() -> usize {
        if locate_cuda_driver().is_err() {
            return 0;
        }
        std::panic::catch_unwind(CudaContext::device_count)
            .ok()
            .and_then(Result::ok)
            .map_or(0, |n| n.max(0) as usize)
    }

    /// The CPU emulator (deterministic schedule, all checks on).
    pub fn emulator() -> Device {
        Device::emulator_with(crate::emu::EmuOptions::default())
    }

    /// The CPU emulator with explicit options (e.g. a shuffled schedule to expose
    /// order-dependent bugs).
    pub fn emulator_with(options: crate::emu::EmuOptions) -> Device {
        Device {
            inner: Arc::new(Backend::Emulator(options)),
        }
    }

    /// The device selected by the environment: `KILN_DEVICE=emulator` or `gpu[:N]`; by
    /// default GPU 0 when one is usable, else the emulator — unless `KILN_REQUIRE_GPU=1`, in
    /// which case a missing GPU is an error.
    pub fn from_env() -> Result<Device, RuntimeError> {
        let choice = std::env::var("KILN_DEVICE").unwrap_or_default();
        let required = env_true(REQUIRE_GPU_ENV);
        match choice.trim() {
            "emulator" | "emu" | "cpu" if required => Err(RuntimeError::NoGpu(format!(
                "KILN_DEVICE={choice} but {REQUIRE_GPU_ENV}=1"
            ))),
            "emulator" | "emu" | "cpu" => Ok(Device::emulator()),
            "" => match Device::gpu(0) {
                Ok(d) => Ok(d),
                Err(e) if required => Err(e),
                Err(_) => Ok(Device::emulator()),
            },
            other => {
                let ordinal = other
                    .strip_prefix("gpu")
                    .map(|r| r.trim_start_matches(':'))
                    .filter(|r| !r.is_empty())
                    .unwrap_or("0");
                let ordinal: usize = ordinal.parse().map_err(|_| RuntimeError::InvalidInput {
                    what: "KILN_DEVICE",
                    reason: format!("`{other}`: use `emulator`, `gpu` or `gpu:N`"),
                })?;
                Device::gpu(ordinal)
            }
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.inner
    }

    /// The GPU, when this is one.
    pub fn as_gpu(&self) -> Option<&Gpu> {
        match &*self.inner {
            Backend::Gpu(g) => Some(g),
            Backend::Emulator(_) => None,
        }
    }

    /// Streaming multiprocessors of the GPU (1 for the emulator): the unit launch grids are
    /// sized in.
    pub fn multiprocessors(&self) -> u32 {
        match &*self.inner {
            Backend::Gpu(g) => g.multiprocessors,
            Backend::Emulator(_) => 1,
        }
    }

    /// Whether kernels run on a GPU.
    pub fn is_gpu(&self) -> bool {
        self.as_gpu().is_some()
    }

    /// A human-readable name ("NVIDIA H200", "CPU emulator").
    pub fn name(&self) -> String {
        match &*self.inner {
            Backend::Gpu(g) => g.name.clone(),
            Backend::Emulator(_) => "CPU emulator".into(),
        }
    }

    /// The architecture kernels are compiled for (the emulator follows sm_90's rules).
    pub fn arch(&self) -> Arch {
        match &*self.inner {
            Backend::Gpu(g) => g.arch,
            Backend::Emulator(_) => Arch::SM90,
        }
    }

    /// `n` zeroed elements.
    pub fn zeros<T: Element>(&self, n: usize) -> Result<DeviceBuffer<T>, RuntimeError> {
        match &*self.inner {
            Backend::Gpu(g) => g
                .stream
                .alloc_zeros::<T>(n)
                .map(DeviceBuffer::Cuda)
                .map_err(driver),
            Backend::Emulator(_) => Ok(DeviceBuffer::Host(vec![T::default(); n])),
        }
    }

    /// A copy of `data` in device memory.
    pub fn upload<T: Element>(&self, data: &[T]) -> Result<DeviceBuffer<T>, RuntimeError> {
        match &*self.inner {
            Backend::Gpu(g) => g
                .stream
                .clone_htod(data)
                .map(DeviceBuffer::Cuda)
                .map_err(driver),
            Backend::Emulator(_) => Ok(DeviceBuffer::Host(data.to_vec())),
        }
    }

    /// Overwrites `buf` with `data` (same length).
    pub fn write<T: Element>(
        &self,
        buf: &mut DeviceBuffer<T>,
        data: &[T],
    ) -> Result<(), RuntimeError> {
        if buf.len() != data.len() {
            return Err(RuntimeError::InvalidInput {
                what: "write",
                reason: format!("buffer holds {} elements, data {}", buf.len(), data.len()),
            });
        }
        match (&*self.inner, buf) {
            (Backend::Gpu(g), DeviceBuffer::Cuda(s)) => {
                g.stream.memcpy_htod(data, s).map_err(driver)
            }
            (_, DeviceBuffer::Host(v)) => {
                v.copy_from_slice(data);
                Ok(())
            }
            (Backend::Emulator(_), DeviceBuffer::Cuda(_)) => Err(mismatch()),
        }
    }

    /// The contents of `buf` (waits for the work queued before).
    pub fn download<T: Element>(&self, buf: &DeviceBuffer<T>) -> Result<Vec<T>, RuntimeError> {
        match (&*self.inner, buf) {
            (Backend::Gpu(g), DeviceBuffer::Cuda(s)) => g.stream.clone_dtoh(s).map_err(driver),
            (_, DeviceBuffer::Host(v)) => Ok(v.clone()),
            (Backend::Emulator(_), DeviceBuffer::Cuda(_)) => Err(mismatch()),
        }
    }

    /// `n` zeroed elements of mapped pinned host memory (zero-copy from kernels).
    pub fn mapped<T: Element>(&self, n: usize) -> Result<MappedBuffer<T>, RuntimeError> {
        match &*self.inner {
            Backend::Gpu(g) => PinnedBuffer::alloc_cuda(&g.ctx, n, true),
            Backend::Emulator(_) => Ok(PinnedBuffer::emulated(n, true)),
        }
    }

    /// `n` zeroed elements of pinned (page-locked) host memory: fast copies to and from the
    /// device with `write`/`download`, but not readable by kernels (see [`Device::mapped`]).
    pub fn pinned<T: Element>(&self, n: usize) -> Result<PinnedBuffer<T>, RuntimeError> {
        match &*self.inner {
            Backend::Gpu(g) => PinnedBuffer::alloc_cuda(&g.ctx, n, false),
            Backend::Emulator(_) => Ok(PinnedBuffer::emulated(n, false)),
        }
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), RuntimeError> {
        match &*self.inner {
            Backend::Gpu(g) => g.stream.synchronize().map_err(driver),
            Backend::Emulator(_) => Ok(()),
        }
    }
}

fn mismatch() -> RuntimeError {
    RuntimeError::InvalidInput {
        what: "buffer",
        reason: "a GPU buffer was given to the emulator".into(),
    }
}
