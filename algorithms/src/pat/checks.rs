//! The decoder's element-wise kernels against float64: the residual add fused with RMSNorm
//! (with and without the add, a row width that leaves threads idle), rotary embeddings at
//! large positions, and the SwiGLU gate. Inputs random, outputs poisoned.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::decoder::{DecoderConfig, DecoderOptions, DecoderWeights, Reduction, TpDecoder};
use super::kernels::{
    add_rms_norm, argmax_rows, clear_counts, embed, gather_rows, kv_append, kv_move, qkv_split,
    rope, swiglu, take_cols, transpose_heads, tree_sum, NORM_THREADS,
};
use super::reference::{top2, ReferenceDecoder};
use crate::verify::{ensure, ensure_eq, random_real, rel_err, widen, Real, Rng, VerifyError};
use kiln::comm::CommGroup;
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

fn cfg(n: usize) -> LaunchConfig {
    grid((n as u32).div_ceil(256).max(1), 256)
}

fn bits<T: Real>(v: &[T]) -> Vec<u32> {
    v.iter().map(|x| x.to_f32().to_bits()).collect()
}

/// The decoder's data-movement kernels (the QKV split, the KV append and move, the head
/// transposes, column blocks, gathered rows, the fixed-order sum, the embedding, the arg-max, clearing a
/// slot's sizes) against host copies: exactly, outputs poisoned or filled with random values
/// that must survive where nothing is written.
fn movement_cases<T: Real>(dev: &Device, seed: u64) -> Result<(), VerifyError> {
    let mut rng = Rng::new(seed);
    let (heads, kvh, d) = (4usize, 2usize, 8usize);
    // qkv_split: 5 tokens of a 16-row GEMM output
    let (tokens, width) = (5usize, (heads + 2 * kvh) * d);
    let qkv: Vec<f32> = rng.f32s(16 * width).iter().map(|v| 4.0 * v).collect();
    let poison = |n: usize| vec![T::NAN; n];
    let (mut q, mut k, mut v) = (
        dev.upload(&poison(tokens * heads * d))?,
        dev.upload(&poison(tokens * kvh * d))?,
        dev.upload(&poison(tokens * kvh * d))?,
    );
    let kern = qkv_split::spec().t(T::DTYPE).build(dev)?;
    qkv_split::launch(
        &kern,
        &cfg(tokens * width),
        &dev.upload(&qkv)?,
        &mut q,
        &mut k,
        &mut v,
        tokens as u32,
        heads as u32,
        kvh as u32,
        d as u32,
    )?;
    let round = |x: f32| T::from_f32(x);
    let (mut wq, mut wk, mut wv) = (Vec::new(), Vec::new(), Vec::new());
    for t in 0..tokens {
        let row = &qkv[t * width..(t + 1) * width];
        wq.extend(row[..heads * d].iter().map(|&x| round(x)));
        wk.extend(row[heads * d..(heads + kvh) * d].iter().map(|&x| round(x)));
        wv.extend(row[(heads + kvh) * d..].iter().map(|&x| round(x)));
    }
    ensure_eq!(bits(&dev.download(&q)?), bits(&wq), "qkv_split q");
    ensure_eq!(bits(&dev.download(&k)?), bits(&wk), "qkv_split k");
    ensure_eq!(bits(&dev.download(&v)?), bits(&wv), "qkv_split v");

    // kv_append into 3 slots of 6 positions; kv_move; clear_counts
    let (slots, cap, rows) = (3usize, 6usize, 4usize);
    let per = kvh * d;
    let kc0 = random_real::<T>(&mut rng, slots * cap * per, 1.0);
    let vc0 = random_real::<T>(&mut rng, slots * cap * per, 1.0);
    let counts0 = vec![7.0f32; slots * cap * kvh];
    let kn = random_real::<T>(&mut rng, rows * per, 1.0);
    let vn = random_real::<T>(&mut rng, rows * per, 1.0);
    let slot = [2u32, 0, 2, 1];
    let pos = [0u32, 5, 3, 2];
    let (mut kc, mut vc, mut counts) =
        (dev.upload(&kc0)?, dev.upload(&vc0)?, dev.upload(&counts0)?);
    let kern = kv_append::spec().t(T::DTYPE).build(dev)?;
    kv_append::launch(
        &kern,
        &cfg(rows * per),
        &dev.upload(&kn)?,
        &dev.upload(&vn)?,
        &mut kc,
        &mut vc,
        &mut counts,
        &dev.upload(&slot)?,
        &dev.upload(&pos)?,
        rows as u32,
        kvh as u32,
        d as u32,
        cap as u32,
    )?;
    let (mut wk, mut wv, mut wc) = (kc0.clone(), vc0.clone(), counts0.clone());
    for r in 0..rows {
        let entry = slot[r] as usize * cap + pos[r] as usize;
        wk[entry * per..(entry + 1) * per].copy_from_slice(&kn[r * per..(r + 1) * per]);
        wv[entry * per..(entry + 1) * per].copy_from_slice(&vn[r * per..(r + 1) * per]);
        wc[entry * kvh..(entry + 1) * kvh].fill(1.0);
    }
    ensure_eq!(bits(&dev.download(&kc)?), bits(&wk), "kv_append keys");
    ensure_eq!(bits(&dev.download(&vc)?), bits(&wv), "kv_append values");
    ensure_eq!(dev.download(&counts)?, wc, "kv_append sizes");
    let kern = kv_move::spec().t(T::DTYPE).build(dev)?;
    let (from, to, moved) = (2usize, 0usize, 4usize);
    kv_move::launch(
        &kern,
        &cfg(cap * per),
        &mut kc,
        &mut vc,
        &mut counts,
        from as u32,
        to as u32,
        moved as u32,
        kvh as u32,
        d as u32,
        cap as u32,
    )?;
    let (src, dst) = (from * cap * per, to * cap * per);
    let kept = wk[src..src + moved * per].to_vec();
    wk[dst..dst + moved * per].copy_from_slice(&kept);
    let kept = wv[src..src + moved * per].to_vec();
    wv[dst..dst + moved * per].copy_from_slice(&kept);
    let kept = wc[from * cap * kvh..(from + 1) * cap * kvh].to_vec();
    wc[to * cap * kvh..(to + 1) * cap * kvh].copy_from_slice(&kept);
    ensure_eq!(bits(&dev.download(&kc)?), bits(&wk), "kv_move keys");
    ensure_eq!(bits(&dev.download(&vc)?), bits(&wv), "kv_move values");
    ensure_eq!(dev.download(&counts)?, wc, "kv_move sizes");
    let kern = clear_counts::spec().build(dev)?;
    clear_counts::launch(
        &kern,
        &cfg(cap * kvh),
        &mut counts,
        1,
        cap as u32,
        kvh as u32,
    )?;
    wc[cap * kvh..2 * cap * kvh].fill(0.0);
    ensure_eq!(dev.download(&counts)?, wc, "clear_counts");

    // transpose_heads there and back
    let (tt, hh) = (7usize, 3usize);
    let x = random_real::<T>(&mut rng, tt * hh * d, 1.0);
    let kern = transpose_heads::spec().t(T::DTYPE).build(dev)?;
    let mut there = dev.upload(&poison(x.len()))?;
    let mut back = dev.upload(&poison(x.len()))?;
    let xd = dev.upload(&x)?;
    transpose_heads::launch(
        &kern,
        &cfg(x.len()),
        &xd,
        &mut there,
        tt as u32,
        hh as u32,
        d as u32,
        true,
    )?;
    transpose_heads::launch(
        &kern,
        &cfg(x.len()),
        &there,
        &mut back,
        tt as u32,
        hh as u32,
        d as u32,
        false,
    )?;
    let mut want = x.clone();
    for t in 0..tt {
        for h in 0..hh {
            for e in 0..d {
                want[(h * tt + t) * d + e] = x[(t * hh + h) * d + e];
            }
        }
    }
    ensure_eq!(
        bits(&dev.download(&there)?),
        bits(&want),
        "transpose_heads to heads"
    );
    ensure_eq!(
        bits(&dev.download(&back)?),
        bits(&x),
        "transpose_heads back"
    );

    // take_cols: 3 valid rows from row 2, columns 8..24 of 40, into 16 rows
    let (src_rows, src_cols, col0, cols, valid, row0) =
        (6usize, 40usize, 8usize, 16usize, 3usize, 2usize);
    let src = random_real::<T>(&mut rng, src_rows * src_cols, 1.0);
    let kern = take_cols::spec().t(T::DTYPE).build(dev)?;
    let mut dst = dev.upload(&poison(16 * cols))?;
    take_cols::launch(
        &kern,
        &cfg(16 * cols),
        &dev.upload(&src)?,
        &mut dst,
        valid as u32,
        row0 as u32,
        src_cols as u32,
        col0 as u32,
        cols as u32,
    )?;
    let want: Vec<T> = (0..16 * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            if r < valid {
                src[(row0 + r) * src_cols + col0 + c]
            } else {
                T::from_f32(0.0)
            }
        })
        .collect();
    ensure_eq!(bits(&dev.download(&dst)?), bits(&want), "take_cols");

    // gather_rows: rows 5, 0, 5, 3 of the same source, columns 8..24, into a buffer two rows
    // longer (those must keep their poison)
    let table = [5u32, 0, 5, 3];
    let kern = gather_rows::spec().t(T::DTYPE).build(dev)?;
    let mut dst = dev.upload(&poison((table.len() + 2) * cols))?;
    gather_rows::launch(
        &kern,
        &cfg(table.len() * cols),
        &dev.upload(&src)?,
        &mut dst,
        &dev.upload(&table)?,
        table.len() as u32,
        src_cols as u32,
        col0 as u32,
        cols as u32,
    )?;
    let mut want: Vec<T> = table
        .iter()
        .flat_map(|&r| src[r as usize * src_cols + col0..][..cols].iter().copied())
        .collect();
    want.extend(poison(2 * cols));
    ensure_eq!(bits(&dev.download(&dst)?), bits(&want), "gather_rows");

    // tree_sum over separate parts and over one gathered buffer, into T and f32
    let len = 300usize;
    let parts: Vec<Vec<f32>> = (0..4)
        .map(|_| rng.f32s(len).iter().map(|v| 3.0 * v).collect())
        .collect();
    let pd = parts
        .iter()
        .map(|p| dev.upload(p))
        .collect::<Result<Vec<_>, _>>()?;
    let gathered: Vec<f32> = parts.concat();
    let gd = dev.upload(&gathered)?;
    let kt = tree_sum::spec().t(T::DTYPE).build(dev)?;
    let kf = tree_sum::spec().t(kiln_codegen::Dtype::F32).build(dev)?;
    for n in [1usize, 2, 4] {
        let want: Vec<f32> = (0..len)
            .map(|j| match n {
                1 => parts[0][j],
                2 => parts[0][j] + parts[1][j],
                _ => (parts[0][j] + parts[1][j]) + (parts[2][j] + parts[3][j]),
            })
            .collect();
        let mut out_t = dev.upload(&poison(len))?;
        tree_sum::launch(
            &kt,
            &cfg(len),
            &pd[0],
            &pd[1],
            &pd[2],
            &pd[3],
            &mut out_t,
            n as u32,
            len as u32,
            0,
        )?;
        let want_t: Vec<T> = want.iter().map(|&x| T::from_f32(x)).collect();
        ensure_eq!(
            bits(&dev.download(&out_t)?),
            bits(&want_t),
            "tree_sum of {n} parts"
        );
        let mut out_f = dev.upload(&vec![f32::NAN; len])?;
        tree_sum::launch(
            &kf,
            &cfg(len),
            &gd,
            &gd,
            &gd,
            &gd,
            &mut out_f,
            n as u32,
            len as u32,
            len as u32,
        )?;
        let got: Vec<u32> = dev.download(&out_f)?.iter().map(|x| x.to_bits()).collect();
        let want_bits: Vec<u32> = want.iter().map(|x| x.to_bits()).collect();
        ensure_eq!(got, want_bits, "tree_sum of {n} gathered parts (f32)");
    }

    // embed: 5 of 16 rows
    let (vocab, hidden) = (37usize, 24usize);
    let table = random_real::<T>(&mut rng, vocab * hidden, 1.0);
    let ids: Vec<u32> = (0..5).map(|_| rng.u32() % vocab as u32).collect();
    let kern = embed::spec().t(T::DTYPE).build(dev)?;
    let mut out = dev.upload(&poison(16 * hidden))?;
    embed::launch(
        &kern,
        &cfg(16 * hidden),
        &dev.upload(&table)?,
        &dev.upload(&ids)?,
        &mut out,
        5,
        hidden as u32,
    )?;
    let mut want = vec![T::from_f32(0.0); 16 * hidden];
    for (r, &id) in ids.iter().enumerate() {
        want[r * hidden..(r + 1) * hidden]
            .copy_from_slice(&table[id as usize * hidden..(id as usize + 1) * hidden]);
    }
    ensure_eq!(bits(&dev.download(&out)?), bits(&want), "embed");
    Ok(())
}

/// [`argmax_rows`] over 3 vocabulary shards of 300 (more than a block's threads): random
/// rows, a tie across shards (the lower index wins), a NaN beside a finite maximum (ignored),
/// and a row of NaNs (`u32::MAX`).
fn argmax_case(dev: &Device, seed: u64) -> Result<(), VerifyError> {
    let mut rng = Rng::new(seed);
    let (shards, rows, cols) = (3usize, 5usize, 300usize);
    let mut logits: Vec<f32> = rng.f32s(shards * rows * cols);
    let at = |s: usize, r: usize, j: usize| (s * rows + r) * cols + j;
    // row 1: a tie between shard 2 column 10 and shard 0 column 299
    logits[at(2, 1, 10)] = 5.0;
    logits[at(0, 1, 299)] = 5.0;
    // row 2: a NaN and a maximum after it
    logits[at(1, 2, 7)] = f32::NAN;
    logits[at(1, 2, 200)] = 9.0;
    // row 4: NaNs only
    for s in 0..shards {
        for j in 0..cols {
            logits[at(s, 4, j)] = f32::NAN;
        }
    }
    let kern = argmax_rows::spec().build(dev)?;
    let mut best = dev.upload(&vec![7u32; rows])?;
    let mut val = dev.upload(&vec![f32::NAN; rows])?;
    argmax_rows::launch(
        &kern,
        &grid(rows as u32, 256),
        &dev.upload(&logits)?,
        &mut best,
        &mut val,
        shards as u32,
        rows as u32,
        cols as u32,
    )?;
    let (best, val) = (dev.download(&best)?, dev.download(&val)?);
    for r in 0..4 {
        let mut want = (u32::MAX, f32::NEG_INFINITY);
        for s in 0..shards {
            for j in 0..cols {
                let v = logits[at(s, r, j)];
                if v > want.1 {
                    want = ((s * cols + j) as u32, v);
                }
            }
        }
        ensure_eq!((best[r], val[r]), want, "argmax of row {r}");
    }
    ensure_eq!(best[1], 299, "a tie goes to the lower index");
    ensure_eq!(best[4], u32::MAX, "a row of NaNs");
    Ok(())
}

/// Every decoder kernel against its reference, bf16 and f16.
pub fn decoder_kernels_match_reference(dev: &Device) -> Result<(), VerifyError> {
    norm_case::<half::bf16>(dev, true, 31)?;
    norm_case::<half::f16>(dev, false, 32)?;
    rope_case::<half::bf16>(dev, 128, 33)?;
    rope_case::<half::f16>(dev, 64, 34)?;
    swiglu_case::<half::bf16>(dev, 35)?;
    swiglu_case::<half::f16>(dev, 36)?;
    movement_cases::<half::bf16>(dev, 37)?;
    movement_cases::<half::f16>(dev, 38)?;
    argmax_case(dev, 39)
}

/// What one run of the decoder's test schedule produced, per sequence id: the generated
/// tokens and the logits each was chosen from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecoderRun {
    /// Generated tokens per sequence.
    pub tokens: BTreeMap<usize, Vec<u32>>,
    /// Per sequence, the logits before each generated token.
    pub logits: BTreeMap<usize, Vec<Vec<f32>>>,
    /// Decode steps run.
    pub steps: usize,
}

/// The test workload: `(id, prompt, tokens to generate, decode steps to wait before it
/// joins)` — uneven prompts and lengths, so sequences retire at different steps (the batch
/// compacts), and one that joins late, into a slot another sequence used.
pub fn decoder_schedule(
    config: &DecoderConfig,
    gpu: bool,
    seed: u64,
) -> Vec<(usize, Vec<u32>, usize, usize)> {
    let mut rng = Rng::new(seed);
    let shape: &[(usize, usize, usize)] = if gpu {
        &[(97, 6, 0), (300, 12, 0), (731, 9, 0), (64, 5, 3)]
    } else {
        &[(5, 2, 0), (11, 5, 0), (19, 3, 0), (7, 3, 2)]
    };
    shape
        .iter()
        .enumerate()
        .map(|(id, &(len, new, wait))| {
            let prompt = (0..len).map(|_| rng.u32() % config.vocab).collect();
            (id, prompt, new, wait)
        })
        .collect()
}

/// Runs [`decoder_schedule`] on a decoder over `group`.
pub fn run_decoder_schedule<T: Real>(
    group: Arc<CommGroup>,
    weights: &DecoderWeights<T>,
    schedule: &[(usize, Vec<u32>, usize, usize)],
    reduction: Reduction,
) -> Result<DecoderRun, VerifyError> {
    let longest = schedule
        .iter()
        .map(|(_, p, n, _)| p.len() + n)
        .max()
        .unwrap_or(1);
    let options = DecoderOptions {
        slots: schedule.len() as u32,
        max_seq: longest as u32,
        reduction,
        record_logits: true,
        eos: None,
    };
    let mut dec = TpDecoder::new(group, weights, options)?;
    let mut run = DecoderRun::default();
    let mut pending: Vec<_> = schedule.to_vec();
    loop {
        let mut i = 0;
        while i < pending.len() {
            if pending[i].3 <= run.steps {
                let (id, prompt, new, _) = pending.remove(i);
                let first = dec.add(id, &prompt, new)?;
                run.tokens.entry(id).or_default().push(first);
                let logits = dec.prompt_logits.take().ok_or_else(|| {
                    VerifyError::Mismatch("the prompt's logits were not recorded".into())
                })?;
                run.logits.entry(id).or_default().push(logits);
            } else {
                i += 1;
            }
        }
        if dec.active().is_empty() && pending.is_empty() {
            break;
        }
        let out = dec.step()?;
        run.steps += 1;
        let logits = out.logits.unwrap_or_default();
        ensure_eq!(logits.len(), out.tokens.len(), "logits per token");
        for ((id, t), l) in out.tokens.into_iter().zip(logits) {
            run.tokens.entry(id).or_default().push(t);
            run.logits.entry(id).or_default().push(l);
        }
        ensure!(run.steps < 10_000, "the schedule does not finish");
    }
    for (id, tokens) in dec.take_retired() {
        ensure_eq!(
            Some(&tokens),
            run.tokens.get(&id),
            "sequence {id}'s retired tokens"
        );
    }
    for (id, _, new, _) in schedule {
        ensure_eq!(run.tokens[id].len(), *new, "sequence {id} generated");
    }
    Ok(run)
}

/// The groups the decoder checks run on: 1, 2 and 4 emulated ranks, or on GPUs 1 and as
/// many of 2 and 4 as are visible.
fn decoder_groups(dev: &Device) -> Result<Vec<Arc<CommGroup>>, VerifyError> {
    if !dev.is_gpu() {
        return [1, 2, 4]
            .into_iter()
            .map(|n| Ok(Arc::new(CommGroup::emulated(n)?)))
            .collect();
    }
    let visible = Device::gpu_count();
    [1usize, 2, 4]
        .into_iter()
        .filter(|&n| n <= visible.max(1))
        .map(|n| Ok(Arc::new(CommGroup::gpus(n)?)))
        .collect()
}

/// The shape the decoder checks use: [`DecoderConfig::small`] on the emulator; on a GPU two
/// layers of a wider model with LLaMA's head dimension (hidden 2048, 16/8 heads of 128, FFN
/// 4096, vocabulary 8192).
pub fn check_config(dev: &Device) -> DecoderConfig {
    if dev.is_gpu() {
        DecoderConfig {
            layers: 2,
            hidden: 2048,
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
            ffn: 4096,
            vocab: 8192,
            ..DecoderConfig::small()
        }
    } else {
        DecoderConfig::small()
    }
}

/// What [`decoder_tp_report`] measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TpReport {
    /// Largest relative error of a logit vector against float64 (TP = 1).
    pub worst_logit_err: f64,
    /// Positions whose reference top-2 margin exceeded twice the logits' error, where the
    /// greedy token had to equal the reference's; and of those, how many did.
    pub clear_positions: usize,
    /// Of `clear_positions`, how many tokens equal the reference's.
    pub clear_agree: usize,
    /// All generated positions.
    pub positions: usize,
    /// Per TP > 1 under the fixed tree: whether tokens and logits equal TP = 1's bit for bit.
    pub fixed_tree_equal: Vec<(usize, bool)>,
    /// Per TP > 1 under a plain all-reduce: largest |logit − TP 1's| (TP = 1 also plain: one
    /// GEMM over all of K), and tokens that differ from TP = 1's.
    pub all_reduce: Vec<(usize, f32, usize)>,
}

/// The decoder on every group of [`decoder_groups`], against float64 and against itself
/// across TP: see [`decoder_matches_reference`].
pub fn decoder_tp_report(dev: &Device) -> Result<TpReport, VerifyError> {
    type T = half::bf16;
    let config = check_config(dev);
    let weights = DecoderWeights::<T>::random(&config, 91);
    let schedule = decoder_schedule(&config, dev.is_gpu(), 92);
    let groups = decoder_groups(dev)?;
    let mut report = TpReport::default();
    let base = run_decoder_schedule(groups[0].clone(), &weights, &schedule, Reduction::FixedTree)?;
    let reference = ReferenceDecoder::new(&weights);
    // the reference of each sequence (fed the tokens the decoder chose) on its own thread
    let wants: Vec<Vec<Vec<f64>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = schedule
            .iter()
            .map(|(id, prompt, _, _)| {
                let generated = &base.tokens[id];
                let mut fed = prompt.clone();
                fed.extend(&generated[..generated.len() - 1]);
                let reference = &reference;
                scope.spawn(move || reference.logits(&fed, prompt.len() - 1))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for ((id, _, _, _), want) in schedule.iter().zip(&wants) {
        let generated = &base.tokens[id];
        ensure_eq!(
            want.len(),
            base.logits[id].len(),
            "reference positions of sequence {id}"
        );
        for (i, got) in base.logits[id].iter().enumerate() {
            let want = &want[i];
            let got64: Vec<f64> = got.iter().map(|&v| v as f64).collect();
            let e = rel_err(&got64, want);
            report.worst_logit_err = report.worst_logit_err.max(e);
            let abs = got64
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            let (best, margin) = top2(want);
            report.positions += 1;
            if margin > 2.0 * abs {
                report.clear_positions += 1;
                report.clear_agree += (generated[i] as usize == best) as usize;
            }
        }
    }
    // the plain scheme at TP = 1: one GEMM over all of K per row-sharded projection
    let plain_base =
        run_decoder_schedule(groups[0].clone(), &weights, &schedule, Reduction::AllReduce)?;
    for group in &groups[1..] {
        let n = group.ranks();
        let tree = run_decoder_schedule(group.clone(), &weights, &schedule, Reduction::FixedTree)?;
        let bits = |r: &DecoderRun| -> Vec<Vec<u32>> {
            r.logits
                .values()
                .flat_map(|v| v.iter().map(|l| l.iter().map(|x| x.to_bits()).collect()))
                .collect()
        };
        report
            .fixed_tree_equal
            .push((n, tree.tokens == base.tokens && bits(&tree) == bits(&base)));
        let plain = run_decoder_schedule(group.clone(), &weights, &schedule, Reduction::AllReduce)?;
        let mut diff = 0.0f32;
        let mut tokens_differ = 0;
        for (id, ls) in &plain.logits {
            for (a, b) in ls.iter().zip(&plain_base.logits[id]) {
                diff = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(diff, f32::max);
            }
            tokens_differ += plain.tokens[id]
                .iter()
                .zip(&plain_base.tokens[id])
                .filter(|(a, b)| a != b)
                .count();
        }
        report.all_reduce.push((n, diff, tokens_differ));
    }
    Ok(report)
}

/// The decoder (random bf16 weights, [`decoder_schedule`]: prefill, decode steps with
/// per-sequence lengths, retirement and compaction, a late join) on 1, 2 and 4 ranks of a
/// [`CommGroup`]: TP = 1's logits against the float64 reference (relative error within
/// bf16's), its greedy tokens equal to the reference's wherever the reference's top-2 margin
/// is clear of the error; TP = 2 and 4 with the fixed reduction tree equal to TP = 1 bit for
/// bit (tokens and logits); with a plain all-reduce, logits within the same tolerance.
pub fn decoder_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    let r = decoder_tp_report(dev)?;
    println!(
        "pat decoder: logits vs float64 {:.2e}; greedy = reference at {}/{} clear-margin positions ({} in all); \
         fixed tree bit-equal to TP 1: {:?}; plain all-reduce (TP, max |Δlogit|, tokens differing): {:?}",
        r.worst_logit_err, r.clear_agree, r.clear_positions, r.positions, r.fixed_tree_equal, r.all_reduce
    );
    ensure!(
        r.worst_logit_err < 3e-2,
        "logits vs float64: {:.2e}",
        r.worst_logit_err
    );
    ensure!(
        r.clear_positions * 2 >= r.positions,
        "too few clear-margin positions: {r:?}"
    );
    ensure_eq!(
        r.clear_agree,
        r.clear_positions,
        "greedy tokens at clear margins"
    );
    for &(n, equal) in &r.fixed_tree_equal {
        ensure!(equal, "TP = {n} (fixed tree) differs from TP = 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_decoder_configs_and_requests_are_refused() {
        use crate::pat::decoder::DecoderError;
        let ok = DecoderConfig::small();
        for tp in [1, 2, 4] {
            ok.validate(tp, Reduction::FixedTree).unwrap();
            ok.validate(tp, Reduction::AllReduce).unwrap();
        }
        let bad = [
            (DecoderConfig { head_dim: 96, ..ok }, 1, "head dimension"),
            (DecoderConfig { kv_heads: 3, ..ok }, 1, "KV heads"),
            (
                DecoderConfig {
                    heads: 80,
                    kv_heads: 4,
                    ..ok
                },
                1,
                "at most 16",
            ),
            (ok, 3, "1, 2 or 4"),
            (
                DecoderConfig {
                    kv_heads: 2,
                    heads: 8,
                    ..ok
                },
                4,
                "do not split",
            ),
            (DecoderConfig { pieces: 2, ..ok }, 4, "pieces"),
            (DecoderConfig { hidden: 8200, ..ok }, 1, "hidden"),
            (DecoderConfig { ffn: 520, ..ok }, 1, "ffn"),
            (DecoderConfig { vocab: 520, ..ok }, 1, "vocabulary"),
            (DecoderConfig { layers: 0, ..ok }, 1, "no layers"),
        ];
        for (c, tp, what) in bad {
            match c.validate(tp, Reduction::FixedTree) {
                Err(DecoderError::Config(m)) => assert!(m.contains(what), "{what}: {m}"),
                other => panic!("{c:?} at TP {tp} was not refused for {what}: {other:?}"),
            }
        }
        let weights = DecoderWeights::<half::bf16>::random(&ok, 5);
        let options = DecoderOptions {
            slots: 1,
            max_seq: 8,
            reduction: Reduction::FixedTree,
            record_logits: false,
            eos: None,
        };
        let group = Arc::new(CommGroup::emulated(1).unwrap());
        let mut short = weights.clone();
        short.lm_head.pop();
        assert!(matches!(
            TpDecoder::new(group.clone(), &short, options),
            Err(DecoderError::Config(m)) if m.contains("lm_head")
        ));
        let mut dec = TpDecoder::new(group, &weights, options).unwrap();
        let refused = |r: Result<u32, DecoderError>, what: &str| match r {
            Err(DecoderError::Config(m)) => assert!(m.contains(what), "{what}: {m}"),
            other => panic!("not refused ({what}): {other:?}"),
        };
        refused(dec.add(0, &[1; 6], 4), "cache positions");
        refused(dec.add(0, &[ok.vocab], 1), "outside the vocabulary");
        refused(dec.add(0, &[], 1), "a prompt");
        assert!(
            dec.step().unwrap().tokens.is_empty(),
            "an empty batch steps to nothing"
        );
    }

    #[test]
    fn an_eos_token_retires_a_sequence_early() {
        let config = DecoderConfig::small();
        let weights = DecoderWeights::<half::bf16>::random(&config, 6);
        let group = Arc::new(CommGroup::emulated(1).unwrap());
        let mut options = DecoderOptions {
            slots: 2,
            max_seq: 16,
            reduction: Reduction::FixedTree,
            record_logits: false,
            eos: None,
        };
        let prompt = [3u32, 1, 4, 1, 5];
        let mut dec = TpDecoder::new(group.clone(), &weights, options).unwrap();
        let first = dec.add(0, &prompt, 4).unwrap();
        assert_eq!(dec.active().len(), 1);
        options.eos = Some(first);
        let mut dec = TpDecoder::new(group, &weights, options).unwrap();
        assert_eq!(dec.add(7, &prompt, 4).unwrap(), first);
        assert!(dec.active().is_empty(), "the EOS token ends the sequence");
        assert_eq!(dec.take_retired(), vec![(7, vec![first])]);
    }

    #[test]
    fn random_contexts_step_like_prefilled_ones() {
        // what the profile bench does: sequences with random caches of a given length, stepped
        let config = DecoderConfig::small();
        let weights = DecoderWeights::<half::bf16>::random(&config, 8);
        let options = DecoderOptions {
            slots: 3,
            max_seq: 40,
            reduction: Reduction::FixedTree,
            record_logits: false,
            eos: None,
        };
        let mut dec =
            TpDecoder::new(Arc::new(CommGroup::emulated(2).unwrap()), &weights, options).unwrap();
        for (i, context) in [33u32, 17, 1].into_iter().enumerate() {
            dec.add_random_context(i, context, 3, 5, i as u64).unwrap();
        }
        assert!(
            dec.add_random_context(9, 1, 1, 5, 0).is_err(),
            "the batch is full"
        );
        let lens: Vec<u32> = dec.active().iter().map(|s| s.len).collect();
        assert_eq!(lens, [33, 17, 1]);
        assert_eq!(dec.step().unwrap().tokens.len(), 3);
        let out = dec.step().unwrap();
        assert_eq!(out.retired.len(), 3, "three tokens each: all done");
        dec.clear();
        assert!(dec.active().is_empty());
    }

    #[test]
    fn replicas_are_disjoint_groups() {
        use crate::pat::decoder::replica_groups;
        let devices: Vec<Device> = (0..4).map(|_| Device::emulator()).collect();
        for (tp, n) in [(1, 4), (2, 2), (4, 1)] {
            let groups = replica_groups(&devices, tp).unwrap();
            assert_eq!(groups.len(), n);
            assert!(groups.iter().all(|g| g.ranks() == tp));
        }
        assert!(replica_groups(&devices, 3).is_err());
        assert!(replica_groups(&devices, 0).is_err());
    }

    #[test]
    fn decoder_kernels_match_reference_on_the_emulator() {
        decoder_kernels_match_reference(&Device::emulator()).unwrap();
    }

    #[test]
    fn decoder_tp_equal_and_matches_reference_on_the_emulator() {
        decoder_matches_reference(&Device::emulator()).unwrap();
    }
}
