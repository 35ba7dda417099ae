//! Bandwidth of Kiln kernels against the card's own copy engines, in the same process:
//! a DSL copy and a DSL sum-reduction vs a device-to-device `memcpy` (1 GiB), and a DSL
//! kernel reading mapped pinned host memory vs a pinned host-to-device `memcpy`.
//! Run: `cargo bench --bench bandwidth` (needs a GPU).

mod support;

use kiln::codegen::Dtype;
use kiln::corpus::bandwidth::{stream_copy, stream_sum};
use kiln::runtime::{time, tune, DeviceBuffer, LaunchConfig};
use support::{gpu, report, Roof, Row};

const WARMUP: usize = 5;
const REPS: usize = 30;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dev) = gpu() else { return Ok(()) };
    let g = dev.as_gpu().expect("gpu");
    let n: usize = 1 << 28; // 1 GiB of f32
    let bytes = (n * 4) as f64;
    let x: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32) * 1e-3).collect();
    let dx = dev.upload(&x)?;
    let mut dy = dev.zeros::<f32>(n)?;
    let cfg = LaunchConfig::linear(dev.multiprocessors() * 8, 256);

    let mut dz = dev.zeros::<f32>(n)?;
    let (DeviceBuffer::Cuda(sx), DeviceBuffer::Cuda(sz)) = (&dx, &mut dz) else {
        unreachable!("GPU buffers")
    };
    let memcpy = time(&dev, WARMUP, REPS, || {
        g.stream
            .memcpy_dtod(sx, sz)
            .map_err(kiln::runtime::error::driver)
    })?;
    let memcpy_gbs = memcpy.gb_per_s(2.0 * bytes);

    // the launch shape is the only knob: the autotuner searches it (or reuses its store)
    let spec = stream_copy::spec().t(Dtype::F32);
    let copy = spec.build(&dev)?;
    let key = kiln::tuning::key(&spec, &dev, n as u64);
    let quiet = tune::TuneOptions {
        progress: false,
        force: false,
    };
    let store = tune::Store::default_location();
    let entry = tune::tune(
        &key,
        &kiln::tuning::launch_space(),
        &store,
        &quiet,
        |_| Ok(()),
        |p, _| {
            let c = kiln::tuning::launch_config(&dev, p);
            let t = time(&dev, 3, 10, || {
                stream_copy::launch(&copy, &c, &dx, &mut dy, n as u32)
            })
            .map_err(|e| e.to_string())?;
            Ok((t.median_ms, None::<()>))
        },
        |_, _| Ok(()),
    )?;
    print!("{}", tune::table(&entry));
    let cfg_copy = kiln::tuning::launch_config(&dev, &entry.winner);
    let copy_t = time(&dev, WARMUP, REPS, || {
        stream_copy::launch(&copy, &cfg_copy, &dx, &mut dy, n as u32)
    })?;
    assert_eq!(dev.download(&dy)?[..1000], x[..1000], "copy result");
    let copy_gbs = copy_t.gb_per_s(2.0 * bytes);

    let sum = stream_sum::spec().build(&dev)?;
    let mut total = dev.zeros::<f32>(1)?;
    let sum_t = time(&dev, WARMUP, REPS, || {
        stream_sum::launch(&sum, &cfg, &dx, &mut total, n as u32)
    })?;
    let sum_gbs = sum_t.gb_per_s(bytes);

    // host memory: pinned H2D memcpy vs a kernel reading mapped memory directly
    let hn: usize = 1 << 28;
    let mut pinned = unsafe { g.ctx.alloc_pinned_with_flags::<f32>(hn, 0) }?;
    pinned.as_mut_slice()?.copy_from_slice(&x[..hn]);
    let h2d = time(&dev, 2, 10, || {
        g.stream
            .memcpy_htod(&pinned, sz)
            .map_err(kiln::runtime::error::driver)
    })?;
    let h2d_gbs = h2d.gb_per_s((hn * 4) as f64);
    let mut mapped = dev.mapped::<f32>(hn)?;
    mapped.copy_from_slice(&x[..hn]);
    let mapped_t = time(&dev, 2, 10, || {
        stream_sum::launch(&sum, &cfg, &mapped, &mut total, hn as u32)
    })?;
    let mapped_gbs = mapped_t.gb_per_s((hn * 4) as f64);

    let rows = vec![
        Row {
            name: "memcpy device->device".into(),
            work: 2.0 * bytes,
            median_ms: memcpy.median_ms,
            rate: memcpy_gbs,
            vs: None,
            roof: Roof::DeviceMemory,
        },
        Row {
            name: format!(
                "kiln stream_copy<f32> {}x{}",
                cfg_copy.grid.0, cfg_copy.block.0
            ),
            work: 2.0 * bytes,
            median_ms: copy_t.median_ms,
            rate: copy_gbs,
            vs: Some(("memcpy d2d".into(), copy_gbs / memcpy_gbs)),
            roof: Roof::DeviceMemory,
        },
        Row {
            name: "kiln stream_sum (device memory)".into(),
            work: bytes,
            median_ms: sum_t.median_ms,
            rate: sum_gbs,
            vs: Some(("memcpy d2d".into(), sum_gbs / memcpy_gbs)),
            roof: Roof::DeviceMemory,
        },
        Row {
            name: "memcpy pinned host->device".into(),
            work: (hn * 4) as f64,
            median_ms: h2d.median_ms,
            rate: h2d_gbs,
            vs: None,
            roof: Roof::HostLink,
        },
        Row {
            name: "kiln stream_sum (mapped host)".into(),
            work: (hn * 4) as f64,
            median_ms: mapped_t.median_ms,
            rate: mapped_gbs,
            vs: Some(("memcpy h2d".into(), mapped_gbs / h2d_gbs)),
            roof: Roof::HostLink,
        },
    ];
    report("bandwidth", &dev, &rows);
    Ok(())
}
