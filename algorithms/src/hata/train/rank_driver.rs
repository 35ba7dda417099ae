//! The device side of [`Objective::Ranking`](super::Objective): the loop of
//! [`HashTrainer::train_from`] over each epoch's pairs with the ranking kernels
//! ([`super::rank_kernels`]), the same batch plan as [`super::rank::train`].

use kiln::{Kernel, LaunchConfig};

use super::kernels::{gram_config, hash_train_gram};
use super::rank::{epoch_pairs, mean_key_norm, RankOptions};
use super::rank_kernels::{
    hash_rank_finish, hash_rank_forward, hash_rank_update, RANK_FORWARD_WARPS,
};
use super::{
    report_step, steps_per_epoch, HashTrainer, HeadSamples, Progress, TrainError, Trained,
};

/// The kernels of a ranking step for `rbit` bits: forward, Gram, update, finish.
pub(super) fn build(device: &kiln::Device, rbit: u32) -> Result<[Kernel; 4], TrainError> {
    Ok([
        hash_rank_forward::spec().rbit(rbit).build(device)?,
        hash_train_gram::spec().build(device)?,
        hash_rank_update::spec().build(device)?,
        hash_rank_finish::spec().build(device)?,
    ])
}

/// Trains `initial` (already checked against `heads`) with the ranking objective `rank`.
pub(super) fn train(
    trainer: &HashTrainer,
    heads: &[HeadSamples],
    initial: &[f32],
    rank: &RankOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Trained, TrainError> {
    let o = trainer.options;
    let dev = &trainer.device;
    let (kv_heads, dim, rbit) = (heads.len(), heads[0].dim, o.rbit as usize);
    let up = trainer.upload(heads)?;
    let first_pairs: Vec<usize> = heads
        .iter()
        .enumerate()
        .map(|(h, s)| epoch_pairs(s, o.seed, 0, h).len())
        .collect();
    let n_pairs: usize = first_pairs.iter().sum();
    if n_pairs == 0 {
        return Err(TrainError::Invalid(
            "no head has a relevant sample ranked above another one: nothing to rank".into(),
        ));
    }
    let steps = steps_per_epoch(&first_pairs, o.batch as usize);
    let width = first_pairs
        .iter()
        .map(|&n| n.div_ceil(steps))
        .max()
        .unwrap_or(1)
        .max(1);
    let total_steps = o.epochs as usize * steps;
    let fits = |v: usize| v < u32::MAX as usize;
    if !fits(kv_heads * width * 3 * dim.max(rbit))
        || !fits(kv_heads * rbit * rbit)
        || !fits(total_steps * kv_heads)
    {
        return Err(TrainError::Invalid(format!(
            "{kv_heads} heads × dim {dim} × {rbit} bits × batch {width} × {total_steps} steps overflow 32-bit indices"
        )));
    }
    let scale: Vec<f32> = heads
        .iter()
        .map(|s| (1.0 / mean_key_norm(s)) as f32)
        .collect();
    let key_scale = dev.upload(&scale)?;
    let mut units = dev.zeros::<f32>(kv_heads * width * 3 * dim)?;
    let mut dz = dev.zeros::<f32>(kv_heads * width * 3 * rbit)?;
    let mut stats = dev.zeros::<f32>(2 * kv_heads)?;
    let mut a = dev.zeros::<f32>(kv_heads * rbit * rbit)?;
    let mut w = dev.upload(initial)?;
    let mut w_next = dev.zeros::<f32>(initial.len())?;
    let mut velocity = dev.zeros::<f32>(initial.len())?;
    let mut losses = dev.zeros::<f32>(total_steps * kv_heads)?;
    let mut positive = dev.zeros::<u32>(n_pairs)?;
    let mut other = dev.zeros::<u32>(n_pairs)?;
    let mut weight = dev.zeros::<f32>(n_pairs)?;
    let mut offsets_host = vec![0u32];
    for &n in &first_pairs {
        offsets_host.push(offsets_host.last().copied().unwrap_or(0) + n as u32);
    }
    let offsets = dev.upload(&offsets_host)?;
    let (kvh, dim32, rbit32, width32, steps32) = (
        kv_heads as u32,
        dim as u32,
        o.rbit,
        width as u32,
        steps as u32,
    );
    let forward_cfg = LaunchConfig {
        grid: (width32.div_ceil(RANK_FORWARD_WARPS), kvh, 1),
        block: (RANK_FORWARD_WARPS * 32, 1, 1),
        dyn_shared_bytes: 0,
    };
    let gram_cfg = gram_config(rbit32, kvh);
    let update_cfg = LaunchConfig {
        grid: ((dim32 * rbit32).div_ceil(256), kvh, 1),
        block: (256, 1, 1),
        dyn_shared_bytes: 0,
    };
    let finish_cfg = LaunchConfig::linear(kvh, 256);
    let (forward, gram, update, finish) = (
        &trainer.forward,
        &trainer.gram,
        &trainer.update,
        &trainer.finish,
    );
    for epoch in 0..o.epochs {
        let (mut p, mut q, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for (h, s) in heads.iter().enumerate() {
            let base = up.sample_offsets[h] as u32;
            for pair in epoch_pairs(s, o.seed, epoch, h) {
                p.push(base + pair.positive);
                q.push(base + pair.other);
                c.push(pair.weight);
            }
        }
        dev.write(&mut positive, &p)?;
        dev.write(&mut other, &q)?;
        dev.write(&mut weight, &c)?;
        for t in 0..steps32 {
            hash_rank_forward::launch(
                forward,
                &forward_cfg,
                &up.queries,
                &up.keys,
                &w,
                &up.sample_query,
                &up.sample_key,
                &positive,
                &other,
                &weight,
                &offsets,
                &key_scale,
                &mut units,
                &mut dz,
                &mut stats,
                dim32,
                t,
                steps32,
                width32,
                rank.tau,
                rank.gamma,
            )?;
            hash_train_gram::launch(gram, &gram_cfg, &w, &mut a, &mut stats, dim32, rbit32)?;
            hash_rank_update::launch(
                update,
                &update_cfg,
                &units,
                &dz,
                &offsets,
                &a,
                &stats,
                &w,
                &mut w_next,
                &mut velocity,
                dim32,
                rbit32,
                t,
                steps32,
                width32,
                rank.orthogonality,
                o.lr,
                o.momentum,
                o.weight_decay,
                epoch == 0 && t == 0,
            )?;
            hash_rank_finish::launch(
                finish,
                &finish_cfg,
                &mut stats,
                &mut losses,
                kvh,
                rank.orthogonality,
                epoch * steps32 + t,
            )?;
            std::mem::swap(&mut w, &mut w_next);
            report_step(
                dev,
                &losses,
                (epoch, o.epochs),
                (t, steps32),
                kv_heads,
                progress,
            )?;
        }
    }
    Trained::download(dev, &w, &losses, (kv_heads, dim, rbit), steps)
}
