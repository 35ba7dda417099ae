//! Tensor-core GEMM written in Kiln (`corpus::tensor::gemm_tiled`, bf16 in, f32 out) at
//! 2048³, 4096³ and 8192³: TFLOP/s and % of the card's measured `mma.sync` rate, with a
//! spot check of the result against a float64 dot product. cuBLAS as a baseline comes with
//! the tile-layer issue. Run: `cargo bench --bench gemm` (needs a GPU).

mod support;

use half::bf16;
use kiln::codegen::Dtype;
use kiln::corpus::tensor::gemm_tiled;
use kiln::runtime::{time, LaunchConfig};
use kiln::verify::Rng;
use support::{gpu, report, Roof, Row};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dev) = gpu() else { return Ok(()) };
    let kernel = gemm_tiled::spec().t(Dtype::Bf16).build(&dev)?;
    let mut rows = Vec::new();
    for size in [2048usize, 4096, 8192] {
        let (m, n, k) = (size, size, size);
        let mut rng = Rng::new(size as u64);
        let a: Vec<bf16> = rng.f32s(m * k).into_iter().map(bf16::from_f32).collect();
        let b: Vec<bf16> = rng.f32s(k * n).into_iter().map(bf16::from_f32).collect();
        let (da, db) = (dev.upload(&a)?, dev.upload(&b)?);
        let mut c = dev.zeros::<f32>(m * n)?;
        let cfg = LaunchConfig {
            grid: ((n / 64) as u32, (m / 32) as u32, 1),
            block: (128, 1, 1),
            dyn_shared_bytes: 0,
        };
        let t = time(&dev, 3, 10, || {
            gemm_tiled::launch(
                &kernel, &cfg, &da, &db, &mut c, m as u32, n as u32, k as u32,
            )
        })?;
        let got = dev.download(&c)?;
        for s in 0..16 {
            let (i, j) = ((s * 977) % m, (s * 1373) % n);
            let want: f64 = (0..k)
                .map(|p| a[i * k + p].to_f64() * b[p * n + j].to_f64())
                .sum();
            let err = (got[i * n + j] as f64 - want).abs() / want.abs().max(1.0);
            assert!(
                err < 1e-3,
                "C[{i}][{j}] = {} but the float64 product is {want}",
                got[i * n + j]
            );
        }
        let flops = 2.0 * (m * n * k) as f64;
        rows.push(Row {
            name: format!("kiln gemm_tiled<bf16> {size}^3"),
            work: flops,
            median_ms: t.median_ms,
            rate: flops / (t.median_ms * 1e-3) / 1e12,
            vs: None,
            roof: Roof::TensorCores,
        });
    }
    report("gemm", &dev, &rows);
    Ok(())
}
