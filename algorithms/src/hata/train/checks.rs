//! HATA's hash-training kernels against the float64 reference: one step's pieces (soft
//! hashes, similarity and column sums, `WᵀW − I`, the gradient, the update, the loss), then
//! whole mini-batch runs of [`HashTrainer`] (weights and loss history after several SGD
//! steps); on a GPU also the recall gain of a real training run.

use crate::hata::train::kernels::{
    hash_train_finish, hash_train_forward, hash_train_gram, hash_train_update, FORWARD_ROWS,
    FORWARD_WARPS, TILE,
};
use crate::hata::train::reference as train_ref;
use crate::hata::train::{
    random_weights, recall_at, samples_from_capture, HashTrainer, HeadSamples, PlantedCapture, Rng,
    SampleOptions, TrainOptions, Trained,
};
use kiln_runtime::{Device, LaunchConfig};

use crate::verify::{ensure, rel_err, VerifyError};

/// Random samples of one head: rows `N(0, 1)`, a third of the labels in [1, 20], the rest −1.
pub(super) fn random_head(dim: usize, nq: usize, nk: usize, n: usize, seed: u64) -> HeadSamples {
    let mut rng = Rng::new(seed);
    let mut rows =
        |count: usize| -> Vec<f32> { (0..count * dim).map(|_| rng.normal() as f32).collect() };
    let (queries, keys) = (rows(nq), rows(nk));
    let mut rng = Rng::new(seed ^ 0x5eed);
    HeadSamples {
        dim,
        queries,
        keys,
        query: (0..n).map(|_| rng.below(nq) as u32).collect(),
        key: (0..n).map(|_| rng.below(nk) as u32).collect(),
        label: (0..n)
            .map(|_| {
                if rng.uniform() < 1.0 / 3.0 {
                    1.0 + 19.0 * rng.uniform() as f32
                } else {
                    -1.0
                }
            })
            .collect(),
    }
}

/// The weight decay of [`step_case`] without `exact`: large, so that a wrong decay term
/// shows in f32.
const WEIGHT_DECAY: f64 = 0.25;

pub(super) fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Weights as they are after some training: orthonormal columns (Gram–Schmidt; columns
/// beyond `dim` stay `N(0, 1/dim)`) plus `N(0, 0.1²/dim)` noise, so that `‖WᵀW − I‖` is
/// small.
pub(super) fn near_orthonormal(kv: usize, dim: usize, rbit: usize, seed: u64) -> Vec<f32> {
    let scale = 1.0 / (dim as f64).sqrt();
    let mut w: Vec<f64> = random_weights(kv, dim, rbit, seed)
        .iter()
        .map(|&v| v as f64 * scale)
        .collect();
    for h in 0..kv {
        let wh = &mut w[h * dim * rbit..][..dim * rbit];
        for c in 0..rbit.min(dim) {
            for p in 0..c {
                let d: f64 = (0..dim).map(|i| wh[i * rbit + c] * wh[i * rbit + p]).sum();
                for i in 0..dim {
                    wh[i * rbit + c] -= d * wh[i * rbit + p];
                }
            }
            let n = (0..dim)
                .map(|i| wh[i * rbit + c].powi(2))
                .sum::<f64>()
                .sqrt();
            for i in 0..dim {
                wh[i * rbit + c] /= n;
            }
        }
    }
    let noise = random_weights(kv, dim, rbit, seed ^ 0xfeed);
    w.iter()
        .zip(noise)
        .map(|(a, b)| (a + 0.1 * scale * b as f64) as f32)
        .collect()
}

/// Weights with exactly orthonormal columns in f32: column `r` is `±e_{π(r)}` for a seeded
/// permutation `π` (`rbit ≤ dim`). `WᵀW − I` is then exactly 0 on the device too, the
/// orthogonality gradient vanishes, and the gradient is the data terms' alone.
fn signed_permutation(kv: usize, dim: usize, rbit: usize, seed: u64) -> Vec<f32> {
    let mut w = vec![0.0f32; kv * dim * rbit];
    let mut rng = Rng::new(seed);
    for h in 0..kv {
        let mut rows: Vec<usize> = (0..dim).collect();
        for i in (1..dim).rev() {
            rows.swap(i, rng.below(i + 1));
        }
        for r in 0..rbit {
            let sign = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
            w[(h * dim + rows[r]) * rbit + r] = sign;
        }
    }
    w
}

/// One full-batch step of the four kernels on two heads of different sizes, each piece
/// against the reference: `h(q)`, `h(k)` (max abs error), the similarity sum, the column
/// sums, `A = WᵀW − I`, `‖A‖²`, the gradient plus weight decay (the velocity after a first
/// step), the updated weights (`lr = 1`: `W' = W − G − decay·W`) and the recorded loss. Rows are `N(0, 5²)`; head 1 has all labels 0 and
/// rows shifted by a constant vector, so that its data gradient is the balance term's alone.
/// With `exact`, `W` is a signed permutation ([`signed_permutation`]) and there is no decay:
/// the gradient is the data terms' alone (they are a few percent of it otherwise, below what
/// an f32 comparison of the whole gradient resolves); else `W` is [`near_orthonormal`] and
/// the decay is [`WEIGHT_DECAY`] (large, so that a wrong decay term shows).
fn step_case(
    dev: &Device,
    dim: usize,
    rbit: usize,
    exact: bool,
    seed: u64,
) -> Result<(), VerifyError> {
    let sizes = [70usize, 45];
    let mut heads: Vec<HeadSamples> = sizes
        .iter()
        .enumerate()
        .map(|(h, &n)| random_head(dim, 5 + h, 30, n, seed + h as u64))
        .collect();
    for v in heads
        .iter_mut()
        .flat_map(|s| s.queries.iter_mut().chain(s.keys.iter_mut()))
    {
        *v *= 5.0;
    }
    let s1 = &mut heads[1];
    s1.label.iter_mut().for_each(|l| *l = 0.0);
    for (i, v) in s1.queries.iter_mut().chain(s1.keys.iter_mut()).enumerate() {
        *v += if (i % dim).is_multiple_of(3) {
            4.0
        } else {
            -1.0
        };
    }
    let kv = heads.len();
    let (w0, decay) = if exact {
        (signed_permutation(kv, dim, rbit, seed), 0.0)
    } else {
        (near_orthonormal(kv, dim, rbit, seed), WEIGHT_DECAY)
    };
    // concatenated layout, as HashTrainer uploads it
    let (mut queries, mut keys, mut sq, mut sk, mut label) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut offsets = vec![0u32];
    for s in &heads {
        let (q0, k0) = ((queries.len() / dim) as u32, (keys.len() / dim) as u32);
        queries.extend_from_slice(&s.queries);
        keys.extend_from_slice(&s.keys);
        sq.extend(s.query.iter().map(|&i| q0 + i));
        sk.extend(s.key.iter().map(|&i| k0 + i));
        label.extend_from_slice(&s.label);
        offsets.push(label.len() as u32);
    }
    // head h's samples are order[offsets[h]..offsets[h + 1]]: each head's, reversed
    let order: Vec<u32> = {
        let mut o = Vec::with_capacity(label.len());
        for h in 0..kv {
            o.extend((offsets[h]..offsets[h + 1]).rev());
        }
        o
    };
    let width = *sizes.iter().max().unwrap_or(&1);
    let up = |v: &[f32]| dev.upload(v);
    let (d_q, d_k, d_l) = (up(&queries)?, up(&keys)?, up(&label)?);
    let (d_sq, d_sk) = (dev.upload(&sq)?, dev.upload(&sk)?);
    let (d_order, d_off) = (dev.upload(&order)?, dev.upload(&offsets)?);
    let mut hq = dev.upload(&vec![f32::NAN; kv * width * rbit])?;
    let mut hk = dev.upload(&vec![f32::NAN; kv * width * rbit])?;
    let mut stats = dev.zeros::<f32>(2 * kv)?;
    let mut msum = dev.zeros::<f32>(kv * rbit)?;
    let mut a = dev.upload(&vec![f32::NAN; kv * rbit * rbit])?;
    let w = dev.upload(&w0)?;
    let mut w_next = dev.upload(&vec![f32::NAN; w0.len()])?;
    let mut velocity = dev.upload(&vec![f32::NAN; w0.len()])?;
    let mut losses = dev.upload(&vec![f32::NAN; kv])?;
    let (kv32, dim32, rbit32, width32) = (kv as u32, dim as u32, rbit as u32, width as u32);
    let forward = hash_train_forward::spec().rbit(rbit32).build(dev)?;
    hash_train_forward::launch(
        &forward,
        &LaunchConfig {
            grid: (width32.div_ceil(FORWARD_ROWS * FORWARD_WARPS), kv32, 1),
            block: (FORWARD_WARPS * 32, 1, 1),
            dyn_shared_bytes: 0,
        },
        &d_q,
        &d_k,
        &w,
        &d_sq,
        &d_sk,
        &d_l,
        &d_order,
        &d_off,
        &mut hq,
        &mut hk,
        &mut stats,
        &mut msum,
        dim32,
        0,
        1,
        width32,
    )?;
    let gram = hash_train_gram::spec().build(dev)?;
    hash_train_gram::launch(
        &gram,
        &LaunchConfig {
            grid: ((rbit32 * rbit32).div_ceil(256), kv32, 1),
            block: (256, 1, 1),
            dyn_shared_bytes: 0,
        },
        &w,
        &mut a,
        &mut stats,
        dim32,
        rbit32,
    )?;
    let got_hq = dev.download(&hq)?;
    let got_hk = dev.download(&hk)?;
    let got_stats = dev.download(&stats)?;
    let got_msum = dev.download(&msum)?;
    let got_a = dev.download(&a)?;
    let update = hash_train_update::spec().build(dev)?;
    hash_train_update::launch(
        &update,
        &LaunchConfig {
            grid: (dim32.div_ceil(TILE) * (rbit32 / TILE), kv32, 1),
            block: (256, 1, 1),
            dyn_shared_bytes: 0,
        },
        &d_q,
        &d_k,
        &d_sq,
        &d_sk,
        &d_l,
        &d_order,
        &d_off,
        &hq,
        &hk,
        &msum,
        &a,
        &stats,
        &w,
        &mut w_next,
        &mut velocity,
        dim32,
        rbit32,
        0,
        1,
        width32,
        1.0,
        0.0,
        decay as f32,
        true,
    )?;
    let finish = hash_train_finish::spec().build(dev)?;
    hash_train_finish::launch(
        &finish,
        &LaunchConfig::linear(kv32, 256),
        &d_off,
        &mut stats,
        &mut msum,
        &mut losses,
        rbit32,
        0,
        1,
        0,
    )?;
    let got_w = dev.download(&w_next)?;
    let got_v = dev.download(&velocity)?;
    let got_loss = dev.download(&losses)?;
    ensure!(
        dev.download(&stats)?.iter().all(|&v| v == 0.0)
            && dev.download(&msum)?.iter().all(|&v| v == 0.0),
        "hash_train_finish must zero the accumulators"
    );
    let per_head = dim * rbit;
    for (h, s) in heads.iter().enumerate() {
        let wh = wide(&w0[h * per_head..][..per_head]);
        let lo = offsets[h] as usize;
        let batch: Vec<u32> = order[lo..offsets[h + 1] as usize]
            .iter()
            .map(|&i| i - lo as u32)
            .collect();
        // soft hashes, in window order
        let mut worst = 0.0f64;
        let mut sim = 0.0f64;
        let mut colsum = vec![0.0f64; rbit];
        for (j, &i) in batch.iter().enumerate() {
            let q = &s.queries[s.query[i as usize] as usize * dim..][..dim];
            let k = &s.keys[s.key[i as usize] as usize * dim..][..dim];
            let (want_q, want_k) = (
                train_ref::soft_hash(q, &wh, rbit),
                train_ref::soft_hash(k, &wh, rbit),
            );
            let row = (h * width + j) * rbit;
            for r in 0..rbit {
                worst = worst
                    .max((got_hq[row + r] as f64 - want_q[r]).abs())
                    .max((got_hk[row + r] as f64 - want_k[r]).abs());
                colsum[r] += want_q[r] + want_k[r];
            }
            sim += s.label[i as usize] as f64
                * want_q
                    .iter()
                    .zip(&want_k)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f64>();
        }
        ensure!(
            worst < 2e-6,
            "head {h}: soft hash max abs error {worst:.2e}"
        );
        let e_sim = (got_stats[2 * h] as f64 - sim).abs() / sim.abs().max(1.0);
        ensure!(
            e_sim < 1e-5,
            "head {h}: similarity sum {} vs {sim} ({e_sim:.2e})",
            got_stats[2 * h]
        );
        let e_col = rel_err(&wide(&got_msum[h * rbit..][..rbit]), &colsum);
        ensure!(
            e_col < 1e-5,
            "head {h}: column sums, relative error {e_col:.2e}"
        );
        let want_a = train_ref::gram_minus_identity(&wh, dim, rbit);
        let e_a = rel_err(&wide(&got_a[h * rbit * rbit..][..rbit * rbit]), &want_a);
        ensure!(e_a < 1e-5, "head {h}: WᵀW − I, relative error {e_a:.2e}");
        let norm2: f64 = want_a.iter().map(|v| v * v).sum();
        let e_n = (got_stats[2 * h + 1] as f64 - norm2).abs() / norm2.max(1e-3);
        ensure!(e_n < 1e-5, "head {h}: ‖A‖², relative error {e_n:.2e}");
        // gradient: the velocity holds it (first step), and W' = W − G (lr 1)
        let (parts, mut grad) = train_ref::loss_and_grad(&wh, rbit, s, &batch);
        grad.iter_mut().zip(&wh).for_each(|(g, w)| *g += decay * w);
        let e_g = rel_err(&wide(&got_v[h * per_head..][..per_head]), &grad);
        ensure!(e_g < 1e-5, "head {h}: gradient, relative error {e_g:.2e}");
        let want_w: Vec<f64> = wh.iter().zip(&grad).map(|(w, g)| w - g).collect();
        let e_w = rel_err(&wide(&got_w[h * per_head..][..per_head]), &want_w);
        ensure!(
            e_w < 1e-6,
            "head {h}: updated weights, relative error {e_w:.2e}"
        );
        if exact {
            ensure!(
                got_stats[2 * h + 1] == 0.0 && norm2 == 0.0,
                "head {h}: a signed permutation must give A = 0 exactly"
            );
        }
        let e_l = (got_loss[h] as f64 - parts.total()).abs() / parts.total();
        ensure!(
            e_l < 1e-5,
            "head {h}: loss {} vs {} ({e_l:.2e})",
            got_loss[h],
            parts.total()
        );
    }
    Ok(())
}

/// [`HashTrainer`] for `epochs` epochs of mini-batches (`batch`) on two heads of different
/// sizes (one of them with fewer samples than steps would need: uneven windows) against
/// [`train_ref::train`] from the same initial weights: the final weights and the whole loss
/// history.
fn trainer_case(
    dev: &Device,
    dim: usize,
    rbit: usize,
    batch: u32,
    epochs: u32,
    seed: u64,
) -> Result<(), VerifyError> {
    let heads = vec![
        random_head(dim, 6, 40, 150, seed),
        random_head(dim, 3, 25, 97, seed + 1),
    ];
    let mut options = TrainOptions::new(rbit as u32, epochs, seed);
    options.batch = batch;
    let w0 = random_weights(heads.len(), dim, rbit, seed);
    let trainer = HashTrainer::new(dev, options).map_err(mismatch)?;
    let (mut reported, mut epoch_losses) = (0usize, 0u32);
    let trained = trainer
        .train_from(&heads, &w0, &mut |p| {
            reported += 1;
            epoch_losses += p.epoch_loss.is_some() as u32;
        })
        .map_err(mismatch)?;
    let (want_w, want_losses) = train_ref::train(&heads, &wide(&w0), &options);
    ensure!(
        reported == trained.steps_per_epoch * epochs as usize && epoch_losses == epochs,
        "{reported} progress reports ({epoch_losses} with an epoch loss) for {} steps",
        trained.steps_per_epoch * epochs as usize
    );
    let [e_w, e_dw, e_l] = run_errors(&trained, &w0, &want_w, &want_losses);
    ensure!(
        e_w < 1e-5 && e_dw < 1e-4 && e_l < 1e-5,
        "after {} steps: relative error W {e_w:.2e}, W − W₀ {e_dw:.2e}, losses {e_l:.2e}",
        want_losses.len() / heads.len()
    );
    Ok(())
}

/// Relative errors of a device run `trained` from `w0` against the reference's final
/// weights and loss history: of the weights, of how far they moved (`W − W₀`, the part
/// training changed), and of the losses.
pub(super) fn run_errors(
    trained: &Trained,
    w0: &[f32],
    want_w: &[f64],
    want_losses: &[f64],
) -> [f64; 3] {
    let moved: Vec<f64> = want_w.iter().zip(w0).map(|(a, b)| a - *b as f64).collect();
    let got_moved: Vec<f64> = trained
        .weights
        .iter()
        .zip(w0)
        .map(|(a, b)| (*a - *b) as f64)
        .collect();
    [
        rel_err(&wide(&trained.weights), want_w),
        rel_err(&got_moved, &moved),
        rel_err(&wide(&trained.losses), want_losses),
    ]
}

/// Training on the device where it matters: a planted capture ([`PlantedCapture`], norms
/// ≈ 34, centres in a 32-dimensional subspace of R^dim), samples drawn as the pipeline
/// describes, `epochs` epochs of [`HashTrainer`] with the pipeline's settings; on held-out
/// sequences of the same heads, every head's trained weights must find at least 5 points
/// more of the exact top 5% keys (recall over the last 64 positions) than its random
/// initial weights.
pub fn recall_case(dev: &Device, dim: usize, rbit: usize, epochs: u32) -> Result<(), VerifyError> {
    let spec = PlantedCapture {
        batch: 8,
        heads: 4,
        kv_heads: 2,
        seq: 512,
        dim,
        subspace: 32.min(dim),
        clusters: 16,
        signal: 24.0,
        noise: 3.0,
        seed: 71,
    };
    let (q, k) = spec.generate(1);
    let heads =
        samples_from_capture(&q, &k, &spec.shape(), &SampleOptions::default()).map_err(mismatch)?;
    let options = TrainOptions::new(rbit as u32, epochs, 5);
    let trained = HashTrainer::new(dev, options)
        .and_then(|t| t.train(&heads))
        .map_err(mismatch)?;
    let random = random_weights(spec.kv_heads, dim, rbit, options.seed);
    let held = PlantedCapture { batch: 2, ..spec };
    let (hq, hk) = held.generate(99);
    let (seq, top) = (spec.seq, spec.seq / 20);
    for h in 0..spec.kv_heads {
        let w0 = &random[h * dim * rbit..][..dim * rbit];
        let (mut before, mut after) = (0.0, 0.0);
        for b in 0..held.batch {
            let keys = &hk[((b * spec.kv_heads + h) * seq) * dim..][..seq * dim];
            // the group's first query head
            let qh = h * (spec.heads / spec.kv_heads);
            let queries = &hq[((b * spec.heads + qh) * seq + seq - 64) * dim..][..64 * dim];
            let n = held.batch as f64;
            let mine = trained.head_weights(h).unwrap_or_default();
            before += recall_at(w0, dim, rbit, queries, keys, top).map_err(mismatch)? / n;
            after += recall_at(mine, dim, rbit, queries, keys, top).map_err(mismatch)? / n;
        }
        ensure!(
            after > before + 0.05,
            "head {h}: recall@{top} of trained weights {after:.3}, of random weights {before:.3}"
        );
    }
    Ok(())
}

pub(super) fn mismatch(e: impl std::fmt::Display) -> VerifyError {
    VerifyError::Mismatch(e.to_string())
}

/// One step's pieces (dim 72 with a tile tail, rbit 64; with exactly orthonormal and with
/// near-orthonormal weights) and a whole mini-batch run (dim 40, rbit 64, 2 epochs of 3
/// steps); on a GPU also the pieces at dim 128 with rbit 128 and 256, a 15-step run at
/// dim 128, rbit 128, and the recall gain of 30 epochs of training ([`recall_case`]).
pub fn hash_train_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    step_case(dev, 72, 64, true, 60)?;
    step_case(dev, 72, 64, false, 61)?;
    trainer_case(dev, 40, 64, 64, 2, 62)?;
    if dev.is_gpu() {
        step_case(dev, 128, 128, true, 63)?;
        step_case(dev, 128, 128, false, 64)?;
        step_case(dev, 128, 256, false, 66)?;
        trainer_case(dev, 128, 128, 32, 3, 65)?;
        recall_case(dev, 128, 128, 30)?;
    }
    Ok(())
}
