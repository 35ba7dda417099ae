//! The tile-layer GEMM against a float64 matmul, with tails in M, N and K.

use crate::gemm::hopper::WgmmaGemm;
use crate::gemm::{gemm, launch_config};
use kiln_runtime::Device;

use crate::verify::{ensure, rel_err, Real, Rng, VerifyError};

/// Random A (`m × k`) and B (`k × n` row-major, or stored `n × k` with `b_col`) of `T`, and
/// their product in float64.
fn operands<T: Real>(
    (m, n, k): (usize, usize, usize),
    b_col: bool,
    seed: u64,
) -> (Vec<T>, Vec<T>, Vec<f64>) {
    let mut rng = Rng::new(seed);
    let a: Vec<T> = rng.f32s(m * k).into_iter().map(T::from_f32).collect();
    let b: Vec<T> = rng.f32s(k * n).into_iter().map(T::from_f32).collect();
    let wide = |v: &[T]| -> Vec<f64> { v.iter().map(|x| x.to_f32() as f64).collect() };
    let (aw, bw) = (wide(&a), wide(&b));
    let b_at = |kk: usize, j: usize| {
        if b_col {
            bw[j * k + kk]
        } else {
            bw[kk * n + j]
        }
    };
    let mut want = vec![0.0f64; m * n];
    for i in 0..m {
        for kk in 0..k {
            let x = aw[i * k + kk];
            for j in 0..n {
                want[i * n + j] += x * b_at(kk, j);
            }
        }
    }
    (a, b, want)
}

/// Fails unless `c` is `want` up to f32 summation order (exact products, f32 accumulation).
fn expect_close(
    dev: &Device,
    c: &kiln_runtime::DeviceBuffer<f32>,
    want: &[f64],
    what: String,
) -> Result<(), VerifyError> {
    let got: Vec<f64> = dev.download(c)?.iter().map(|x| *x as f64).collect();
    let err = rel_err(&got, want);
    ensure!(err < 1e-5, "{what}: relative error {err:.2e} (bound 1e-5)");
    Ok(())
}

/// `C = A·B` on one shape (B row-major, or column-major with `b_col`) against float64.
pub fn gemm_case<T: Real>(
    dev: &Device,
    (m, n, k): (usize, usize, usize),
    b_col: bool,
    tile: (u32, u32),
    seed: u64,
) -> Result<(), VerifyError> {
    let (a, b, want) = operands::<T>((m, n, k), b_col, seed);
    let kernel = gemm::spec()
        .t(T::DTYPE)
        .b_col(b_col)
        .bm(tile.0)
        .bn(tile.1)
        .build(dev)?;
    let mut c = dev.upload(&vec![f32::NAN; m * n])?;
    let cfg = launch_config(m as u32, n as u32, tile);
    gemm::launch(
        &kernel,
        &cfg,
        &dev.upload(&a)?,
        &dev.upload(&b)?,
        &mut c,
        m as u32,
        n as u32,
        k as u32,
    )?;
    let what = format!(
        "gemm {:?} {m}×{n}×{k} b_col={b_col} tile={tile:?}",
        T::DTYPE
    );
    expect_close(dev, &c, &want, what)
}

/// The Hopper GEMM (`C = A·Bᵀ`, B stored `n × k`) on one shape against float64, called
/// twice on the same buffers (the second call reuses the cached tensor maps).
pub fn wgmma_case<T: Real>(
    dev: &Device,
    (m, n, k): (usize, usize, usize),
    seed: u64,
) -> Result<(), VerifyError> {
    let (a, b, want) = operands::<T>((m, n, k), true, seed);
    let gemm = WgmmaGemm::new(dev, T::DTYPE)?;
    let (a, b) = (dev.upload(&a)?, dev.upload(&b)?);
    for call in 0..2 {
        let mut c = dev.upload(&vec![f32::NAN; m * n])?;
        gemm.run(&a, &b, &mut c, m as u32, n as u32, k as u32)?;
        let what = format!("gemm_wgmma {:?} {m}×{n}×{k} call {call}", T::DTYPE);
        expect_close(dev, &c, &want, what)?;
    }
    Ok(())
}

/// The Hopper GEMM at a whole-tile shape and one with tails in M, N and K (zero-filled by the
/// copy engine, masked on store), bf16 and f16; bad shapes are refused. Passes without running
/// on a GPU that is not sm_90 (the kernel has no specialisation there).
pub fn wgmma_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    if !WgmmaGemm::supported(dev) {
        println!("gemm_wgmma: skipped, {} is not an sm_90 GPU", dev.name());
        return Ok(());
    }
    let (whole, tails) = if dev.is_gpu() {
        ((1024, 1024, 1024), (1000, 776, 1096))
    } else {
        ((128, 256, 128), (72, 264, 200))
    };
    wgmma_case::<half::bf16>(dev, whole, 41)?;
    wgmma_case::<half::bf16>(dev, tails, 42)?;
    wgmma_case::<half::f16>(dev, tails, 43)?;
    let gemm = WgmmaGemm::new(dev, half::bf16::DTYPE)?;
    let a = dev.upload(&vec![half::bf16::ONE; 64 * 60])?;
    let mut c = dev.zeros::<f32>(64 * 64)?;
    let refused = gemm.run(&a, &a, &mut c, 64, 64, 60);
    ensure!(
        refused.is_err(),
        "a k of 60 (rows of 120 bytes) must be refused"
    );
    Ok(())
}

/// Both B layouts, bf16 and f16, every block tile, shapes with tails in every dimension (multiples of 16
/// that are not multiples of the 128 × 128 × 32 tiles).
pub fn gemm_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    let shape = if dev.is_gpu() {
        (1040, 528, 784)
    } else {
        (144, 80, 208)
    };
    gemm_case::<half::bf16>(dev, shape, false, (128, 128), 31)?;
    gemm_case::<half::bf16>(dev, shape, true, (128, 64), 32)?;
    gemm_case::<half::f16>(dev, shape, false, (64, 64), 33)?;
    gemm_case::<half::f16>(dev, shape, true, (64, 128), 34)
}
