//! AdaCluster's kernels against their float64 references: the tensor-core assignment on
//! random centroids (both metrics), and whole layer calls through the host API — the
//! cluster-count search, a warm-started second call and the dense fallback — whose sort,
//! means, selection and sparse attention are each recomputed from the state the kernels
//! left. Inputs are random and clustered (never all zero); outputs are poisoned first.

use super::kmeans::kmeans_assign;
use super::layer::{AdaClusterAttention, AdaClusterConfig, AdaShape, Layout, Selection};
use super::reference;
use crate::verify::{ensure, ensure_eq, rel_err, widen, Real, Rng, VerifyError};
use kiln_runtime::{Device, LaunchConfig};

/// `p` problems of `n` points in `groups` planted clusters (centres of norm ≈ 3·√d, unit
/// noise), rounded to `T`.
fn clustered<T: Real>(rng: &mut Rng, p: usize, n: usize, d: usize, groups: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(p * n * d);
    for _ in 0..p {
        let centres: Vec<f32> = rng.f32s(groups * d).iter().map(|v| 6.0 * v).collect();
        for _ in 0..n {
            let g = rng.u32() as usize % groups;
            for e in 0..d {
                out.push(T::from_f32(centres[g * d + e] + 2.0 * rng.f32()));
            }
        }
    }
    out
}

/// [`kmeans_assign`] on 2 problems of 300 points and 40 centroids (a partial last tile of
/// both the points and the centroids) in 48 slots: ids where the reference's margin is
/// clear, distances everywhere.
fn assign_case<T: Real>(
    dev: &Device,
    d: usize,
    spherical: bool,
    seed: u64,
) -> Result<(), VerifyError> {
    let (p, n, k, kcap) = (2usize, 300usize, 40usize, 48usize);
    let mut rng = Rng::new(seed);
    let x = clustered::<T>(&mut rng, p, n, d, 7);
    let mut cent = Vec::with_capacity(p * kcap * d);
    let mut bias = vec![0.0f32; p * kcap];
    for pi in 0..p {
        for c in 0..kcap {
            let mut row: Vec<f32> = (0..d).map(|_| 4.0 * rng.f32()).collect();
            if spherical {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                row.iter_mut().for_each(|v| *v /= norm);
            }
            let row: Vec<T> = row.into_iter().map(T::from_f32).collect();
            if !spherical {
                bias[pi * kcap + c] = -0.5 * row.iter().map(|v| v.to_f32().powi(2)).sum::<f32>();
            }
            cent.extend(row);
        }
    }
    let kernel = kmeans_assign::spec()
        .t(T::DTYPE)
        .d(d as u32)
        .spherical(spherical)
        .build(dev)?;
    let xb = dev.upload(&x)?;
    let cb = dev.upload(&cent)?;
    let bb = dev.upload(&bias)?;
    let mut ids = dev.upload(&vec![u32::MAX; p * n])?;
    let mut dist = dev.upload(&vec![f32::NAN; p * n])?;
    let cfg = LaunchConfig {
        grid: (n.div_ceil(128) as u32, p as u32, 1),
        block: (128, 1, 1),
        dyn_shared_bytes: 0,
    };
    kmeans_assign::launch(
        &kernel,
        &cfg,
        &xb,
        &cb,
        &bb,
        &mut ids,
        &mut dist,
        n as u32,
        k as u32,
        kcap as u32,
    )?;
    let (ids, dist) = (dev.download(&ids)?, dev.download(&dist)?);
    let xf = widen(&x);
    let cf = widen(&cent);
    for pi in 0..p {
        let bias: Vec<f64> = bias[pi * kcap..][..k].iter().map(|&b| b as f64).collect();
        let (want, want_d, margin) = reference::assign(
            &xf[pi * n * d..][..n * d],
            &cf[pi * kcap * d..][..k * d],
            &bias,
            d,
            spherical,
        );
        for i in 0..n {
            let got = ids[pi * n + i];
            let scale = want_d[i].abs().max(1.0);
            if margin[i] > 1e-3 * scale {
                ensure_eq!(got, want[i], "problem {pi} point {i}: centroid");
            }
            ensure!(
                (dist[pi * n + i] as f64 - want_d[i]).abs() <= 1e-3 * scale,
                "problem {pi} point {i}: distance {} vs {}",
                dist[pi * n + i],
                want_d[i]
            );
        }
    }
    Ok(())
}

/// Everything one layer call left, recomputed in float64 from the kernels' own state: the
/// stable sorts of both sets, their means, the selection and the attention output.
fn verify_call<T: Real>(
    dev: &Device,
    layer: &AdaClusterAttention<T>,
    (q, k, v): (&[f64], &[f64], &[f64]),
    o: &[T],
    top_p: f64,
) -> Result<(), VerifyError> {
    let s = layer.shape();
    let (p, n, d) = (s.problems() as usize, s.seq as usize, s.dim as usize);
    let c = layer
        .clusters()
        .ok_or_else(|| VerifyError::Mismatch("the layer is not clustered".into()))?;
    let scale = 1.0 / (d as f64).sqrt();
    let lse = dev.download(layer.lse())?;
    let sel = dev.download(&c.selected.sel)?;
    let sel_n = dev.download(&c.selected.sel_n)?;
    let cap = c.selected.cap as usize;
    let mut sets = Vec::new();
    for (set, x) in [(&c.q, q), (&c.k, k)] {
        let kc = set.k as usize;
        let assign = dev.download(&set.assign)?;
        let order = dev.download(&set.order)?;
        let start = dev.download(&set.start)?;
        let mean = dev.download(&set.mean)?;
        let cent = dev.download(&set.cent)?;
        let bias = dev.download(&set.bias)?;
        let mut per = Vec::new();
        for pi in 0..p {
            let (want_o, want_s) = reference::sort(&assign[pi * n..][..n], kc);
            ensure_eq!(
                order[pi * n..][..n],
                want_o[..],
                "problem {pi}: sorted order"
            );
            ensure_eq!(
                start[pi * (kc + 1)..][..kc + 1],
                want_s[..],
                "problem {pi}: starts"
            );
            let means = reference::means(&x[pi * n * d..][..n * d], d, &want_o, &want_s);
            for (ci, m) in means.iter().enumerate() {
                if let Some(m) = m {
                    let got: Vec<f64> = mean[(pi * set.kcap as usize + ci) * d..][..d]
                        .iter()
                        .map(|&v| v as f64)
                        .collect();
                    let e = rel_err(&got, m);
                    ensure!(e < 1e-5, "problem {pi} cluster {ci}: mean error {e:.2e}");
                    // what the assignment compares with: the unit direction (spherical) or
                    // the mean, as T, and its bias
                    let slot = pi * set.kcap as usize + ci;
                    let c: Vec<f64> = cent[slot * d..][..d]
                        .iter()
                        .map(|v| v.to_f32() as f64)
                        .collect();
                    let norm = m.iter().map(|v| v * v).sum::<f64>().sqrt();
                    let want_c: Vec<f64> = if set.spherical {
                        m.iter().map(|v| v / norm).collect()
                    } else {
                        m.clone()
                    };
                    let e = rel_err(&c, &want_c);
                    ensure!(
                        e < 1e-2,
                        "problem {pi} cluster {ci}: centroid error {e:.2e}"
                    );
                    let want_b = if set.spherical {
                        0.0
                    } else {
                        -0.5 * c.iter().map(|v| v * v).sum::<f64>()
                    };
                    ensure!(
                        (bias[slot] as f64 - want_b).abs() <= 1e-4 * want_b.abs().max(1.0),
                        "problem {pi} cluster {ci}: bias {} vs {want_b}",
                        bias[slot]
                    );
                }
            }
            per.push((want_o, want_s, means));
        }
        sets.push(per);
    }
    let (mut got_o, mut want_o) = (Vec::new(), Vec::new());
    for pi in 0..p {
        let (q_order, q_start, q_means) = &sets[0][pi];
        let (k_order, k_start, k_means) = &sets[1][pi];
        let sizes: Vec<u32> = k_start.windows(2).map(|w| w[1] - w[0]).collect();
        for cq in 0..c.q.k as usize {
            let Some(qm) = &q_means[cq] else { continue };
            let at = pi * c.q.k as usize + cq;
            let got_sel = &sel[at * cap..][..sel_n[at] as usize];
            let (want_sel, prob) = reference::select(qm, k_means, &sizes, scale, top_p, cap);
            if got_sel != want_sel.as_slice() {
                // a cluster on the threshold may go either way in f32
                let diff = want_sel
                    .iter()
                    .chain(got_sel)
                    .filter(|j| !(want_sel.contains(j) && got_sel.contains(j)));
                let edge = want_sel
                    .iter()
                    .map(|&j| prob[j as usize])
                    .fold(1.0, f64::min);
                for &j in diff {
                    ensure!(
                        (prob[j as usize] - edge).abs() <= 1e-4 + 1e-3 * edge,
                        "problem {pi} query cluster {cq}: kept {got_sel:?}, reference {want_sel:?}"
                    );
                }
            }
            let keys = reference::kept_keys(got_sel, k_order, k_start);
            for &qi in &q_order[q_start[cq] as usize..q_start[cq + 1] as usize] {
                let row = &q[(pi * n + qi as usize) * d..][..d];
                let (want, want_lse) = reference::attend(
                    row,
                    &keys,
                    &k[pi * n * d..][..n * d],
                    &v[pi * n * d..][..n * d],
                    d,
                    scale,
                );
                let at = pi * n + qi as usize;
                got_o.extend(o[at * d..][..d].iter().map(|x| x.to_f32() as f64));
                want_o.extend(want);
                ensure!(
                    (lse[at] as f64 - want_lse).abs() <= 1e-2 * want_lse.abs().max(1.0),
                    "problem {pi} token {qi}: lse {} vs {want_lse}",
                    lse[at]
                );
            }
        }
    }
    ensure_eq!(got_o.len(), p * n * d, "every query row is attended once");
    let e = rel_err(&got_o, &want_o);
    let tol = if T::DTYPE == kiln_codegen::Dtype::Bf16 {
        1e-2
    } else {
        2e-3
    };
    ensure!(
        e < tol,
        "attention output error {e:.2e} (tolerance {tol:.0e})"
    );
    Ok(())
}

/// Q/K/V of one call (random, clustered; widened to f64) and the layer's output on them.
struct Call<T> {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    o: Vec<T>,
}

/// Runs `layer` once on fresh inputs, the output poisoned first.
fn fresh_call<T: Real>(
    dev: &Device,
    layer: &mut AdaClusterAttention<T>,
    rng: &mut Rng,
) -> Result<Call<T>, VerifyError> {
    let s = layer.shape();
    let (p, n, d) = (s.problems() as usize, s.seq as usize, s.dim as usize);
    let q = clustered::<T>(rng, p, n, d, 5);
    let k = clustered::<T>(rng, p, n, d, 5);
    let v: Vec<T> = rng.f32s(p * n * d).into_iter().map(T::from_f32).collect();
    let mut ob = dev.upload(&vec![T::NAN; p * n * d])?;
    layer.forward(
        &dev.upload(&q)?,
        &dev.upload(&k)?,
        &dev.upload(&v)?,
        &mut ob,
    )?;
    Ok(Call {
        q: widen(&q),
        k: widen(&k),
        v: widen(&v),
        o: dev.download(&ob)?,
    })
}

/// A layer of 2 heads × 1100 tokens (two sort tiles): the search, then a warm call on new
/// inputs, each verified; then a layer whose dense limit is tiny runs dense and matches
/// dense attention.
fn layer_case<T: Real>(dev: &Device, d: usize, seed: u64) -> Result<(), VerifyError> {
    let shape = AdaShape {
        batch: 1,
        heads: 2,
        seq: 1100,
        dim: d as u32,
    };
    let (p, n) = (2usize, 1100usize);
    let config = AdaClusterConfig {
        initial_clusters: Some(6),
        search_iters: 2,
        rounds: 2,
        warm_iters: 1,
        selection: Selection::TopP {
            mass: 0.8,
            max_clusters: 64,
        },
        dense_fraction: 1.0 / 3.0,
    };
    let mut layer = AdaClusterAttention::<T>::new(dev, shape, config.clone())?;
    let mut rng = Rng::new(seed);
    for call in 0..2 {
        let c = fresh_call(dev, &mut layer, &mut rng)?;
        let layout = layer.layout();
        ensure!(
            matches!(layout, Some(Layout::Clustered { .. })),
            "call {call}: layout {layout:?}"
        );
        verify_call(dev, &layer, (&c.q, &c.k, &c.v), &c.o, 0.8)
            .map_err(|e| VerifyError::Mismatch(format!("call {call}: {e}")))?;
        let density = layer.density()?;
        ensure!(density > 0.0 && density <= 1.0, "density {density}");
    }
    // knobs changed after `new` are checked again by the next call
    layer.config.search_iters = 0;
    let refused = layer.forward(
        &dev.upload(&vec![T::from_f32(1.0); p * n * d])?,
        &dev.upload(&vec![T::from_f32(1.0); p * n * d])?,
        &dev.upload(&vec![T::from_f32(1.0); p * n * d])?,
        &mut dev.upload(&vec![T::NAN; p * n * d])?,
    );
    ensure!(refused.is_err(), "search_iters = 0 was accepted");
    // top-k: fewer slots than key clusters, so the cap decides (ties by ascending id)
    let top_k = AdaClusterConfig {
        selection: Selection::TopK(3),
        ..config.clone()
    };
    let mut layer = AdaClusterAttention::<T>::new(dev, shape, top_k)?;
    let c = fresh_call(dev, &mut layer, &mut rng)?;
    let kk = layer.clusters().map_or(0, |c| c.k.k);
    ensure!(
        kk > 3,
        "the top-k case needs more than 3 key clusters, found {kk}"
    );
    verify_call(dev, &layer, (&c.q, &c.k, &c.v), &c.o, 1.0)
        .map_err(|e| VerifyError::Mismatch(format!("top-3: {e}")))?;
    // the dense fallback
    let dense = AdaClusterConfig {
        dense_fraction: 1e-3,
        ..config
    };
    let mut layer = AdaClusterAttention::<T>::new(dev, shape, dense)?;
    let c = fresh_call(dev, &mut layer, &mut rng)?;
    ensure_eq!(layer.layout(), Some(Layout::Dense), "dense fallback");
    let (qf, kf, vf) = (&c.q, &c.k, &c.v);
    let all: Vec<u32> = (0..n as u32).collect();
    let mut want = Vec::new();
    for pi in 0..p {
        for i in 0..n {
            let row = &qf[(pi * n + i) * d..][..d];
            let kv = pi * n * d..(pi + 1) * n * d;
            let (o, _) = reference::attend(
                row,
                &all,
                &kf[kv.clone()],
                &vf[kv],
                d,
                1.0 / (d as f64).sqrt(),
            );
            want.extend(o);
        }
    }
    let e = rel_err(&widen(&c.o), &want);
    ensure!(e < 1e-2, "dense fallback error {e:.2e}");
    // a dense layer stays dense on later calls
    fresh_call(dev, &mut layer, &mut rng)?;
    ensure_eq!(
        layer.layout(),
        Some(Layout::Dense),
        "dense on the second call"
    );
    Ok(())
}

/// Every AdaCluster kernel against its reference (see the module docs).
pub fn adacluster_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    assign_case::<half::bf16>(dev, 128, false, 11)?;
    assign_case::<half::f16>(dev, 64, true, 12)?;
    layer_case::<half::bf16>(dev, 64, 13)?;
    if dev.is_gpu() {
        layer_case::<half::bf16>(dev, 128, 14)?;
        layer_case::<half::f16>(dev, 64, 15)?;
    }
    Ok(())
}
