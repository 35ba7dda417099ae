//! The decoder's element-wise kernels against float64: the residual add fused with RMSNorm
//! (with and without the add, a row width that leaves threads idle), rotary embeddings at
//! large positions, and the SwiGLU gate. Inputs random, outputs poisoned.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::decoder::{DecoderConfig, DecoderOptions, DecoderWeights, Reduction, TpDecoder};
use super::kernels::{add_rms_norm, rope, swiglu, NORM_THREADS};
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

/// Every decoder kernel against its reference, bf16 and f16.
pub fn decoder_kernels_match_reference(dev: &Device) -> Result<(), VerifyError> {
    norm_case::<half::bf16>(dev, true, 31)?;
    norm_case::<half::f16>(dev, false, 32)?;
    rope_case::<half::bf16>(dev, 128, 33)?;
    rope_case::<half::f16>(dev, 64, 34)?;
    swiglu_case::<half::bf16>(dev, 35)?;
    swiglu_case::<half::f16>(dev, 36)
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
    /// Per TP > 1 under a plain all-reduce: largest |logit − TP 1's|, and tokens that differ
    /// from TP = 1's.
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
    for (id, prompt, _, _) in &schedule {
        let generated = &base.tokens[id];
        let mut fed = prompt.clone();
        fed.extend(&generated[..generated.len() - 1]);
        let want = reference.logits(&fed);
        for (i, got) in base.logits[id].iter().enumerate() {
            let want = &want[prompt.len() - 1 + i];
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
            for (a, b) in ls.iter().zip(&base.logits[id]) {
                diff = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(diff, f32::max);
            }
            tokens_differ += plain.tokens[id]
                .iter()
                .zip(&base.tokens[id])
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
    fn decoder_tp_equal_and_matches_reference_on_the_emulator() {
        decoder_matches_reference(&Device::emulator()).unwrap();
    }
}
