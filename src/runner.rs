//! `kiln run`: launches any registered kernel on random inputs (GPU, or the CPU emulator
//! with `--emulate`) and prints what it wrote. On the emulator every check is on, so the
//! command doubles as a race / bounds / divergence detector for a kernel.

use std::fmt::Write as _;

use half::{bf16, f16};
use kiln_codegen::ir::Generic;
use kiln_codegen::types::{Scalar, Ty};
use kiln_codegen::{find_kernel, Bindings, Dtype, SpecBuilder};
use kiln_runtime::{
    AsKernelSlice, AsKernelSliceMut, Device, DeviceBuffer, KernelArg, LaunchConfig, ScalarValue,
};

use crate::cli_error::CliError;
use kiln_algorithms::verify::Rng;

/// What to launch and how.
pub struct RunRequest<'a> {
    /// Kernel name (or module::name).
    pub kernel: &'a str,
    /// Comptime values, NAME=VALUE.
    pub consts: &'a [String],
    /// The element type for `T: Float` parameters.
    pub dtype: Option<&'a str>,
    /// Run on the CPU emulator even when a GPU is present.
    pub emulate: bool,
    /// Elements per slice argument.
    pub len: u32,
    /// Blocks in the grid (x, y, z).
    pub grid: (u32, u32, u32),
    /// Threads per block (x, y, z).
    pub block: (u32, u32, u32),
    /// Bytes of dynamic shared memory per block.
    pub dyn_shared: u32,
    /// Scalar arguments, NAME=VALUE; unset integers get `len`, floats 1.0.
    pub args: &'a [String],
    /// Seed of the random inputs.
    pub seed: u64,
}

/// A device buffer of any element type.
enum AnyBuffer {
    U8(DeviceBuffer<u8>),
    U16(DeviceBuffer<u16>),
    U32(DeviceBuffer<u32>),
    U64(DeviceBuffer<u64>),
    I32(DeviceBuffer<i32>),
    I64(DeviceBuffer<i64>),
    F16(DeviceBuffer<f16>),
    Bf16(DeviceBuffer<bf16>),
    F32(DeviceBuffer<f32>),
    F64(DeviceBuffer<f64>),
}

macro_rules! each_buffer {
    ($b:expr, $v:ident => $e:expr) => {
        match $b {
            AnyBuffer::U8($v) => $e,
            AnyBuffer::U16($v) => $e,
            AnyBuffer::U32($v) => $e,
            AnyBuffer::U64($v) => $e,
            AnyBuffer::I32($v) => $e,
            AnyBuffer::I64($v) => $e,
            AnyBuffer::F16($v) => $e,
            AnyBuffer::Bf16($v) => $e,
            AnyBuffer::F32($v) => $e,
            AnyBuffer::F64($v) => $e,
        }
    };
}

fn random_buffer(
    dev: &Device,
    elem: Scalar,
    n: usize,
    rng: &mut Rng,
) -> Result<AnyBuffer, CliError> {
    let e = |e: kiln_runtime::RuntimeError| CliError {
        message: e.to_string(),
        code: 1,
    };
    let ints: Vec<u64> = (0..n).map(|_| rng.next_u64()).collect();
    let floats: Vec<f32> = rng.f32s(n);
    Ok(match elem {
        Scalar::U8 => AnyBuffer::U8(
            dev.upload(&ints.iter().map(|v| *v as u8).collect::<Vec<_>>())
                .map_err(e)?,
        ),
        Scalar::U16 => AnyBuffer::U16(
            dev.upload(&ints.iter().map(|v| *v as u16).collect::<Vec<_>>())
                .map_err(e)?,
        ),
        Scalar::U32 => AnyBuffer::U32(
            dev.upload(&ints.iter().map(|v| *v as u32).collect::<Vec<_>>())
                .map_err(e)?,
        ),
        Scalar::U64 => AnyBuffer::U64(dev.upload(&ints).map_err(e)?),
        Scalar::I32 => AnyBuffer::I32(
            dev.upload(&ints.iter().map(|v| *v as i32).collect::<Vec<_>>())
                .map_err(e)?,
        ),
        Scalar::I64 => AnyBuffer::I64(
            dev.upload(&ints.iter().map(|v| *v as i64).collect::<Vec<_>>())
                .map_err(e)?,
        ),
        Scalar::F16 => AnyBuffer::F16(
            dev.upload(&floats.iter().map(|v| f16::from_f32(*v)).collect::<Vec<_>>())
                .map_err(e)?,
        ),
        Scalar::Bf16 => AnyBuffer::Bf16(
            dev.upload(
                &floats
                    .iter()
                    .map(|v| bf16::from_f32(*v))
                    .collect::<Vec<_>>(),
            )
            .map_err(e)?,
        ),
        Scalar::F32 => AnyBuffer::F32(dev.upload(&floats).map_err(e)?),
        Scalar::F64 => AnyBuffer::F64(
            dev.upload(&floats.iter().map(|v| *v as f64).collect::<Vec<_>>())
                .map_err(e)?,
        ),
        other => {
            return Err(CliError {
                message: format!("`kiln run` cannot make a buffer of {}", other.rust_name()),
                code: 2,
            })
        }
    })
}

fn scalar_arg(name: &str, ty: Scalar, given: &[String], len: u32) -> Result<ScalarValue, CliError> {
    let usage = |m: String| CliError {
        message: m,
        code: 2,
    };
    let text = given.iter().find_map(|a| {
        a.split_once('=')
            .filter(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    });
    let bits = match (ty, text) {
        (Scalar::Bool, Some(t)) => (t == "true" || t == "1") as u64,
        (Scalar::Bool, None) => 0,
        (s, Some(t)) if s.is_int() => {
            t.parse::<i64>()
                .map_err(|_| usage(format!("--arg {name}={t}: not an integer")))? as u64
        }
        (s, None) if s.is_int() => len as u64,
        (s, t) => {
            let v: f64 = match t {
                Some(t) => t
                    .parse()
                    .map_err(|_| usage(format!("--arg {name}={t}: not a number")))?,
                None => 1.0,
            };
            match s {
                Scalar::F16 => f16::from_f64(v).to_bits() as u64,
                Scalar::Bf16 => bf16::from_f64(v).to_bits() as u64,
                Scalar::F32 => (v as f32).to_bits() as u64,
                _ => v.to_bits(),
            }
        }
    };
    let mask = match ty.size_bytes() {
        Some(8) | None => u64::MAX,
        Some(b) => (1u64 << (8 * b)) - 1,
    };
    Ok(ScalarValue {
        ty,
        bits: bits & mask,
    })
}

/// The contents of one writable slice after a launch.
pub enum Values {
    /// Integer outputs, exactly.
    Int(Vec<i128>),
    /// Float outputs, widened to f64.
    Float(Vec<f64>),
}

fn values(device: &Device, b: &AnyBuffer) -> Result<Values, kiln_runtime::RuntimeError> {
    Ok(match b {
        AnyBuffer::U8(v) => Values::Int(device.download(v)?.iter().map(|x| *x as i128).collect()),
        AnyBuffer::U16(v) => Values::Int(device.download(v)?.iter().map(|x| *x as i128).collect()),
        AnyBuffer::U32(v) => Values::Int(device.download(v)?.iter().map(|x| *x as i128).collect()),
        AnyBuffer::U64(v) => Values::Int(device.download(v)?.iter().map(|x| *x as i128).collect()),
        AnyBuffer::I32(v) => Values::Int(device.download(v)?.iter().map(|x| *x as i128).collect()),
        AnyBuffer::I64(v) => Values::Int(device.download(v)?.iter().map(|x| *x as i128).collect()),
        AnyBuffer::F16(v) => {
            Values::Float(device.download(v)?.iter().map(|x| x.to_f64()).collect())
        }
        AnyBuffer::Bf16(v) => {
            Values::Float(device.download(v)?.iter().map(|x| x.to_f64()).collect())
        }
        AnyBuffer::F32(v) => Values::Float(device.download(v)?.iter().map(|x| *x as f64).collect()),
        AnyBuffer::F64(v) => Values::Float(device.download(v)?),
    })
}

/// A launch dimension written `X`, `XxY` or `XxYxZ`.
pub fn parse_dim(text: &str) -> Result<(u32, u32, u32), String> {
    let parts: Vec<u32> = text
        .split('x')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("`{text}`: write X, XxY or XxYxZ"))?;
    match parts[..] {
        [x] => Ok((x, 1, 1)),
        [x, y] => Ok((x, y, 1)),
        [x, y, z] => Ok((x, y, z)),
        _ => Err(format!("`{text}`: write X, XxY or XxYxZ")),
    }
}

/// The specialisation a request asks for: its comptime values, plus `extra` ones (NAME, value).
pub fn spec_for(req: &RunRequest<'_>, extra: &[(String, i64)]) -> Result<SpecBuilder, CliError> {
    let usage = |m: String| CliError {
        message: m,
        code: 2,
    };
    let def = find_kernel(req.kernel).map_err(usage)?;
    let ir = def.ir().map_err(|e| usage(e.to_string()))?;
    let mut pairs = Vec::new();
    for c in req.consts {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| usage(format!("`--const {c}`: write NAME=VALUE")))?;
        pairs.push((k.trim(), v.trim()));
    }
    let mut bindings = Bindings::parse_pairs(&ir, pairs).map_err(usage)?;
    for (name, value) in extra {
        bindings = bindings.with_const(name, *value as i128);
    }
    if let Some(d) = req.dtype {
        let dtype: Dtype = d.parse().map_err(usage)?;
        for g in &ir.generics {
            if let Generic::Type { name } = g {
                bindings = bindings.with_type(name, dtype);
            }
        }
    }
    Ok(SpecBuilder { def, bindings })
}

/// Random arguments for a kernel's parameters, reusable across launches.
pub struct Inputs {
    params: Vec<kiln_codegen::ir::Param>,
    buffers: Vec<Option<AnyBuffer>>,
    scalars: Vec<Option<ScalarValue>>,
}

impl Inputs {
    /// Fresh random buffers (`req.len` elements each, from `req.seed`) and the scalar arguments.
    pub fn random(kernel: &kiln_runtime::Kernel, req: &RunRequest<'_>) -> Result<Inputs, CliError> {
        let mut rng = Rng::new(req.seed);
        let params = kernel.program.kernel.params.clone();
        for a in req.args {
            let name = a.split_once('=').map(|(k, _)| k.trim()).unwrap_or(a);
            if !params
                .iter()
                .any(|p| p.name == name && matches!(p.ty, Ty::Scalar(_)))
            {
                let scalars: Vec<&str> = params
                    .iter()
                    .filter(|p| matches!(p.ty, Ty::Scalar(_)))
                    .map(|p| p.name.as_str())
                    .collect();
                return Err(CliError {
                    message: format!(
                        "`--arg {a}`: `{}` has no scalar parameter `{name}` (it has: {})",
                        kernel.name(),
                        scalars.join(", ")
                    ),
                    code: 2,
                });
            }
        }
        let mut buffers = Vec::new();
        let mut scalars = Vec::new();
        for p in &params {
            match &p.ty {
                Ty::Slice { elem, .. } => {
                    buffers.push(Some(random_buffer(
                        &kernel.device,
                        *elem,
                        req.len as usize,
                        &mut rng,
                    )?));
                    scalars.push(None);
                }
                Ty::Scalar(s) => {
                    buffers.push(None);
                    scalars.push(Some(scalar_arg(&p.name, *s, req.args, req.len)?));
                }
                _ => {
                    return Err(CliError {
                        message: format!("parameter `{}` cannot be given by `kiln run`", p.name),
                        code: 2,
                    })
                }
            }
        }
        Ok(Inputs {
            params,
            buffers,
            scalars,
        })
    }

    /// Launches `kernel` with these arguments (asynchronously on a GPU).
    pub fn launch(
        &mut self,
        kernel: &kiln_runtime::Kernel,
        cfg: &LaunchConfig,
    ) -> Result<(), kiln_runtime::RuntimeError> {
        let mut args: Vec<KernelArg<'_>> = Vec::new();
        for ((p, b), s) in self
            .params
            .iter()
            .zip(self.buffers.iter_mut())
            .zip(&self.scalars)
        {
            args.push(match (&p.ty, b, s) {
                (Ty::Slice { mutable: true, .. }, Some(b), _) => {
                    each_buffer!(b, v => v.kernel_arg_mut())
                }
                (_, Some(b), _) => each_buffer!(b, v => v.kernel_arg()),
                (_, None, Some(s)) => KernelArg::Scalar(*s),
                _ => KernelArg::Invalid(format!("no value for `{}`", p.name)),
            });
        }
        kernel.launch_args(cfg, &mut args)
    }

    /// Every writable slice's contents, by parameter name.
    pub fn outputs(
        &self,
        device: &Device,
    ) -> Result<Vec<(String, Values)>, kiln_runtime::RuntimeError> {
        let mut out = Vec::new();
        for (p, b) in self.params.iter().zip(&self.buffers) {
            if let (Ty::Slice { mutable: true, .. }, Some(b)) = (&p.ty, b) {
                out.push((p.name.clone(), values(device, b)?));
            }
        }
        Ok(out)
    }
}

/// Specialises, builds and launches the requested kernel on `device` with random inputs
/// drawn from the seed; returns every writable slice's contents afterwards, by parameter.
pub fn launch_random(
    req: &RunRequest<'_>,
    device: &Device,
) -> Result<Vec<(String, Values)>, CliError> {
    let failed = |e: kiln_runtime::RuntimeError| CliError {
        message: e.to_string(),
        code: 1,
    };
    let kernel = kiln_runtime::Kernel::build(&spec_for(req, &[])?, device).map_err(failed)?;
    let mut inputs = Inputs::random(&kernel, req)?;
    let cfg = LaunchConfig {
        grid: req.grid,
        block: req.block,
        dyn_shared_bytes: req.dyn_shared,
    };
    inputs.launch(&kernel, &cfg).map_err(failed)?;
    device.synchronize().map_err(failed)?;
    inputs.outputs(device).map_err(failed)
}

/// `kiln run`: launches on the chosen device and reports the first values written.
pub fn run(req: &RunRequest<'_>) -> Result<String, CliError> {
    let device = if req.emulate {
        Device::emulator()
    } else {
        Device::from_env().map_err(|e| CliError {
            message: e.to_string(),
            code: 1,
        })?
    };
    let start = std::time::Instant::now();
    let outputs = launch_random(req, &device)?;
    let secs = start.elapsed().as_secs_f64();
    let mut out = String::new();
    let _ = writeln!(out, "ran `{}` on the {}: grid {:?} x block {:?}, {} elements per slice, {secs:.3} s (including the build)", req.kernel, device.name(), req.grid, req.block, req.len);
    if !device.is_gpu() {
        let _ = writeln!(out, "emulator checks (bounds, races, barrier divergence, shuffles, uninitialised shared reads): clean");
    }
    for (name, v) in outputs {
        let head: Vec<String> = match &v {
            Values::Int(v) => v.iter().take(6).map(|x| x.to_string()).collect(),
            Values::Float(v) => v.iter().take(6).map(|x| format!("{x:.6}")).collect(),
        };
        let _ = writeln!(out, "  {name} = [{}, …]", head.join(", "));
    }
    Ok(out)
}
