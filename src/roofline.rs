//! `kiln roofline`: the present card's measured ceilings — device copy and pinned host link
//! bandwidth (`kiln_runtime::roofline`) and the `mma.sync` bf16 rate of a Kiln kernel
//! (`corpus::tensor::mma_throughput`) — stored for the benches' "% of roofline" column.

use kiln_codegen::Dtype;
use kiln_runtime::roofline::Roofline;
use kiln_runtime::{time, Device, LaunchConfig, RuntimeError};

use crate::corpus::tensor::mma_throughput;

/// Rounds of four `mma`s per warp in the rate measurement.
const ITERS: u32 = 16384;

/// The bf16 `mma.sync` rate of `device` in TFLOP/s: four independent accumulators per warp,
/// 8 warps per block, 4 blocks per multiprocessor, median of 10 runs after 3 warm-ups.
pub fn mma_bf16_tflops(device: &Device) -> Result<f64, RuntimeError> {
    let kernel = mma_throughput::spec().t(Dtype::Bf16).build(device)?;
    let cfg = LaunchConfig::linear(device.multiprocessors() * 4, 256);
    let mut out = device.zeros::<f32>((cfg.blocks() * cfg.threads_per_block() * 4) as usize)?;
    let t = time(device, 3, 10, || {
        mma_throughput::launch(&kernel, &cfg, &mut out, ITERS)
    })?;
    let warps = cfg.blocks() * cfg.threads_per_block() / 32;
    let flops = warps as f64 * ITERS as f64 * 4.0 * (2.0 * 16.0 * 8.0 * 16.0);
    Ok(flops / (t.median_ms * 1e-3) / 1e12)
}

/// Measures every ceiling of `device` (a GPU) and stores them.
pub fn measure(device: &Device) -> Result<Roofline, RuntimeError> {
    let mut roofline = Roofline::measure(device)?;
    roofline.mma_bf16_tflops = Some(mma_bf16_tflops(device)?);
    roofline.save()?;
    Ok(roofline)
}
