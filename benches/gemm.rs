//! Tensor-core GEMMs written in Kiln (the tile layer on mma.sync, and on sm_90 the Hopper GEMM on
//! wgmma + TMA, with its variants and at MoE-like skinny shapes) against cuBLAS, in the same process, on the same stream and
//! with the same timing (CUDA events, warm-up, median): bf16 in, f32 accumulation and result,
//! row-major A and C, at 2048³, 4096³ and 8192³, with B row-major and B column-major (Bᵀ
//! stored, as a linear layer's weight). Each row gives the median time, TFLOP/s, % of the card's
//! measured `mma.sync` rate, and ours relative to cuBLAS. Before timing, each shape's results
//! are checked: ours at 16 points against a float64 dot product, cuBLAS (both layouts) against
//! ours by relative norm error. Writes `gemm-<device>.json` and a TFLOP/s plot
//! `gemm-<device>.svg`. Run: `cargo bench --bench gemm` (needs a GPU; cuBLAS is found like
//! NVRTC, see `kiln_runtime::locate::CUBLAS`; without it the baseline is left out, and
//! `KILN_REQUIRE_CUBLAS=1` then makes the bench fail after timing ours).

mod support;

use half::bf16;
use kiln::algorithms::verify::Rng;
use kiln::codegen::Dtype;
use kiln::runtime::blas::{Blas, Layout};
use kiln::runtime::tune::Store;
use kiln::runtime::{time, Device, DeviceBuffer, RuntimeError};
use kiln_algorithms::gemm::hopper::{Variant, WgmmaGemm};
use kiln_algorithms::gemm::Gemm;
use support::plot::{plot_series_with, PlotOptions};
use support::{gpu, report_with, results_path, Roof, Row};

const SIZES: [usize; 3] = [2048, 4096, 8192];
/// MoE-like skinny shapes (m tokens, n, k): the Hopper GEMM and cuBLAS only, B column-major.
const SKINNY: [(usize, usize, usize); 6] = [
    (256, 4096, 4096),
    (1024, 4096, 4096),
    (4096, 4096, 4096),
    (2048, 14336, 4096),
    (4096, 14336, 4096),
    (4096, 4096, 14336),
];
/// Row label of the Hopper GEMM.
const WGMMA_NAME: &str = "kiln wgmma gemm<bf16>";
const LAYOUTS: [Layout; 2] = [Layout::RowMajor, Layout::ColMajor];
const WARMUP: usize = 5;
const REPS: usize = 20;
/// cuBLAS and ours both accumulate in f32 from the same bf16 inputs and differ only in summation
/// order (about 1e-6); a wrong layout or a missed tile gives errors near 1.
const MAX_REL_NORM_ERR: f64 = 1e-3;

/// The Kiln GEMM under test: the tile layer's `gemm` through its host driver, which uses the
/// block tile the autotuner stored for the shape (run `cargo bench --bench autotune` first),
/// else its default. It must support row-major B at every size in `SIZES` (the reference
/// result of each shape comes from that); other layouts are timed where `supports` says so,
/// after a check against the row-major result.
struct Ours {
    gemm: Gemm,
}

impl Ours {
    /// Row label.
    const NAME: &'static str = "kiln tile gemm<bf16>";

    fn new(dev: &Device) -> Result<Ours, RuntimeError> {
        Ok(Ours {
            gemm: Gemm::new(dev, Dtype::Bf16, Store::default_location()),
        })
    }

    /// Whether it computes this shape with B stored as `layout` (any layout, sizes that are
    /// multiples of 16).
    fn supports(m: usize, n: usize, k: usize, _layout: Layout) -> bool {
        [m, n, k].iter().all(|s| s.is_multiple_of(16))
    }

    /// Enqueues row-major `C (m×n, f32) = A (m×k) · B (k×n, stored as `layout`)` on the
    /// device's stream.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        a: &DeviceBuffer<bf16>,
        b: &DeviceBuffer<bf16>,
        c: &mut DeviceBuffer<f32>,
        m: usize,
        n: usize,
        k: usize,
        layout: Layout,
    ) -> Result<(), RuntimeError> {
        let b_col = layout == Layout::ColMajor;
        let (m, n, k) = (m as u32, n as u32, k as u32);
        // the tile layer's tuned tile, named so that `Gemm` does not route to the Hopper GEMM
        let tile = self.gemm.tile_for(m, n, k, b_col);
        Ok(self.gemm.run(a, b, c, m, n, k, b_col, Some(tile))?)
    }
}

/// ‖got − want‖₂ / ‖want‖₂.
fn rel_norm_err(got: &[f32], want: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        let (g, w) = (g as f64, w as f64);
        diff += (g - w) * (g - w);
        norm += w * w;
    }
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// Checks the Hopper GEMM against `want` (the row-major-B result of the same product), times
/// it and adds its row (vs cuBLAS's time `blas_ms`); returns its TFLOP/s.
#[allow(clippy::too_many_arguments)]
fn time_wgmma(
    dev: &Device,
    (name, wg): (&str, &WgmmaGemm),
    (a, b): (&DeviceBuffer<bf16>, &DeviceBuffer<bf16>),
    (m, n, k): (usize, usize, usize),
    want: &[f32],
    blas_ms: Option<f64>,
    label: &str,
    rows: &mut Vec<Row>,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut c = dev.zeros::<f32>(m * n)?;
    let (m32, n32, k32) = (m as u32, n as u32, k as u32);
    wg.run(a, b, &mut c, m32, n32, k32)?;
    let err = rel_norm_err(&dev.download(&c)?, want);
    println!("check {label}: {name} vs the reference result: relative norm error {err:.2e}");
    if err.is_nan() || err > MAX_REL_NORM_ERR {
        return Err(format!("{label}: {name} differs by {err:.2e}").into());
    }
    let t = time(dev, WARMUP, REPS, || wg.run(a, b, &mut c, m32, n32, k32))?;
    let flops = 2.0 * (m * n * k) as f64;
    let rate = tflops(flops, t.median_ms);
    rows.push(Row {
        name: format!("{name} {label}"),
        work: flops,
        median_ms: t.median_ms,
        rate,
        vs: blas_ms.map(|b| (format!("cublas {label}"), b / t.median_ms)),
        roof: Roof::TensorCores,
    });
    Ok(rate)
}

/// One shape, B column-major: cuBLAS (whose result is the reference) and each named Hopper
/// GEMM in `gemms`.
fn against_cublas(
    dev: &Device,
    gemms: &[(String, WgmmaGemm)],
    blas: Option<&Blas>,
    (m, n, k): (usize, usize, usize),
    rows: &mut Vec<Row>,
) -> Result<(), Box<dyn std::error::Error>> {
    let Some(blas) = blas else {
        println!("{m}x{n}x{k}: no cuBLAS to check against, skipped");
        return Ok(());
    };
    let mut rng = Rng::new((m * 31 + n * 7 + k) as u64);
    let a: Vec<bf16> = rng.f32s(m * k).into_iter().map(bf16::from_f32).collect();
    let b: Vec<bf16> = rng.f32s(n * k).into_iter().map(bf16::from_f32).collect();
    let (da, db) = (dev.upload(&a)?, dev.upload(&b)?);
    let mut c = dev.zeros::<f32>(m * n)?;
    blas.gemm_bf16(&da, &db, &mut c, m, n, k, Layout::ColMajor)?;
    let want = dev.download(&c)?;
    let t = time(dev, WARMUP, REPS, || {
        Ok(blas.gemm_bf16(&da, &db, &mut c, m, n, k, Layout::ColMajor)?)
    })?;
    let label = format!("{m}x{n}x{k} col-major B");
    let flops = 2.0 * (m * n * k) as f64;
    rows.push(Row {
        name: format!("cublas bf16 {label}"),
        work: flops,
        median_ms: t.median_ms,
        rate: tflops(flops, t.median_ms),
        vs: None,
        roof: Roof::TensorCores,
    });
    for (name, wg) in gemms {
        let ours = (name.as_str(), wg);
        time_wgmma(
            dev,
            ours,
            (&da, &db),
            (m, n, k),
            &want,
            Some(t.median_ms),
            &label,
            rows,
        )?;
    }
    Ok(())
}

fn tflops(flops: f64, ms: f64) -> f64 {
    flops / (ms * 1e-3) / 1e12
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dev) = gpu() else { return Ok(()) };
    let ours = Ours::new(&dev)?;
    let require_cublas = std::env::var("KILN_REQUIRE_CUBLAS").is_ok_and(|v| v.trim() == "1");
    let (blas, blas_error) = match Blas::new(&dev) {
        Ok(b) => {
            println!(
                "cuBLAS {} from {}",
                b.version_string(),
                b.library().display()
            );
            (Some(b), None)
        }
        Err(e) => {
            println!("cuBLAS is not available, so the baseline is left out:\n{e}");
            (None, Some(e))
        }
    };
    let wgmma = match WgmmaGemm::supported(&dev) {
        true => {
            let wg = WgmmaGemm::new(&dev, Dtype::Bf16)?;
            if let Some((regs, smem)) = wg.resources() {
                println!("{WGMMA_NAME}: {regs} registers per thread at entry, {smem} bytes of static shared memory");
            }
            Some(wg)
        }
        false => {
            println!("{WGMMA_NAME}: needs sm_90, not timed on {}", dev.name());
            None
        }
    };
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    // (series name, (size, TFLOP/s)) for the plot
    let mut curves: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut curve =
        |name: String, size: usize, rate: f64| match curves.iter_mut().find(|(n, _)| *n == name) {
            Some((_, pts)) => pts.push((size as f64, rate)),
            None => curves.push((name, vec![(size as f64, rate)])),
        };
    for size in SIZES {
        let (m, n, k) = (size, size, size);
        let flops = 2.0 * (m * n * k) as f64;
        let mut rng = Rng::new(size as u64);
        let a: Vec<bf16> = rng.f32s(m * k).into_iter().map(bf16::from_f32).collect();
        // B[p][j] row-major (k×n), and the same matrix column-major (n×k row-major)
        let b_row: Vec<bf16> = rng.f32s(k * n).into_iter().map(bf16::from_f32).collect();
        let mut b_col = vec![bf16::ZERO; k * n];
        for p in 0..k {
            for j in 0..n {
                b_col[j * k + p] = b_row[p * n + j];
            }
        }
        let da = dev.upload(&a)?;
        let db_row = dev.upload(&b_row)?;
        let db_col = dev.upload(&b_col)?;
        let b_of = |layout: Layout| match layout {
            Layout::RowMajor => &db_row,
            Layout::ColMajor => &db_col,
        };
        let mut c_ours = dev.zeros::<f32>(m * n)?;
        let mut c_blas = dev.zeros::<f32>(m * n)?;

        // correctness first: ours against float64 at a few points, cuBLAS against ours
        ours.run(&da, &db_row, &mut c_ours, m, n, k, Layout::RowMajor)?;
        let want = dev.download(&c_ours)?;
        for s in 0..16 {
            let (i, j) = ((s * 977) % m, (s * 1373) % n);
            let exact: f64 = (0..k)
                .map(|p| a[i * k + p].to_f64() * b_row[p * n + j].to_f64())
                .sum();
            let err = (want[i * n + j] as f64 - exact).abs() / exact.abs().max(1.0);
            if err >= 1e-3 {
                return Err(format!(
                    "{} {size}^3: C[{i}][{j}] = {} but the float64 product is {exact}",
                    Ours::NAME,
                    want[i * n + j]
                )
                .into());
            }
        }

        for layout in LAYOUTS {
            let label = format!("{size}^3 {}", layout.label());
            let blas_t = match &blas {
                Some(blas) => {
                    blas.gemm_bf16(&da, b_of(layout), &mut c_blas, m, n, k, layout)?;
                    let err = rel_norm_err(&dev.download(&c_blas)?, &want);
                    println!(
                        "check {label}: cuBLAS vs {}: relative norm error {err:.2e}",
                        Ours::NAME
                    );
                    checks.push(
                        serde_json::json!({ "shape": label, "cublas_vs_ours_rel_norm_err": err }),
                    );
                    if err.is_nan() || err > MAX_REL_NORM_ERR {
                        return Err(format!(
                            "{label}: cuBLAS and {} differ by {err:.2e} (relative norm), more than {MAX_REL_NORM_ERR:.0e}",
                            Ours::NAME
                        )
                        .into());
                    }
                    let t = time(&dev, WARMUP, REPS, || {
                        Ok(blas.gemm_bf16(&da, b_of(layout), &mut c_blas, m, n, k, layout)?)
                    })?;
                    let rate = tflops(flops, t.median_ms);
                    rows.push(Row {
                        name: format!("cublas bf16 {label}"),
                        work: flops,
                        median_ms: t.median_ms,
                        rate,
                        vs: None,
                        roof: Roof::TensorCores,
                    });
                    curve(format!("cuBLAS, {}", layout.label()), size, rate);
                    Some(t.median_ms)
                }
                None => None,
            };
            if !Ours::supports(m, n, k, layout) {
                println!(
                    "{} {label}: not supported, only cuBLAS is timed",
                    Ours::NAME
                );
                continue;
            }
            if layout != Layout::RowMajor {
                // `want` came from row-major B: check this layout's result against it too
                ours.run(&da, b_of(layout), &mut c_ours, m, n, k, layout)?;
                let err = rel_norm_err(&dev.download(&c_ours)?, &want);
                println!(
                    "check {label}: {} vs row-major B: relative norm error {err:.2e}",
                    Ours::NAME
                );
                if err.is_nan() || err > MAX_REL_NORM_ERR {
                    return Err(format!(
                        "{label}: {} differs from its row-major-B result by {err:.2e}",
                        Ours::NAME
                    )
                    .into());
                }
            }
            let t = time(&dev, WARMUP, REPS, || {
                ours.run(&da, b_of(layout), &mut c_ours, m, n, k, layout)
            })?;
            let rate = tflops(flops, t.median_ms);
            rows.push(Row {
                name: format!("{} {label}", Ours::NAME),
                work: flops,
                median_ms: t.median_ms,
                rate,
                vs: blas_t.map(|b| (format!("cublas {label}"), b / t.median_ms)),
                roof: Roof::TensorCores,
            });
            curve(format!("{}, {}", Ours::NAME, layout.label()), size, rate);
            if let (Layout::ColMajor, Some(wg)) = (layout, &wgmma) {
                let rate = time_wgmma(
                    &dev,
                    (WGMMA_NAME, wg),
                    (&da, b_of(layout)),
                    (m, n, k),
                    &want,
                    blas_t,
                    &label,
                    &mut rows,
                )?;
                curve(format!("{WGMMA_NAME}, {}", layout.label()), size, rate);
            }
        }
    }
    if let Some(wg) = wgmma {
        let default = [(WGMMA_NAME.to_string(), wg)];
        for (m, n, k) in SKINNY {
            against_cublas(&dev, &default, blas.as_ref(), (m, n, k), &mut rows)?;
        }
        // the compiled variants (ring depth, launch-order group) at the square shapes
        let mut variants = Vec::new();
        for stages in [3, 4] {
            for group in [1, 8, 16] {
                let v = Variant { stages, group };
                let name = format!("{WGMMA_NAME} {v:?}");
                variants.push((name, WgmmaGemm::with_variant(&dev, Dtype::Bf16, v)?));
            }
        }
        for size in [4096, 8192] {
            against_cublas(
                &dev,
                &variants,
                blas.as_ref(),
                (size, size, size),
                &mut rows,
            )?;
        }
    }
    let extra = serde_json::json!({
        "ours": Ours::NAME,
        "cublas": blas.as_ref().map(|b| serde_json::json!({
            "version": b.version_string(), "library": b.library().display().to_string(),
        })),
        "warmup": WARMUP,
        "reps": REPS,
        "checks": checks,
    });
    report_with("gemm", &dev, &rows, extra);
    let svg = results_path("gemm", &dev, "svg");
    let axes = PlotOptions {
        log_x: true,
        log_y: false,
    };
    match plot_series_with(
        &svg,
        &format!("bf16 GEMM (f32 accumulate) on {}", dev.name()),
        "m = n = k",
        "TFLOP/s",
        &curves,
        axes,
    ) {
        Ok(()) => println!("wrote {}", svg.display()),
        Err(e) => println!("could not plot: {e}"),
    }
    match blas_error {
        Some(e) if require_cublas => Err(format!("KILN_REQUIRE_CUBLAS=1: {e}").into()),
        _ => Ok(()),
    }
}
