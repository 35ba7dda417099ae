//! Runs each corpus kernel on a device on fresh random inputs and compares it with a
//! plain-Rust reference: integers exactly, floats by relative norm error against a float64
//! reference with dtype-fitting tolerances. Outputs are poisoned before each launch so an
//! unwritten element is caught. Used by the tests (`tests/corpus_run.rs`) and `kiln demo`.

use half::{bf16, f16};
use kiln_codegen::Dtype;
use kiln_runtime::{Device, LaunchConfig};

use super::{bandwidth, basics, memory, reductions, sorting, tensor};
use kiln_algorithms::verify::{ensure, ensure_eq, rel_err, Check, Real, Rng, VerifyError};

const POISON_F32: f32 = f32::NAN;

/// vector_add: the kernel against its reference, for f32, bf16 and f16. The kernel adds in
/// f32 and rounds once, so every element must equal the reference exactly.
pub fn vector_add_all_dtypes(dev: &Device) -> Result<(), VerifyError> {
    vector_add_as::<f32>(dev)?;
    vector_add_as::<bf16>(dev)?;
    vector_add_as::<f16>(dev)
}

fn vector_add_as<T: Real>(dev: &Device) -> Result<(), VerifyError> {
    let n = 100_003usize;
    let mut rng = Rng::new(1);
    let a: Vec<T> = rng.f32s(n).into_iter().map(T::from_f32).collect();
    let b: Vec<T> = rng.f32s(n).into_iter().map(T::from_f32).collect();
    let k = basics::vector_add::spec().t(T::DTYPE).build(dev)?;
    let mut out = dev.upload(&vec![T::NAN; n])?;
    basics::vector_add::launch(
        &k,
        &LaunchConfig::for_elements(n as u32, 256),
        &dev.upload(&a)?,
        &dev.upload(&b)?,
        &mut out,
        n as u32,
    )?;
    let got = dev.download(&out)?;
    for i in 0..n {
        ensure_eq!(
            got[i],
            T::from_f32(a[i].to_f32() + b[i].to_f32()),
            "{} element {i}",
            T::DTYPE
        );
    }
    Ok(())
}

/// saxpy: the kernel against its reference.
pub fn saxpy_grid_stride(dev: &Device) -> Result<(), VerifyError> {
    let n = 1_000_000usize;
    let mut rng = Rng::new(2);
    let (x, y) = (rng.f32s(n), rng.f32s(n));
    let k = basics::saxpy::spec().build(dev)?;
    let mut dy = dev.upload(&y)?;
    basics::saxpy::launch(
        &k,
        &LaunchConfig::linear(120, 256),
        0.75f32,
        &dev.upload(&x)?,
        &mut dy,
        n as u32,
    )?;
    let got = dev.download(&dy)?;
    for i in 0..n {
        ensure_eq!(got[i], 0.75f32.mul_add(x[i], y[i]), "element {i}");
    }
    Ok(())
}

/// hamming_scores: the kernel against its reference.
pub fn hamming_scores_match(dev: &Device) -> Result<(), VerifyError> {
    let (n, words) = (50_000usize, 4usize);
    let mut rng = Rng::new(3);
    let (q, keys) = (rng.u32s(words), rng.u32s(n * words));
    let k = basics::hamming_scores::spec()
        .words(words as u32)
        .build(dev)?;
    let mut out = dev.upload(&vec![u16::MAX; n])?;
    basics::hamming_scores::launch(
        &k,
        &LaunchConfig::for_elements(n as u32, 128),
        &dev.upload(&q)?,
        &dev.upload(&keys)?,
        &mut out,
        n as u32,
    )?;
    let got = dev.download(&out)?;
    for i in 0..n {
        let dist: u32 = (0..words)
            .map(|w| (q[w] ^ keys[i * words + w]).count_ones())
            .sum();
        ensure_eq!(got[i] as u32, 32 * words as u32 - dist, "element {i}");
    }
    Ok(())
}

/// vec_scale: 16-byte vector loads and stores plus the scalar tail, f32 and bf16.
pub fn vec_scale_with_tail(dev: &Device) -> Result<(), VerifyError> {
    vec_scale_as::<f32>(dev)?;
    vec_scale_as::<bf16>(dev)
}

fn vec_scale_as<T: Real>(dev: &Device) -> Result<(), VerifyError> {
    let n = 10_007usize;
    let lanes = 16 / std::mem::size_of::<T>() as u32;
    let mut rng = Rng::new(4);
    let x: Vec<T> = rng.f32s(n).into_iter().map(T::from_f32).collect();
    let k = basics::vec_scale::spec().t(T::DTYPE).build(dev)?;
    let mut out = dev.upload(&vec![T::NAN; n])?;
    let cfg = LaunchConfig::for_elements((n as u32).div_ceil(lanes), 128);
    basics::vec_scale::launch(
        &k,
        &cfg,
        &dev.upload(&x)?,
        &mut out,
        T::from_f32(1.5),
        n as u32,
    )?;
    let got = dev.download(&out)?;
    for i in 0..n {
        ensure_eq!(
            got[i],
            T::from_f32(x[i].to_f32() * 1.5),
            "{} element {i}",
            T::DTYPE
        );
    }
    Ok(())
}

/// bits_and_casts: the kernel against its reference.
pub fn bits_and_casts_match_rust(dev: &Device) -> Result<(), VerifyError> {
    let n = 4099usize;
    let mut rng = Rng::new(5);
    let mut x: Vec<f32> = rng.f32s(n).iter().map(|v| v * 1000.0).collect();
    x[7] = f32::NAN;
    x[8] = 0.0;
    x[9] = 1e30;
    x[10] = -1e30;
    let words: Vec<u64> = (0..n).map(|_| rng.next_u64()).collect();
    let k = basics::bits_and_casts::spec().build(dev)?;
    let mut o32 = dev.upload(&vec![0xdead_beefu32; n])?;
    let mut o16 = dev.upload(&vec![f16::NAN; n])?;
    let mut ob16 = dev.upload(&vec![bf16::NAN; n])?;
    let mut o64 = dev.upload(&vec![i64::MIN; n])?;
    basics::bits_and_casts::launch(
        &k,
        &LaunchConfig::for_elements(n as u32, 64),
        &dev.upload(&x)?,
        &dev.upload(&words)?,
        &mut o32,
        &mut o16,
        &mut ob16,
        &mut o64,
        n as u32,
    )?;
    let (g32, g16, gb16, g64) = (
        dev.download(&o32)?,
        dev.download(&o16)?,
        dev.download(&ob16)?,
        dev.download(&o64)?,
    );
    for i in 0..n {
        let v = x[i];
        let bits = v.to_bits();
        let w = words[i];
        let small = (bits & 0xff) as u8;
        let medium = (bits >> 16) as u16;
        let mut acc =
            bits.leading_zeros() + bits.trailing_zeros() + bits.reverse_bits().count_ones();
        acc += w.count_ones() + w.leading_zeros() + small.count_ones() + medium.trailing_zeros();
        acc = acc.clamp(3, 1000).div_ceil(2);
        let h = f16::from_f32(v);
        let b = bf16::from_f32(h.to_f32() * 2.0);
        let want16 = if v.is_nan() { f16::NAN } else { h };
        ensure_eq!(g16[i].to_bits(), want16.to_bits(), "f16 {i}");
        ensure_eq!(gb16[i].to_bits() & 0xffc0, b.to_bits() & 0xffc0, "bf16 {i}");
        ensure_eq!(
            g32[i],
            acc.wrapping_mul(2654435761) ^ medium as u32,
            "u32 {i}"
        );
        let signed = ((v * 1000.0) as i64).wrapping_sub(i64::MAX / 4);
        ensure_eq!(
            g64[i],
            signed.wrapping_abs().wrapping_add((w >> 60) as i64),
            "i64 {i}"
        );
    }
    Ok(())
}

/// first_above: the kernel against its reference.
pub fn first_above_loops(dev: &Device) -> Result<(), VerifyError> {
    let (rows, cols) = (3000usize, 37usize);
    let mut rng = Rng::new(6);
    let x = rng.f32s(rows * cols);
    let k = basics::first_above::spec().build(dev)?;
    let mut out = dev.upload(&vec![7u32; rows])?;
    basics::first_above::launch(
        &k,
        &LaunchConfig::for_elements(rows as u32, 128),
        &dev.upload(&x)?,
        &mut out,
        cols as u32,
        rows as u32,
        0.9f32,
    )?;
    let got = dev.download(&out)?;
    for r in 0..rows {
        let want = (0..cols)
            .find(|j| x[r * cols + j] > 0.9)
            .map(|j| j as u32)
            .unwrap_or(u32::MAX);
        ensure_eq!(got[r], want, "row {r}");
    }
    Ok(())
}

/// row_dot_registers: the kernel against its reference.
pub fn row_dot_registers_close(dev: &Device) -> Result<(), VerifyError> {
    let (rows, kdim) = (5000usize, 64usize);
    let mut rng = Rng::new(7);
    let (a, b) = (rng.f32s(rows * kdim), rng.f32s(kdim));
    let k = basics::row_dot_registers::spec()
        .k(kdim as u32)
        .build(dev)?;
    let mut out = dev.upload(&vec![POISON_F32; rows])?;
    basics::row_dot_registers::launch(
        &k,
        &LaunchConfig::for_elements(rows as u32, 128),
        &dev.upload(&a)?,
        &dev.upload(&b)?,
        &mut out,
        rows as u32,
    )?;
    let got: Vec<f64> = dev.download(&out)?.iter().map(|v| *v as f64).collect();
    let want: Vec<f64> = (0..rows)
        .map(|r| {
            (0..kdim)
                .map(|j| a[r * kdim + j] as f64 * b[j] as f64)
                .sum()
        })
        .collect();
    ensure!(rel_err(&got, &want) < 1e-5, "{}", rel_err(&got, &want));
    Ok(())
}

/// transpose: the kernel against its reference.
pub fn transpose_tiled(dev: &Device) -> Result<(), VerifyError> {
    let (rows, cols) = (1000usize, 777usize);
    let mut rng = Rng::new(8);
    let x = rng.f32s(rows * cols);
    let k = memory::transpose::spec().tile(32).build(dev)?;
    let mut out = dev.upload(&vec![POISON_F32; rows * cols])?;
    let cfg = LaunchConfig {
        grid: ((cols as u32).div_ceil(32), (rows as u32).div_ceil(32), 1),
        block: (32, 32, 1),
        dyn_shared_bytes: 0,
    };
    memory::transpose::launch(
        &k,
        &cfg,
        &dev.upload(&x)?,
        &mut out,
        rows as u32,
        cols as u32,
    )?;
    let got = dev.download(&out)?;
    for r in 0..rows {
        for c in 0..cols {
            ensure_eq!(got[c * rows + r], x[r * cols + c], "({r}, {c})");
        }
    }
    Ok(())
}

/// histogram: the kernel against its reference.
pub fn histogram_counts(dev: &Device) -> Result<(), VerifyError> {
    let n = 300_000usize;
    let mut rng = Rng::new(9);
    let values = rng.u32s(n);
    let k = memory::histogram::spec().bins(256).build(dev)?;
    let mut bins = dev.zeros::<u32>(256)?;
    memory::histogram::launch(
        &k,
        &LaunchConfig::linear(64, 256),
        &dev.upload(&values)?,
        &mut bins,
        n as u32,
    )?;
    let got = dev.download(&bins)?;
    let mut want = vec![0u32; 256];
    for v in &values {
        want[(*v % 256) as usize] += 1;
    }
    ensure_eq!(got, want);
    Ok(())
}

/// reverse_chunks: the kernel against its reference.
pub fn reverse_chunks_dynamic_shared(dev: &Device) -> Result<(), VerifyError> {
    let (n, threads) = (256 * 40usize, 256u32);
    let mut rng = Rng::new(10);
    let x = rng.f32s(n);
    let k = memory::reverse_chunks::spec().build(dev)?;
    let mut out = dev.upload(&vec![POISON_F32; n])?;
    memory::reverse_chunks::launch(
        &k,
        &LaunchConfig::for_elements(n as u32, threads).with_dyn_shared(threads * 4),
        &dev.upload(&x)?,
        &mut out,
        n as u32,
    )?;
    let got = dev.download(&out)?;
    for (i, g) in got.iter().enumerate() {
        let (base, t) = (i / 256 * 256, i % 256);
        ensure_eq!(*g, x[base + 255 - t], "element {i}");
    }
    Ok(())
}

/// async_stage: the kernel against its reference.
pub fn async_stage_copies(dev: &Device) -> Result<(), VerifyError> {
    let (n, tile) = (1024 * 33usize, 1024u32);
    let mut rng = Rng::new(11);
    let x = rng.f32s(n);
    let k = memory::async_stage::spec().tile(tile).build(dev)?;
    let mut out = dev.upload(&vec![POISON_F32; n])?;
    memory::async_stage::launch(
        &k,
        &LaunchConfig::linear((n as u32).div_ceil(tile), 128),
        &dev.upload(&x)?,
        &mut out,
        2.0f32,
        n as u32,
    )?;
    let got = dev.download(&out)?;
    for i in 0..n {
        ensure_eq!(got[i], x[i] * 2.0, "element {i}");
    }
    Ok(())
}

/// warp_reduce_sum + block_reduce_sum: the kernel against its reference.
pub fn reductions_close_to_f64(dev: &Device) -> Result<(), VerifyError> {
    let n = 1 << 20;
    let mut rng = Rng::new(12);
    let x = rng.f32s(n);
    let want: f64 = x.iter().map(|v| *v as f64).sum();
    let dx = dev.upload(&x)?;
    let k = reductions::warp_reduce_sum::spec().build(dev)?;
    let mut out = dev.zeros::<f32>(1)?;
    reductions::warp_reduce_sum::launch(
        &k,
        &LaunchConfig::for_elements(n as u32, 256),
        &dx,
        &mut out,
        n as u32,
    )?;
    let got = dev.download(&out)?[0] as f64;
    let scale: f64 = x.iter().map(|v| v.abs() as f64).sum();
    ensure!((got - want).abs() / scale < 1e-5, "warp: {got} vs {want}");
    let k = reductions::block_reduce_sum::spec().block(256).build(dev)?;
    let blocks = (n as u32).div_ceil(512);
    let mut partial = dev.upload(&vec![POISON_F32; blocks as usize])?;
    reductions::block_reduce_sum::launch(
        &k,
        &LaunchConfig::linear(blocks, 256),
        &dx,
        &mut partial,
        n as u32,
    )?;
    let got: f64 = dev.download(&partial)?.iter().map(|v| *v as f64).sum();
    ensure!((got - want).abs() / scale < 1e-5, "block: {got} vs {want}");
    Ok(())
}

/// row_softmax: the kernel against its reference.
pub fn row_softmax_all_dtypes(dev: &Device) -> Result<(), VerifyError> {
    let (rows, cols) = (300usize, 1000usize);
    let mut rng = Rng::new(13);
    let x: Vec<f32> = rng.f32s(rows * cols).iter().map(|v| v * 8.0).collect();
    let reference = |x: &[f64]| -> Vec<f64> {
        let mut out = vec![0.0; rows * cols];
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
            for j in 0..cols {
                out[r * cols + j] = (row[j] - m).exp() / s;
            }
        }
        out
    };
    let cfg = LaunchConfig::linear((rows as u32).div_ceil(4), 128);
    let k = reductions::row_softmax::spec().t(Dtype::F32).build(dev)?;
    let mut out = dev.upload(&vec![POISON_F32; rows * cols])?;
    reductions::row_softmax::launch(
        &k,
        &cfg,
        &dev.upload(&x)?,
        &mut out,
        rows as u32,
        cols as u32,
    )?;
    let got: Vec<f64> = dev.download(&out)?.iter().map(|v| *v as f64).collect();
    let want = reference(&x.iter().map(|v| *v as f64).collect::<Vec<_>>());
    ensure!(rel_err(&got, &want) < 1e-5, "f32: {}", rel_err(&got, &want));
    let xb: Vec<bf16> = x.iter().map(|v| bf16::from_f32(*v)).collect();
    let k = reductions::row_softmax::spec().t(Dtype::Bf16).build(dev)?;
    let mut out = dev.upload(&vec![bf16::NAN; rows * cols])?;
    reductions::row_softmax::launch(
        &k,
        &cfg,
        &dev.upload(&xb)?,
        &mut out,
        rows as u32,
        cols as u32,
    )?;
    let got: Vec<f64> = dev.download(&out)?.iter().map(|v| v.to_f64()).collect();
    let want = reference(&xb.iter().map(|v| v.to_f64()).collect::<Vec<_>>());
    ensure!(
        rel_err(&got, &want) < 1e-2,
        "bf16: {}",
        rel_err(&got, &want)
    );
    Ok(())
}

/// block_scan: the kernel against its reference.
pub fn block_scan_inclusive(dev: &Device) -> Result<(), VerifyError> {
    let n = 256 * 50 + 17;
    let mut rng = Rng::new(14);
    let x: Vec<u32> = rng.u32s(n).iter().map(|v| v % 1000).collect();
    let k = reductions::block_scan::spec().block(256).build(dev)?;
    let mut out = dev.upload(&vec![u32::MAX; n])?;
    reductions::block_scan::launch(
        &k,
        &LaunchConfig::for_elements(n as u32, 256),
        &dev.upload(&x)?,
        &mut out,
        n as u32,
    )?;
    let got = dev.download(&out)?;
    let mut acc = 0u32;
    for i in 0..n {
        if i % 256 == 0 {
            acc = 0;
        }
        acc = acc.wrapping_add(x[i]);
        ensure_eq!(got[i], acc, "element {i}");
    }
    Ok(())
}

/// warp_votes: the kernel against its reference.
pub fn warp_votes_count(dev: &Device) -> Result<(), VerifyError> {
    let n = 32 * 500;
    let mut rng = Rng::new(15);
    let mut flags: Vec<u32> = rng.u32s(n).iter().map(|v| (v % 3 == 0) as u32).collect();
    flags[..32].iter_mut().for_each(|f| *f = 1);
    flags[32..64].iter_mut().for_each(|f| *f = 0);
    let warps = n / 32;
    let k = reductions::warp_votes::spec().build(dev)?;
    let (mut counts, mut all_any, mut sums) = (
        dev.upload(&vec![u32::MAX; warps])?,
        dev.upload(&vec![u32::MAX; warps])?,
        dev.upload(&vec![u32::MAX; warps])?,
    );
    reductions::warp_votes::launch(
        &k,
        &LaunchConfig::for_elements(n as u32, 128),
        &dev.upload(&flags)?,
        &mut counts,
        &mut all_any,
        &mut sums,
        n as u32,
    )?;
    let (c, aa, s) = (
        dev.download(&counts)?,
        dev.download(&all_any)?,
        dev.download(&sums)?,
    );
    for w in 0..warps {
        let chunk = &flags[w * 32..w * 32 + 32];
        let count: u32 = chunk.iter().sum();
        ensure_eq!(c[w], count, "count {w}");
        ensure_eq!(s[w], count, "sum {w}");
        ensure_eq!(
            aa[w],
            (count == 32) as u32 * 2 + (count > 0) as u32,
            "all/any {w}"
        );
    }
    Ok(())
}

/// row_mean_square: the kernel against its reference.
pub fn row_mean_square_cross_crate_device_fn(dev: &Device) -> Result<(), VerifyError> {
    let (rows, cols) = (200usize, 300usize);
    let mut rng = Rng::new(16);
    let x = rng.f32s(rows * cols);
    let k = reductions::row_mean_square::spec()
        .t(Dtype::F32)
        .build(dev)?;
    let mut out = dev.upload(&vec![POISON_F32; rows])?;
    reductions::row_mean_square::launch(
        &k,
        &LaunchConfig::linear(rows as u32, 32),
        &dev.upload(&x)?,
        &mut out,
        cols as u32,
    )?;
    let got: Vec<f64> = dev.download(&out)?.iter().map(|v| *v as f64).collect();
    let want: Vec<f64> = (0..rows)
        .map(|r| {
            x[r * cols..(r + 1) * cols]
                .iter()
                .map(|v| (*v as f64).powi(2))
                .sum::<f64>()
                / cols as f64
        })
        .collect();
    ensure!(rel_err(&got, &want) < 1e-5, "{}", rel_err(&got, &want));
    Ok(())
}

/// bitonic_sort: the kernel against its reference.
pub fn bitonic_sort_chunks(dev: &Device) -> Result<(), VerifyError> {
    let (n, chunk) = (1024 * 20 + 300usize, 1024usize);
    let mut rng = Rng::new(17);
    let keys = rng.u32s(n);
    let k = sorting::bitonic_sort::spec().n(chunk as u32).build(dev)?;
    let mut dk = dev.upload(&keys)?;
    sorting::bitonic_sort::launch(
        &k,
        &LaunchConfig::linear((n as u32).div_ceil(chunk as u32), chunk as u32),
        &mut dk,
        n as u32,
    )?;
    let got = dev.download(&dk)?;
    for (c, (g, k)) in got.chunks(chunk).zip(keys.chunks(chunk)).enumerate() {
        let mut want = k.to_vec();
        want.sort_unstable();
        ensure_eq!(g, &want[..], "chunk {c}");
    }
    Ok(())
}

/// stream_copy + stream_sum: the kernel against its reference.
pub fn stream_copy_and_sum(dev: &Device) -> Result<(), VerifyError> {
    let n = 4 * 70_001usize;
    let mut rng = Rng::new(18);
    let x = rng.f32s(n);
    let dx = dev.upload(&x)?;
    let copy = bandwidth::stream_copy::spec().t(Dtype::F32).build(dev)?;
    let mut out = dev.upload(&vec![POISON_F32; n])?;
    bandwidth::stream_copy::launch(
        &copy,
        &LaunchConfig::linear(7, 128),
        &dx,
        &mut out,
        n as u32,
    )?;
    ensure_eq!(dev.download(&out)?, x);
    let sum = bandwidth::stream_sum::spec().build(dev)?;
    let mut total = dev.zeros::<f32>(1)?;
    bandwidth::stream_sum::launch(
        &sum,
        &LaunchConfig::linear(5, 128),
        &dx,
        &mut total,
        n as u32,
    )?;
    let want: f64 = x.iter().map(|v| *v as f64).sum();
    let scale: f64 = x.iter().map(|v| v.abs() as f64).sum();
    let got = dev.download(&total)?[0] as f64;
    ensure!((got - want).abs() / scale < 1e-5, "{got} vs {want}");
    Ok(())
}

/// mma_tile_16x8x16: one tensor-core multiply of small-integer tiles (every product and sum
/// is exact in f32), in bf16 and f16, against a Rust matmul: exact.
pub fn mma_tile_exact(dev: &Device) -> Result<(), VerifyError> {
    mma_tile_as::<bf16>(dev)?;
    mma_tile_as::<f16>(dev)
}

/// Small integers in -8..=8, as `T` (exact in f16 and bf16).
fn small_ints<T: Real>(n: usize, mul: usize, add: usize) -> Vec<T> {
    (0..n)
        .map(|i| T::from_f32(((i * mul + add) % 17) as f32 - 8.0))
        .collect()
}

fn mma_tile_as<T: Real>(dev: &Device) -> Result<(), VerifyError> {
    let (a, b) = (small_ints::<T>(256, 7, 3), small_ints::<T>(128, 5, 11));
    let k = tensor::mma_tile_16x8x16::spec().t(T::DTYPE).build(dev)?;
    let mut c = dev.upload(&vec![POISON_F32; 128])?;
    tensor::mma_tile_16x8x16::launch(
        &k,
        &LaunchConfig::linear(1, 32),
        &dev.upload(&a)?,
        &dev.upload(&b)?,
        &mut c,
    )?;
    let got = dev.download(&c)?;
    for i in 0..16 {
        for j in 0..8 {
            let want: f32 = (0..16)
                .map(|k| a[i * 16 + k].to_f32() * b[k * 8 + j].to_f32())
                .sum();
            ensure_eq!(got[i * 8 + j], want, "{} C[{i}][{j}]", T::DTYPE);
        }
    }
    Ok(())
}

/// fragment_layout: what every lane holds after `ldmatrix_x4`, `ldmatrix_x2_trans` and `mma`
/// against the PTX ISA's m16n8k16 fragment layouts (groupID `g = lane / 4`,
/// threadID_in_group `t = lane % 4`), and the packed conversions against the `half` crate's
/// round-to-nearest-even; bf16 and f16, exact.
pub fn fragment_layout_per_lane(dev: &Device) -> Result<(), VerifyError> {
    fragment_layout_as::<bf16>(dev)?;
    fragment_layout_as::<f16>(dev)
}

/// A register of two halves: `lo` in bits 0-15.
fn halves<T: Real>(lo: T, hi: T) -> u32 {
    lo.to_bits64() as u32 | (hi.to_bits64() as u32) << 16
}

fn fragment_layout_as<T: Real>(dev: &Device) -> Result<(), VerifyError> {
    let (a, b) = (small_ints::<T>(256, 5, 2), small_ints::<T>(128, 3, 7));
    let k = tensor::fragment_layout::spec().t(T::DTYPE).build(dev)?;
    let mut a_regs = dev.upload(&vec![u32::MAX; 128])?;
    let mut b_regs = dev.upload(&vec![u32::MAX; 64])?;
    let mut c_vals = dev.upload(&vec![POISON_F32; 128])?;
    let mut p_regs = dev.upload(&vec![u32::MAX; 128])?;
    tensor::fragment_layout::launch(
        &k,
        &LaunchConfig::linear(1, 32),
        &dev.upload(&a)?,
        &dev.upload(&b)?,
        &mut a_regs,
        &mut b_regs,
        &mut c_vals,
        &mut p_regs,
    )?;
    let (ga, gb, gc, gp) = (
        dev.download(&a_regs)?,
        dev.download(&b_regs)?,
        dev.download(&c_vals)?,
        dev.download(&p_regs)?,
    );
    let at = |i: usize, k: usize| a[i * 16 + k];
    let bt = |k: usize, n: usize| b[k * 8 + n];
    let dt = T::DTYPE;
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        for r in 0..4 {
            // A: rows g, g+8 (odd registers), columns 2t, 2t+1 (+8 for registers 2, 3)
            let (row, col) = (g + 8 * (r % 2), 2 * t + 8 * (r / 2));
            let want = halves(at(row, col), at(row, col + 1));
            ensure_eq!(ga[lane * 4 + r], want, "{dt} lane {lane} A register {r}");
        }
        for r in 0..2 {
            // B: rows (k) 2t, 2t+1 (+8 for register 1), column (n) g
            let want = halves(bt(2 * t + 8 * r, g), bt(2 * t + 8 * r + 1, g));
            ensure_eq!(gb[lane * 2 + r], want, "{dt} lane {lane} B register {r}");
        }
        let mut d = [0f32; 4];
        for (r, dr) in d.iter_mut().enumerate() {
            // C/D: rows g, g+8 (registers 2, 3), columns 2t, 2t+1
            let (row, col) = (g + 8 * (r / 2), 2 * t + r % 2);
            let dot: f32 = (0..16)
                .map(|k| at(row, k).to_f32() * bt(k, col).to_f32())
                .sum();
            *dr = dot + lane as f32 + r as f32 * 0.25;
            ensure_eq!(gc[lane * 4 + r], *dr, "{dt} lane {lane} D register {r}");
        }
        let h = |v: f32| T::from_f32(v);
        let want_p = [
            halves(h(d[0]), h(d[1])),
            halves(h(d[2]), h(d[3])),
            halves(h(d[1]), h(d[2])),
            0,
        ];
        for (r, want) in want_p.iter().enumerate() {
            ensure_eq!(
                gp[lane * 4 + r],
                *want,
                "{dt} lane {lane} packed register {r}"
            );
        }
    }
    Ok(())
}

/// Every check, by the kernels it covers.
pub const CHECKS: &[(&str, Check)] = &[
    ("vector_add", vector_add_all_dtypes),
    ("saxpy", saxpy_grid_stride),
    ("hamming_scores", hamming_scores_match),
    ("vec_scale", vec_scale_with_tail),
    ("bits_and_casts", bits_and_casts_match_rust),
    ("first_above", first_above_loops),
    ("row_dot_registers", row_dot_registers_close),
    ("transpose", transpose_tiled),
    ("histogram", histogram_counts),
    ("reverse_chunks", reverse_chunks_dynamic_shared),
    ("async_stage", async_stage_copies),
    (
        "warp_reduce_sum + block_reduce_sum",
        reductions_close_to_f64,
    ),
    ("row_softmax", row_softmax_all_dtypes),
    ("block_scan", block_scan_inclusive),
    ("warp_votes", warp_votes_count),
    ("row_mean_square", row_mean_square_cross_crate_device_fn),
    ("bitonic_sort", bitonic_sort_chunks),
    ("stream_copy + stream_sum", stream_copy_and_sum),
    ("mma_tile_16x8x16", mma_tile_exact),
    ("fragment_layout", fragment_layout_per_lane),
    ("mma_throughput", mma_throughput_exact),
    ("gemm_tiled", gemm_tiled_close),
];

/// mma_throughput: a few rounds on a small grid; every output is exactly 32·iters.
pub fn mma_throughput_exact(dev: &Device) -> Result<(), VerifyError> {
    for dtype in [Dtype::Bf16, Dtype::F16] {
        let k = tensor::mma_throughput::spec().t(dtype).build(dev)?;
        let (blocks, threads, iters) = (3u32, 64u32, 5u32);
        let mut out = dev.upload(&vec![f32::NAN; (blocks * threads * 4) as usize])?;
        tensor::mma_throughput::launch(
            &k,
            &LaunchConfig::linear(blocks, threads),
            &mut out,
            iters,
        )?;
        for (i, v) in dev.download(&out)?.iter().enumerate() {
            ensure_eq!(*v, 32.0 * iters as f32, "{dtype} element {i}");
        }
    }
    Ok(())
}

/// gemm_tiled: bf16 and f16 inputs (exactly representable), f32 accumulation, against a
/// float64 matmul of the same inputs.
pub fn gemm_tiled_close(dev: &Device) -> Result<(), VerifyError> {
    gemm_as::<bf16>(dev)?;
    gemm_as::<f16>(dev)
}

fn gemm_as<T: Real>(dev: &Device) -> Result<(), VerifyError> {
    let (m, n, k) = (64usize, 128usize, 192usize);
    let mut rng = Rng::new(23);
    let a: Vec<T> = rng.f32s(m * k).into_iter().map(T::from_f32).collect();
    let b: Vec<T> = rng.f32s(k * n).into_iter().map(T::from_f32).collect();
    let kernel = tensor::gemm_tiled::spec().t(T::DTYPE).build(dev)?;
    let mut c = dev.upload(&vec![f32::NAN; m * n])?;
    let cfg = LaunchConfig {
        grid: ((n / 64) as u32, (m / 32) as u32, 1),
        block: (128, 1, 1),
        dyn_shared_bytes: 0,
    };
    tensor::gemm_tiled::launch(
        &kernel,
        &cfg,
        &dev.upload(&a)?,
        &dev.upload(&b)?,
        &mut c,
        m as u32,
        n as u32,
        k as u32,
    )?;
    let got: Vec<f64> = dev.download(&c)?.iter().map(|v| *v as f64).collect();
    let want: Vec<f64> = (0..m * n)
        .map(|ij| {
            (0..k)
                .map(|p| a[ij / n * k + p].to_f32() as f64 * b[p * n + ij % n].to_f32() as f64)
                .sum()
        })
        .collect();
    let err = rel_err(&got, &want);
    ensure!(err < 1e-5, "{}: relative error {err:e}", T::DTYPE);
    Ok(())
}
