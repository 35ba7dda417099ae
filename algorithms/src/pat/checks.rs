//! The decoder's element-wise kernels against float64: the residual add fused with RMSNorm
//! (with and without the add, a row width that leaves threads idle), rotary embeddings at
//! large positions, and the SwiGLU gate. Inputs random, outputs poisoned.

use super::kernels::{add_rms_norm, rope, swiglu, NORM_THREADS};
use crate::verify::{ensure, random_real, rel_err, widen, Real, Rng, VerifyError};
use kiln_runtime::{Device, LaunchConfig};

fn grid(blocks: u32, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid: (blocks, 1, 1),
        block: (threads, 1, 1),
        dyn_shared_bytes: 0,
    }
}

fn tolerance<T: Real>() -> f64 {
    if T::DTYPE == kiln_codegen::Dtype::Bf16 {
        1e-2
    } else {
        2e-3
    }
}

fn norm_case<T: Real>(dev: &Device, add: bool, seed: u64) -> Result<(), VerifyError> {
    let (tokens, h, eps) = (5usize, 2056usize, 1e-5f32);
    let mut rng = Rng::new(seed);
    let x = random_real::<T>(&mut rng, tokens * h, 2.0);
    let r0 = random_real::<T>(&mut rng, tokens * h, 3.0);
    let w = random_real::<T>(&mut rng, h, 1.0);
    let kernel = add_rms_norm::spec().t(T::DTYPE).build(dev)?;
    let (xd, wd) = (dev.upload(&x)?, dev.upload(&w)?);
    let mut rd = dev.upload(&r0)?;
    let mut yd = dev.upload(&vec![T::NAN; tokens * h])?;
    add_rms_norm::launch(
        &kernel,
        &grid(tokens as u32, NORM_THREADS),
        &xd,
        &mut rd,
        &wd,
        &mut yd,
        h as u32,
        eps,
        add,
    )?;
    let (xf, rf, wf) = (widen(&x), widen(&r0), widen(&w));
    let round = |v: f64| T::from_f32(v as f32).to_f32() as f64;
    let (mut want_r, mut want_y) = (Vec::new(), Vec::new());
    for t in 0..tokens {
        let row: Vec<f64> = (0..h)
            .map(|i| {
                let v = rf[t * h + i] + if add { xf[t * h + i] } else { 0.0 };
                if add {
                    round(v)
                } else {
                    v
                }
            })
            .collect();
        let ms = row.iter().map(|v| v * v).sum::<f64>() / h as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        want_y.extend(row.iter().zip(&wf).map(|(v, g)| v * inv * g));
        want_r.extend(row);
    }
    let e = rel_err(&widen(&dev.download(&yd)?), &want_y);
    ensure!(e < tolerance::<T>(), "rms norm (add {add}) error {e:.2e}");
    let e = rel_err(&widen(&dev.download(&rd)?), &want_r);
    ensure!(e < 1e-6, "residual (add {add}) error {e:.2e}");
    Ok(())
}

fn rope_case<T: Real>(dev: &Device, d: usize, seed: u64) -> Result<(), VerifyError> {
    let (tokens, heads, base) = (7usize, 3usize, 500_000f32);
    let mut rng = Rng::new(seed);
    let x = random_real::<T>(&mut rng, tokens * heads * d, 1.0);
    let pos: Vec<u32> = (0..tokens).map(|_| rng.u32() % 5000).collect();
    let kernel = rope::spec().t(T::DTYPE).d(d as u32).build(dev)?;
    let mut xd = dev.upload(&x)?;
    let pairs = (tokens * heads * d / 2) as u32;
    rope::launch(
        &kernel,
        &grid(pairs.div_ceil(256), 256),
        &mut xd,
        &dev.upload(&pos)?,
        tokens as u32,
        heads as u32,
        base,
    )?;
    let xf = widen(&x);
    let mut want = xf.clone();
    for (t, &p) in pos.iter().enumerate() {
        for hh in 0..heads {
            let row = (t * heads + hh) * d;
            for i in 0..d / 2 {
                let angle = p as f64 * (base as f64).powf(-2.0 * i as f64 / d as f64);
                let (a, b) = (xf[row + i], xf[row + i + d / 2]);
                want[row + i] = a * angle.cos() - b * angle.sin();
                want[row + i + d / 2] = a * angle.sin() + b * angle.cos();
            }
        }
    }
    let e = rel_err(&widen(&dev.download(&xd)?), &want);
    // the angle is rounded to f32 before sin/cos: positions of thousands cost ~1e-4 radians
    ensure!(e < tolerance::<T>() + 1e-3, "rope error {e:.2e}");
    Ok(())
}

fn swiglu_case<T: Real>(dev: &Device, seed: u64) -> Result<(), VerifyError> {
    let (tokens, f) = (9usize, 40usize);
    let mut rng = Rng::new(seed);
    let gu = random_real::<T>(&mut rng, tokens * 2 * f, 3.0);
    let kernel = swiglu::spec().t(T::DTYPE).build(dev)?;
    let mut out = dev.upload(&vec![T::NAN; tokens * f])?;
    swiglu::launch(
        &kernel,
        &grid(((tokens * f) as u32).div_ceil(256), 256),
        &dev.upload(&gu)?,
        &mut out,
        tokens as u32,
        f as u32,
    )?;
    let g = widen(&gu);
    let want: Vec<f64> = (0..tokens * f)
        .map(|i| {
            let (t, j) = (i / f, i % f);
            let (a, u) = (g[t * 2 * f + j], g[t * 2 * f + f + j]);
            a / (1.0 + (-a).exp()) * u
        })
        .collect();
    let e = rel_err(&widen(&dev.download(&out)?), &want);
    ensure!(e < tolerance::<T>(), "swiglu error {e:.2e}");
    Ok(())
}

/// Every decoder kernel against its reference, bf16 and f16.
pub fn decoder_kernels_match_reference(dev: &Device) -> Result<(), VerifyError> {
    norm_case::<half::bf16>(dev, true, 31)?;
    norm_case::<half::f16>(dev, false, 32)?;
    rope_case::<half::bf16>(dev, 128, 33)?;
    rope_case::<half::f16>(dev, 64, 34)?;
    swiglu_case::<half::bf16>(dev, 35)?;
    swiglu_case::<half::f16>(dev, 36)
}
