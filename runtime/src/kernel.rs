//! A kernel ready to launch on a device: specialised, compiled (through the cache) and
//! loaded. Launches are checked before they reach the GPU or the emulator: launch shape,
//! shared memory, and every argument's kind, element type and length.

use cudarc::driver::{sys, CudaFunction};
use kiln_codegen::ir::{walk_stmts, StmtKind};
use kiln_codegen::types::{Scalar, Ty};
use kiln_codegen::{CudaModule, Program, SpecBuilder};

use crate::cache::{compile_cached, CachedImage, JitOptions};
use crate::device::{Backend, Device};
use crate::error::{driver, RuntimeError};
use crate::launch::LaunchConfig;
use crate::memory::{KernelArg, SliceMem};
use crate::stream::Stream;

/// A specialised, compiled kernel bound to a device.
pub struct Kernel {
    /// The device it runs on.
    pub device: Device,
    /// The specialised program (what the emulator runs).
    pub program: Program,
    /// The generated CUDA.
    pub cuda: CudaModule,
    /// How the machine code was obtained (GPU only).
    pub image: Option<CachedImage>,
    function: Option<CudaFunction>,
    uses_dyn_shared: bool,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kernel({} on {})", self.name(), self.device.name())
    }
}

/// Builds kernels from specialisation builders (the `spec()` of every `#[kernel]`).
pub trait Build {
    /// Specialises for the device's architecture, compiles (or loads from the cache) and loads.
    fn build(&self, device: &Device) -> Result<Kernel, RuntimeError>;
}

impl Build for SpecBuilder {
    fn build(&self, device: &Device) -> Result<Kernel, RuntimeError> {
        Kernel::build(self, device)
    }
}

impl Kernel {
    /// Specialises `spec` for `device`, compiles it and loads it.
    pub fn build(spec: &SpecBuilder, device: &Device) -> Result<Kernel, RuntimeError> {
        Kernel::build_with(spec, device, &JitOptions::default())
    }

    /// [`Kernel::build`] with compile options (e.g. fast math).
    pub fn build_with(
        spec: &SpecBuilder,
        device: &Device,
        jit: &JitOptions,
    ) -> Result<Kernel, RuntimeError> {
        let program = spec.program(device.arch())?;
        let cuda = kiln_codegen::cuda::print(&program);
        let mut uses_dyn_shared = false;
        walk_stmts(&program.kernel.body, &mut |s| {
            uses_dyn_shared |= matches!(s.kind, StmtKind::DynShared { .. })
        });
        let (image, function) = match device.backend() {
            Backend::Gpu(g) => {
                let image = compile_cached(&cuda, g.arch, jit)?;
                let module = g
                    .ctx
                    .load_module(cudarc::nvrtc::Ptx::from_binary(
                        image.cubin.as_ref().clone(),
                    ))
                    .map_err(driver)?;
                let function = module.load_function(&cuda.entry).map_err(driver)?;
                (Some(image), Some(function))
            }
            Backend::Emulator(_) => (None, None),
        };
        Ok(Kernel {
            device: device.clone(),
            program,
            cuda,
            image,
            function,
            uses_dyn_shared,
        })
    }

    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.program.kernel.name
    }

    /// Registers per thread and static shared bytes (GPU only).
    pub fn resources(&self) -> Option<(i32, i32)> {
        let f = self.function.as_ref()?;
        Some((f.num_regs().ok()?, f.shared_size_bytes().ok()?))
    }

    fn reject(&self, reason: String) -> RuntimeError {
        RuntimeError::Launch {
            kernel: self.name().to_string(),
            reason,
        }
    }

    /// Checks the launch shape against CUDA's limits and the kernel's promises.
    fn check_shape(&self, cfg: &LaunchConfig) -> Result<(), RuntimeError> {
        let (bx, by, bz) = cfg.block;
        let (gx, gy, gz) = cfg.grid;
        if [bx, by, bz, gx, gy, gz].contains(&0) {
            return Err(self.reject(format!(
                "grid {:?} and block {:?} must not have a zero dimension",
                cfg.grid, cfg.block
            )));
        }
        let threads = cfg.threads_per_block();
        if threads > 1024 || bz > 64 {
            return Err(self.reject(format!(
                "block {:?} has {threads} threads; CUDA allows at most 1024 per block (and z ≤ 64)",
                cfg.block
            )));
        }
        if let Some(max) = self.program.kernel.max_threads {
            if threads > max as u64 {
                return Err(self.reject(format!("block of {threads} threads, but the kernel is declared `#[kernel(threads = {max})]`")));
            }
        }
        if gx > i32::MAX as u32 || gy > 65535 || gz > 65535 {
            return Err(self.reject(format!(
                "grid {:?} exceeds CUDA's limits (x < 2^31, y and z ≤ 65535)",
                cfg.grid
            )));
        }
        if self.uses_dyn_shared && cfg.dyn_shared_bytes == 0 {
            return Err(self.reject("the kernel declares `dyn_shared` but the launch gives it 0 bytes; use `LaunchConfig::with_dyn_shared`".into()));
        }
        if let Backend::Gpu(g) = self.device.backend() {
            if cfg.dyn_shared_bytes > g.max_shared_optin {
                return Err(self.reject(format!(
                    "{} bytes of dynamic shared memory; this GPU allows at most {}",
                    cfg.dyn_shared_bytes, g.max_shared_optin
                )));
            }
        }
        Ok(())
    }

    /// Checks the arguments against the parameters.
    fn check_args(&self, args: &[KernelArg<'_>]) -> Result<(), RuntimeError> {
        let params = &self.program.kernel.params;
        if params.len() != args.len() {
            return Err(self.reject(format!(
                "{} arguments for {} parameters",
                args.len(),
                params.len()
            )));
        }
        for (p, a) in params.iter().zip(args) {
            match (&p.ty, a) {
                (
                    Ty::Slice { elem, mutable },
                    KernelArg::Slice {
                        elem: got,
                        len,
                        writable,
                        ..
                    },
                ) => {
                    if elem != got {
                        return Err(self.reject(format!(
                            "argument `{}` holds {} but the parameter is `&{}[{}]` in this specialisation ({})",
                            p.name,
                            got.rust_name(),
                            if *mutable { "mut " } else { "" },
                            elem.rust_name(),
                            self.program.bindings.describe()
                        )));
                    }
                    if *mutable && !writable {
                        return Err(self.reject(format!("argument `{}` must be writable", p.name)));
                    }
                    if *len > u32::MAX as usize {
                        return Err(self.reject(format!(
                            "argument `{}` has {len} elements; Kiln kernels index at most 2^32 - 1",
                            p.name
                        )));
                    }
                }
                (Ty::Scalar(s), KernelArg::Scalar(v)) if *s == v.ty => {}
                (Ty::Scalar(s), KernelArg::Scalar(v)) => {
                    return Err(self.reject(format!(
                        "argument `{}` is {} but the parameter is {}",
                        p.name,
                        v.ty.rust_name(),
                        s.rust_name()
                    )));
                }
                (_, KernelArg::Invalid(why)) => {
                    return Err(self.reject(format!("argument `{}`: {why}", p.name)))
                }
                _ => {
                    return Err(self.reject(format!(
                        "argument `{}` is not of the parameter's kind ({:?})",
                        p.name, p.ty
                    )))
                }
            }
        }
        Ok(())
    }

    /// Launches on the device's default stream with already-built arguments (the typed
    /// `launch` functions call this).
    pub fn launch_args(
        &self,
        cfg: &LaunchConfig,
        args: &mut [KernelArg<'_>],
    ) -> Result<(), RuntimeError> {
        self.launch_args_on(&self.device.default_stream(), cfg, args)
    }

    /// Launches on `stream` (the typed `launch_on` functions call this).
    pub fn launch_args_on(
        &self,
        stream: &Stream,
        cfg: &LaunchConfig,
        args: &mut [KernelArg<'_>],
    ) -> Result<(), RuntimeError> {
        self.check_shape(cfg)?;
        self.check_args(args)?;
        match self.device.backend() {
            Backend::Gpu(g) => {
                let s = stream.cuda().ok_or_else(|| {
                    self.reject("an emulator stream was given for a GPU kernel".into())
                })?;
                if s.context().cu_ctx() != g.ctx.cu_ctx() {
                    return Err(self.reject("the stream belongs to another CUDA context".into()));
                }
                self.launch_gpu(g, s, cfg, args)
            }
            Backend::Emulator(opts) => {
                crate::emu_launch::launch(self.name(), &self.program, cfg, args, opts)
            }
        }
    }

    fn launch_gpu(
        &self,
        g: &crate::device::Gpu,
        stream: &cudarc::driver::CudaStream,
        cfg: &LaunchConfig,
        args: &[KernelArg<'_>],
    ) -> Result<(), RuntimeError> {
        let function = self
            .function
            .as_ref()
            .ok_or_else(|| self.reject("not loaded on the GPU".into()))?;
        // parameter values, each in its own 8-byte slot (little-endian: the first bytes are the value)
        let mut slots: Vec<u64> = Vec::with_capacity(args.len() * 2);
        // streams whose work on the arguments must come before the launch, and wait after it
        let mut other_streams: Vec<&std::sync::Arc<cudarc::driver::CudaStream>> = Vec::new();
        for a in args.iter() {
            match a {
                KernelArg::Slice {
                    len,
                    mem:
                        SliceMem::Device {
                            ptr,
                            ctx,
                            stream: buffer_stream,
                            ..
                        },
                    ..
                } => {
                    if *ctx != g.ctx.cu_ctx() {
                        return Err(self.reject("a buffer belongs to another CUDA context".into()));
                    }
                    if let Some(bs) = buffer_stream {
                        if bs.cu_stream() != stream.cu_stream()
                            && !other_streams
                                .iter()
                                .any(|o| o.cu_stream() == bs.cu_stream())
                        {
                            other_streams.push(bs);
                        }
                    }
                    slots.push(*ptr);
                    slots.push(*len as u64);
                }
                KernelArg::Slice { .. } => {
                    return Err(
                        self.reject("a host (emulator) buffer was passed to a GPU kernel".into())
                    )
                }
                KernelArg::Scalar(v) => slots.push(scalar_slot(v.ty, v.bits)),
                KernelArg::Invalid(why) => return Err(self.reject(why.clone())),
            }
        }
        let mut ptrs: Vec<*mut std::ffi::c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut std::ffi::c_void)
            .collect();
        if cfg.dyn_shared_bytes > 48 * 1024 {
            function
                .set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    cfg.dyn_shared_bytes as i32,
                )
                .map_err(driver)?;
        }
        g.ctx.bind_to_thread().map_err(driver)?;
        // inside a capture the graph orders its work (see `crate::graph`) and keeps track of
        // its buffers; the joins and host-access events below would only be captured too
        let capturing = crate::graph::capturing();
        if capturing {
            crate::graph::note_args(args);
            other_streams.clear();
        }
        for other in &other_streams {
            stream.join(other).map_err(driver)?;
        }
        // SAFETY: the arguments were checked against the parameters (count, kinds, element
        // types); each pointer refers to a live slot of the right size for its parameter.
        unsafe {
            cudarc::driver::result::launch_kernel(
                function.cu_function(),
                cfg.grid,
                cfg.block,
                cfg.dyn_shared_bytes,
                stream.cu_stream(),
                &mut ptrs,
            )
        }
        .map_err(|e| self.reject(format!("the driver refused the launch: {e:?}")))?;
        // later work on the buffers' own streams (writes, frees) waits for this launch, and host
        // access to mapped memory waits for it too
        for other in &other_streams {
            other.join(stream).map_err(driver)?;
        }
        for a in args.iter().filter(|_| !capturing) {
            if let KernelArg::Slice {
                mem:
                    SliceMem::Device {
                        last_use: Some(slot),
                        ..
                    },
                ..
            } = a
            {
                let event = stream.record_event(None).map_err(driver)?;
                if let Ok(mut s) = slot.lock() {
                    *s = Some(event);
                }
            }
        }
        Ok(())
    }
}

/// A scalar's bits as the kernel parameter reads them (bool as one byte 0/1).
fn scalar_slot(ty: Scalar, bits: u64) -> u64 {
    match ty {
        Scalar::Bool => (bits != 0) as u64,
        _ => bits,
    }
}
