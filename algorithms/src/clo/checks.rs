//! CLO's kernels and host pipeline against the float64 reference, on whichever device is
//! present (small shapes on the emulator, where the host cache is emulated mapped memory).
//! Every step of a short decode with drifting queries is checked: the hit test of each GQA
//! group (against [`reference::group_misses`], ties within f32 rounding excepted), the
//! selection of a miss (recall of the float64 HATA top-k, sinks in, the recent ring out), the
//! slot plan (exactly [`reference::plan`] of the kernel's selection: kept rows stay in their
//! slots), every slot row and ring row bit for bit against the host cache, the appended
//! token in the host cache, and the output and LSE against float64 attention over the
//! slots. The first step runs eagerly, the others replay the captured graph; the two
//! baselines (CPU gather, per-row copies) must give bit-identical outputs.

use crate::attention::reference as attention_reference;
use crate::clo::fidelity::drift;
use crate::clo::kernels::EMPTY;
use crate::clo::model::{threshold, CloConfig, CloModel, LayerParams, Transfer};
use crate::clo::reference;
use crate::hata::reference as hata_reference;
use crate::verify::{ensure, ensure_eq, rel_err, Real, Rng, VerifyError};
use kiln::prelude::Float;
use kiln::Device;

fn mismatch(e: impl std::fmt::Display) -> VerifyError {
    VerifyError::Mismatch(e.to_string())
}

fn wide<T: Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f32() as f64).collect()
}

/// The float64 HATA selection of one (batch, KV head) at a step over `valid` tokens: scores
/// of the tokens before the recent ring, sinks first, top `budget`.
fn reference_selection(
    cfg: &CloConfig,
    keys: &[f64],
    w: &[f64],
    q_group: &[f64],
    (b, h, valid): (usize, usize, usize),
) -> Vec<u32> {
    let (hk, d, rbit, cap) = (
        cfg.kv_heads as usize,
        cfg.dim as usize,
        cfg.rbit as usize,
        cfg.capacity as usize,
    );
    let w_head = &w[h * d * rbit..][..d * rbit];
    let q_codes: Vec<Vec<u32>> = q_group
        .chunks(d)
        .map(|q| hata_reference::encode(q, w_head, rbit))
        .collect();
    let q_refs: Vec<&[u32]> = q_codes.iter().map(|c| c.as_slice()).collect();
    let open = valid - cfg.recent as usize;
    let scores: Vec<f64> = (0..open)
        .map(|s| {
            if s < cfg.sink as usize {
                return f64::INFINITY;
            }
            let key = &keys[((b * cap + s) * hk + h) * d..][..d];
            let norm = key.iter().map(|x| x * x).sum::<f64>().sqrt();
            let code = hata_reference::encode(key, w_head, rbit);
            hata_reference::score(&q_refs, &code, rbit, cfg.use_norms.then_some(norm))
        })
        .collect();
    hata_reference::top_k(&scores, cfg.budget as usize)
}

/// One decode of `steps` tokens after a prefill of `prefill` on a `cfg` model (and the two
/// baselines on copies of it), checked step by step as the module docs say.
fn clo_case<T: Real + Float>(
    dev: &Device,
    cfg: CloConfig,
    prefill: usize,
    steps: usize,
    seed: u64,
) -> Result<(), VerifyError> {
    let mut rng = Rng::new(seed);
    let (layers, b, h, hk, d) = (
        cfg.layers as usize,
        cfg.batch as usize,
        cfg.heads as usize,
        cfg.kv_heads as usize,
        cfg.dim as usize,
    );
    let (cap, g, budget, recent) = (
        cfg.capacity as usize,
        h / hk,
        cfg.budget as usize,
        cfg.recent as usize,
    );
    let round = |v: Vec<f32>| -> Vec<T> { v.into_iter().map(T::from_f32).collect() };
    let params: Vec<LayerParams> = (0..layers)
        .map(|_| LayerParams {
            weights: rng.f32s(hk * d * cfg.rbit as usize),
            importance: (0..h).map(|_| (rng.f32() + 1.0) / 2.0).collect(),
        })
        .collect();
    let kv: Vec<(Vec<T>, Vec<T>)> = (0..layers)
        .map(|_| {
            (
                round(rng.f32s(b * prefill * hk * d)),
                round(rng.f32s(b * prefill * hk * d)),
            )
        })
        .collect();
    let kv_refs: Vec<(&[T], &[T])> = kv.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    let transfers = [
        Transfer::ZeroCopy,
        Transfer::HostGather,
        Transfer::RowCopies,
    ];
    let mut models = Vec::new();
    for _ in transfers {
        let mut m = CloModel::<T>::new(dev, cfg, &params).map_err(mismatch)?;
        m.prefill(&kv_refs, prefill as u32).map_err(mismatch)?;
        models.push(m);
    }
    let tau: Vec<Vec<f64>> = params
        .iter()
        .map(|p| {
            p.importance
                .iter()
                .map(|&s| threshold(cfg.eta, cfg.p, s as f64) as f32 as f64)
                .collect()
        })
        .collect();
    let w: Vec<Vec<f64>> = params
        .iter()
        .map(|p| p.weights.iter().map(|&x| x as f64).collect())
        .collect();
    // the reference state: labels [B, H, D] and slots [B·H_kv][budget] per layer
    let mut labels = vec![vec![0.0f64; b * h * d]; layers];
    let mut slots = vec![vec![vec![EMPTY; budget]; b * hk]; layers];
    let mut queries: Vec<Vec<f64>> = (0..layers)
        .map(|_| rng.f32s(b * h * d).iter().map(|&x| x as f64).collect())
        .collect();
    let (mut hits, mut misses) = (0usize, 0usize);
    for step in 0..steps {
        let len = prefill + step;
        let mut inputs = Vec::new();
        for q in queries.iter_mut() {
            for head in q.chunks_mut(d) {
                let rho = 0.9 + 0.1 * (rng.f32() as f64 + 1.0) / 2.0;
                drift(head, rho, &mut rng);
            }
            let q_t = round(q.iter().map(|&x| x as f32).collect());
            inputs.push((
                q_t,
                round(rng.f32s(b * hk * d)),
                round(rng.f32s(b * hk * d)),
            ));
        }
        for m in models.iter_mut() {
            for (l, (q, k_new, v_new)) in inputs.iter().enumerate() {
                let i = m.inputs_mut(l).map_err(mismatch)?;
                dev.write(i.q, q)?;
                dev.write(i.k_new, k_new)?;
                dev.write(i.v_new, v_new)?;
            }
        }
        for (m, &t) in models.iter_mut().zip(&transfers) {
            m.step(t).map_err(mismatch)?;
        }
        let m = &models[0];
        for l in 0..layers {
            let (q_t, k_new, _) = &inputs[l];
            let (k_host, v_host) = m.host_kv(l).map_err(mismatch)?;
            for bb in 0..b {
                let at = (bb * cap + len) * hk * d;
                ensure_eq!(
                    &k_host[at..at + hk * d],
                    &k_new[bb * hk * d..][..hk * d],
                    "step {step}, layer {l}: appended key in the host cache"
                );
            }
            let keys = wide(k_host);
            let (ids_buf, miss_buf) = m.selection(l).map_err(mismatch)?;
            let (got_ids, got_miss) = (dev.download(ids_buf)?, dev.download(miss_buf)?);
            let view = m.slots(l).map_err(mismatch)?;
            let got_slots = dev.download(view.ids)?;
            let (k_slot, v_slot) = (dev.download(view.k)?, dev.download(view.v)?);
            let qw = wide(q_t);
            for row in 0..b * hk {
                let (bb, kh) = (row / hk, row % hk);
                let heads = (bb * h + kh * g) * d..(bb * h + (kh + 1) * g) * d;
                let (want_miss, margin) = reference::group_misses(
                    &qw[heads.clone()],
                    &labels[l][heads.clone()],
                    &tau[l][kh * g..(kh + 1) * g],
                    d,
                );
                let miss = got_miss[row] != 0;
                ensure!(
                    miss == want_miss || margin < 1e-5,
                    "step {step}, layer {l}, row {row}: miss {miss}, reference {want_miss}"
                );
                if miss {
                    labels[l][heads.clone()].copy_from_slice(&qw[heads.clone()]);
                    misses += 1;
                    let mine = &got_ids[row * budget..][..budget];
                    let want =
                        reference_selection(&cfg, &keys, &w[l], &qw[heads], (bb, kh, len + 1));
                    let recall = hata_reference::recall(mine, &want);
                    ensure!(
                        recall >= 0.9,
                        "step {step}, layer {l}, row {row}: recall {recall:.3} of the f64 selection"
                    );
                    ensure!(
                        mine.iter().all(|&t| (t as usize) < len + 1 - recent)
                            && (0..cfg.sink).all(|s| mine.contains(&s)),
                        "step {step}, layer {l}, row {row}: selection {mine:?} takes a ring token or misses a sink"
                    );
                    slots[l][row] = reference::plan(&slots[l][row], mine).0;
                } else {
                    hits += 1;
                }
                ensure_eq!(
                    &got_slots[row * budget..][..budget],
                    &slots[l][row][..],
                    "step {step}, layer {l}, row {row}: slot ids"
                );
                let slot_count = cfg.slots() as usize;
                let ring = (len + 1 - recent..=len).map(|p| (budget + p % recent, p));
                let held = slots[l][row]
                    .iter()
                    .enumerate()
                    .map(|(p, &t)| (p, t as usize));
                for (p, tok) in held.chain(ring) {
                    let at = ((bb * slot_count + p) * hk + kh) * d;
                    let src = ((bb * cap + tok) * hk + kh) * d;
                    ensure!(
                        k_slot[at..at + d] == k_host[src..src + d]
                            && v_slot[at..at + d] == v_host[src..src + d],
                        "step {step}, layer {l}, row {row}: slot {p} does not hold token {tok}"
                    );
                }
            }
            let (out, lse) = m.output(l).map_err(mismatch)?;
            let (want_o, want_lse) = attention_reference::decode(
                b,
                h,
                hk,
                cfg.slots() as usize,
                d,
                &qw,
                &wide(&k_slot),
                &wide(&v_slot),
                None,
                cfg.slots() as usize,
                1.0 / (d as f64).sqrt(),
            );
            let got_o = dev.download(out)?;
            let got_lse: Vec<f64> = dev.download(lse)?.iter().map(|&x| x as f64).collect();
            let (eo, el) = (
                rel_err(&wide(&got_o), &want_o),
                rel_err(&got_lse, &want_lse),
            );
            ensure!(
                eo < 1e-2 && el < 1e-5,
                "step {step}, layer {l}: relative error O {eo:.2e}, LSE {el:.2e}"
            );
            for (other, t) in models[1..].iter().zip(&transfers[1..]) {
                let o = dev.download(other.output(l).map_err(mismatch)?.0)?;
                ensure!(
                    o == got_o,
                    "step {step}, layer {l}: the {t:?} baseline's output differs from zero-copy"
                );
            }
        }
    }
    ensure!(
        hits > 0 && misses > 0,
        "the drift must give both hits ({hits}) and misses ({misses})"
    );
    let rate = models[0].hit_rate().map_err(mismatch)?;
    let want_rate = hits as f64 / (hits + misses) as f64;
    ensure!(
        (rate - want_rate).abs() < 1e-12,
        "hit rate {rate}, counted {want_rate}"
    );
    Ok(())
}

/// The pipeline on two layers (bf16, D 128, groups of 4) and on one (f16, D 64, groups of
/// 2, rbit 256), with enough steps for hits, misses and replays of the graph.
pub fn clo_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    let big = dev.is_gpu();
    let prefill = if big { 4096 } else { 112 };
    let cfg = |layers, heads, dim, rbit, budget| CloConfig {
        layers,
        batch: if big { 2 } else { 1 },
        heads,
        kv_heads: 2,
        dim,
        rbit,
        capacity: prefill as u32 + 16,
        budget,
        recent: 8,
        sink: 4,
        use_norms: true,
        eta: 0.9,
        p: 2.0,
    };
    let budget = if big { 512 } else { 32 };
    clo_case::<half::bf16>(dev, cfg(2, 8, 128, 128, budget), prefill, 6, 61)?;
    clo_case::<half::f16>(dev, cfg(1, 4, 64, 256, budget), prefill, 5, 62)
}
