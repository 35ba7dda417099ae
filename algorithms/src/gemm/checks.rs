//! The tile-layer GEMM against a float64 matmul, with tails in M, N and K.

use crate::gemm::{gemm, launch_config};
use kiln_runtime::Device;

use crate::verify::{ensure, rel_err, Real, Rng, VerifyError};

/// `C = A·B` on one shape (B row-major, or column-major with `b_col`) against float64.
pub fn gemm_case<T: Real>(
    dev: &Device,
    (m, n, k): (usize, usize, usize),
    b_col: bool,
    tile: (u32, u32),
    seed: u64,
) -> Result<(), VerifyError> {
    let mut rng = Rng::new(seed);
    let a: Vec<T> = rng.f32s(m * k).into_iter().map(T::from_f32).collect();
    let b: Vec<T> = rng.f32s(k * n).into_iter().map(T::from_f32).collect();
    let wide = |v: &[T]| -> Vec<f64> { v.iter().map(|x| x.to_f32() as f64).collect() };
    let (aw, bw) = (wide(&a), wide(&b));
    // b holds B (k × n) row-major, or Bᵀ (n × k) row-major when column-major
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
    let got: Vec<f64> = dev.download(&c)?.iter().map(|x| *x as f64).collect();
    let err = rel_err(&got, &want);
    // exact products, f32 accumulation: only summation order differs
    ensure!(
        err < 1e-5,
        "gemm {:?} {m}×{n}×{k} b_col={b_col} tile={tile:?}: relative error {err:.2e} (bound 1e-5)",
        T::DTYPE
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
