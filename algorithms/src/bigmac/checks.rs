//! The MoE kernels against their float64 references: the gate (with and without the
//! balancing bias), and whole layers of both structures through the host API — grouped
//! GEMMs over experts of uneven sizes, a partial last 128-row piece, the combine — checked
//! against the reference layer under the kernels' own routing. Inputs are random, never
//! all zero.

use super::hopper::WgmmaGrouped;
use std::sync::Arc;

use super::layer::{MoeLayer, MoeShape, MoeWeights, Structure};
use super::parallel::ParallelMoeLayer;
use super::reference;
use crate::gemm::hopper::WgmmaGemm;
use crate::verify::{ensure, ensure_eq, random_real, rel_err, widen, Real, Rng, VerifyError};
use kiln_runtime::comm::CommGroup;
use kiln_runtime::Device;

/// Random weights of a layer, each matrix scaled by `2/√fan-in` so activations stay of
/// order one through the layer.
pub fn random_weights<T: Real>(
    rng: &mut Rng,
    structure: Structure,
    shape: MoeShape,
) -> MoeWeights<T> {
    let (h, low, e) = (
        shape.hidden as usize,
        shape.low as usize,
        shape.experts as usize,
    );
    let (inw, mid) = shape.expert_dims(structure);
    let (inw, mid) = (inw as usize, mid as usize);
    let dense = if structure == Structure::BigMac {
        h * low
    } else {
        0
    };
    let mut r = |n: usize, fan_in: usize| random_real::<T>(rng, n, 2.0 / (fan_in as f32).sqrt());
    MoeWeights {
        gate: r(h * e, h),
        up: r(e * inw * mid, inw),
        down: r(e * mid * inw, mid),
        descend: r(dense, h),
        ascend: r(dense, low),
    }
}

/// One layer of `structure` on `tokens` random tokens: the gate against the reference
/// where its choice is clear, then the output against the reference layer.
fn layer_case<T: Real>(
    dev: &Device,
    structure: Structure,
    shape: MoeShape,
    tokens: usize,
    (with_bias, normalise, mma_sync): (bool, bool, bool),
    seed: u64,
) -> Result<(), VerifyError> {
    let mut rng = Rng::new(seed);
    let (h, e, k) = (
        shape.hidden as usize,
        shape.experts as usize,
        shape.top_k as usize,
    );
    let weights = random_weights::<T>(&mut rng, structure, shape);
    let bias: Option<Vec<f32>> = with_bias.then(|| (0..e).map(|c| 0.02 * (c % 3) as f32).collect());
    let mut layer = MoeLayer::new(dev, structure, shape, &weights, bias.as_deref())?;
    if mma_sync {
        layer = layer.without_hopper();
    }
    layer.normalise = normalise;
    // two calls: the second reuses the first's scratch buffers
    for call in 0..2 {
        let x = random_real::<T>(&mut rng, tokens * h, 2.0);
        let y = layer.forward(&dev.upload(&x)?)?;
        let routing = layer.routing().expect("a call was made");
        let ids = dev.download(&routing.ids)?;
        let gw: Vec<f64> = dev
            .download(&routing.weights)?
            .iter()
            .map(|&v| v as f64)
            .collect();
        let xf = widen(&x);
        let bias64: Option<Vec<f64>> = bias.as_ref().map(|b| b.iter().map(|&v| v as f64).collect());
        let (want_ids, want_w, margin) = reference::gate(
            &xf,
            &widen(&weights.gate),
            (h, e, k),
            bias64.as_deref(),
            normalise,
        );
        for t in 0..tokens {
            if margin[t] > 1e-4 {
                let mut got: Vec<u32> = ids[t * k..][..k].to_vec();
                let mut want: Vec<u32> = want_ids[t * k..][..k].to_vec();
                got.sort_unstable();
                want.sort_unstable();
                ensure_eq!(got, want, "token {t}: experts");
            }
        }
        let e_w = rel_err(&gw, &want_w);
        ensure!(e_w < 1e-3, "gate weights error {e_w:.2e}");
        // every expert's rows: the routing counted per expert
        let start = dev.download(&routing.start)?;
        for c in 0..e {
            let n = ids.iter().filter(|&&i| i as usize == c).count() as u32;
            ensure_eq!(start[c + 1] - start[c], n, "expert {c}: rows");
        }
        let round = |v: f64| T::from_f32(v as f32).to_f32() as f64;
        let w = reference::Weights {
            up: &widen(&weights.up),
            down: &widen(&weights.down),
            descend: &widen(&weights.descend),
            ascend: &widen(&weights.ascend),
        };
        let want = reference::layer(structure, &shape, &xf, &w, (&ids, &gw), &round);
        let got = widen(&dev.download(&y)?);
        let err = rel_err(&got, &want);
        let tol = if T::DTYPE == kiln_codegen::Dtype::Bf16 {
            2e-2
        } else {
            4e-3
        };
        ensure!(
            err < tol,
            "{structure:?} {shape:?} on {tokens} tokens, call {call}: output error {err:.2e} (tolerance {tol:.0e})"
        );
    }
    // the timed call: every stage reports a time, and the output is unchanged
    let x = dev.upload(&random_real::<T>(&mut rng, tokens * h, 2.0))?;
    let mut y1 = dev.zeros::<T>(tokens * h)?;
    let mut y2 = dev.zeros::<T>(tokens * h)?;
    let times = layer.forward_timed(&x, &mut y1)?;
    layer.forward_into(&x, &mut y2)?;
    let all = [
        times.gate_ms,
        times.permute_ms,
        times.descend_ms,
        times.experts_ms,
        times.combine_ms,
        times.ascend_ms,
    ];
    ensure!(
        all.iter().all(|t| t.is_finite() && *t >= 0.0),
        "stage times {times:?}"
    );
    ensure_eq!(
        dev.download(&y1)?,
        dev.download(&y2)?,
        "a timed call changes nothing"
    );
    Ok(())
}

/// Both structures, bf16 and f16, with and without the balancing bias; on a GPU also at a
/// larger shape on both grouped GEMMs (Hopper where the GPU is sm_90, and `mma.sync`).
pub fn moe_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    let shape = MoeShape {
        hidden: 128,
        low: 64,
        experts: 8,
        top_k: 2,
    };
    for structure in [Structure::Cdac, Structure::BigMac] {
        layer_case::<half::bf16>(dev, structure, shape, 150, (false, true, false), 21)?;
        // 1200 slots: two sort tiles; weights not renormalised
        layer_case::<half::bf16>(dev, structure, shape, 600, (false, false, false), 24)?;
        let wide = MoeShape { top_k: 4, ..shape };
        layer_case::<half::f16>(dev, structure, wide, 70, (true, true, false), 22)?;
    }
    if dev.is_gpu() {
        let big = MoeShape {
            hidden: 1024,
            low: 256,
            experts: 64,
            top_k: 6,
        };
        for structure in [Structure::Cdac, Structure::BigMac] {
            // the Hopper path where the GPU has one, and the mma.sync path everywhere
            layer_case::<half::bf16>(dev, structure, big, 1000, (true, true, false), 23)?;
            layer_case::<half::bf16>(dev, structure, big, 1000, (true, true, true), 25)?;
        }
    }
    Ok(())
}

/// One call of the Hopper grouped GEMM on groups of `counts` rows (`k → n`, SiLU or not)
/// against float64: every row of every group, the output poisoned first.
fn grouped_wgmma_case<T: Real>(
    dev: &Device,
    counts: &[u32],
    (k, n): (u32, u32),
    silu: bool,
    seed: u64,
) -> Result<(), VerifyError> {
    let mut rng = Rng::new(seed);
    let groups = counts.len();
    let rows: u32 = counts.iter().sum();
    let (mut start, mut blocks) = (vec![0u32], vec![0u32]);
    for &c in counts {
        start.push(start.last().expect("seeded") + c);
        blocks.push(blocks.last().expect("seeded") + c.div_ceil(128));
    }
    let (ku, nu) = (k as usize, n as usize);
    let a = random_real::<T>(&mut rng, rows as usize * ku, 1.0);
    let w = random_real::<T>(&mut rng, groups * ku * nu, 0.2);
    let gemm = WgmmaGrouped::new(dev, T::DTYPE, silu)?;
    let mut y = dev.upload(&vec![T::NAN; rows as usize * nu])?;
    let (sb, bb) = (dev.upload(&start)?, dev.upload(&blocks)?);
    let pieces = blocks[groups];
    gemm.run(
        &dev.upload(&a)?,
        &dev.upload(&w)?,
        (&sb, &bb, groups as u32, pieces),
        &mut y,
        (k, n),
    )?;
    let got = widen(&dev.download(&y)?);
    let (af, wf) = (widen(&a), widen(&w));
    let mut want = vec![0f64; got.len()];
    for g in 0..groups {
        let wg = &wf[g * ku * nu..][..ku * nu];
        for r in start[g] as usize..start[g + 1] as usize {
            let out = &mut want[r * nu..][..nu];
            for (i, x) in af[r * ku..][..ku].iter().enumerate() {
                for (o, wv) in out.iter_mut().zip(&wg[i * nu..][..nu]) {
                    *o += x * wv;
                }
            }
            if silu {
                out.iter_mut().for_each(|v| *v = reference::silu(*v));
            }
        }
    }
    let err = rel_err(&got, &want);
    ensure!(
        err < 1e-2,
        "grouped_gemm_wgmma {:?} groups {counts:?}, {k} → {n}, silu {silu}: relative error {err:.2e} (bound 1e-2)",
        T::DTYPE
    );
    Ok(())
}

/// The Hopper grouped GEMM (sm_90 only; skipped elsewhere): uneven groups (one empty, one
/// of a single row, some past one 128-row piece), a last column tile cut short, bf16 with
/// SiLU and f16 without, and the refusal of a `k` that is not a multiple of 64.
pub fn grouped_wgmma_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    if !WgmmaGemm::supported(dev) {
        println!(
            "grouped_gemm_wgmma: skipped, {} is not an sm_90 GPU",
            dev.name()
        );
        return Ok(());
    }
    let (counts, kn): (&[u32], _) = if dev.is_gpu() {
        (&[300, 0, 1, 517, 128, 1000, 64], (512, 776))
    } else {
        (&[70, 0, 150, 1], (128, 264))
    };
    grouped_wgmma_case::<half::bf16>(dev, counts, kn, true, 51)?;
    grouped_wgmma_case::<half::f16>(dev, counts, kn, false, 52)?;
    let gemm = WgmmaGrouped::new(dev, half::bf16::DTYPE, false)?;
    let one = dev.upload(&[0u32, 1])?;
    let a = dev.upload(&[half::bf16::ONE; 96])?;
    let mut y = dev.zeros::<half::bf16>(64)?;
    let refused = gemm.run(&a, &a, (&one, &one, 1, 1), &mut y, (96, 64));
    ensure!(refused.is_err(), "a k of 96 must be refused");
    Ok(())
}

/// How a check splits `tokens` over `n` ranks: uneven shares (the last rank takes the rest),
/// at least one token each.
pub fn token_split(tokens: usize, n: usize) -> Vec<usize> {
    let mut out: Vec<usize> = (0..n)
        .map(|r| (tokens * (2 + r % 3) / (3 * n)).max(1))
        .collect();
    let used: usize = out[..n - 1].iter().sum();
    out[n - 1] = tokens.saturating_sub(used).max(1);
    out
}

/// One structure on `group`: the expert-parallel layer on `split` tokens per rank against
/// `MoeLayer` on `dev` over the same tokens (bit for bit: the same launches meet each token's
/// rows in the same order) and against the float64 reference, twice (the second call reuses
/// the buffers), then the timed call; returns the traffic of the last call.
#[allow(clippy::too_many_arguments)]
fn parallel_case<T: Real>(
    dev: &Device,
    group: &Arc<CommGroup>,
    structure: Structure,
    shape: MoeShape,
    weights: &MoeWeights<T>,
    bias: Option<&[f32]>,
    split: &[usize],
    rng: &mut Rng,
) -> Result<super::parallel::LayerTraffic, VerifyError> {
    let n = group.ranks();
    let h = shape.hidden as usize;
    let k = shape.top_k as usize;
    let tokens: usize = split.iter().sum();
    let mut single = MoeLayer::new(dev, structure, shape, weights, bias)?;
    let mut layer = ParallelMoeLayer::new(group.clone(), structure, shape, weights, bias)?;
    let what = format!(
        "{structure:?} over {n} ranks ({}), tokens {split:?}",
        group.backend_name()
    );
    for call in 0..2 {
        let x = random_real::<T>(rng, tokens * h, 2.0);
        let want = dev.download(&single.forward(&dev.upload(&x)?)?)?;
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        let mut at = 0;
        for (r, &t) in split.iter().enumerate() {
            xs.push(group.device(r).upload(&x[at * h..(at + t) * h])?);
            ys.push(group.device(r).zeros::<T>(t * h)?);
            at += t;
        }
        {
            let xr: Vec<&kiln_runtime::DeviceBuffer<T>> = xs.iter().collect();
            let mut yr: Vec<&mut kiln_runtime::DeviceBuffer<T>> = ys.iter_mut().collect();
            layer.forward(&xr, &mut yr)?;
        }
        let mut got = Vec::with_capacity(tokens * h);
        for (r, y) in ys.iter().enumerate() {
            got.extend(group.device(r).download(y)?);
        }
        let routing = single.routing().expect("a call was made");
        let ids = dev.download(&routing.ids)?;
        let mut at = 0;
        for (r, &t) in split.iter().enumerate() {
            let mine = group
                .device(r)
                .download(&layer.routing(r).expect("routed").ids)?;
            ensure_eq!(
                mine,
                ids[at * k..(at + t) * k].to_vec(),
                "{what}: rank {r}'s routing"
            );
            at += t;
        }
        ensure!(
            got == want,
            "{what}, call {call}: the output differs from the one-device layer (error {:.2e})",
            rel_err(&widen(&got), &widen(&want))
        );
        let gw: Vec<f64> = dev
            .download(&routing.weights)?
            .iter()
            .map(|&v| v as f64)
            .collect();
        let w = reference::Weights {
            up: &widen(&weights.up),
            down: &widen(&weights.down),
            descend: &widen(&weights.descend),
            ascend: &widen(&weights.ascend),
        };
        let round = |v: f64| T::from_f32(v as f32).to_f32() as f64;
        let reference = reference::layer(structure, &shape, &widen(&x), &w, (&ids, &gw), &round);
        let err = rel_err(&widen(&got), &reference);
        let tol = if T::DTYPE == kiln_codegen::Dtype::Bf16 {
            2e-2
        } else {
            4e-3
        };
        ensure!(
            err < tol,
            "{what}, call {call}: error vs float64 {err:.2e} (tolerance {tol:.0e})"
        );
        // the counters: every routed row goes out and comes back at the dispatch width
        let t = layer.traffic().clone();
        let row_bytes = shape.dispatch_width(structure) as u64 * std::mem::size_of::<T>() as u64;
        let routed: usize = t.rows.iter().flatten().sum();
        ensure_eq!(routed, tokens * k, "{what}: routed rows");
        ensure_eq!(
            t.token_bytes(),
            2 * (tokens * k) as u64 * row_bytes,
            "{what}: token bytes"
        );
        let to_peers: usize = (0..n)
            .flat_map(|s| (0..n).filter(move |&d| d != s).map(move |d| (s, d)))
            .map(|(s, d)| t.rows[s][d])
            .sum();
        ensure_eq!(
            t.dispatch.p2p_bytes_to_peers,
            to_peers as u64 * row_bytes,
            "{what}: dispatch bytes to peers"
        );
        ensure_eq!(
            t.combine,
            t.dispatch,
            "{what}: the return moves what the dispatch moved"
        );
    }
    // the timed call: every stage reports a time, and the output is the untimed call's
    let mut xs = Vec::new();
    let (mut y1, mut y2) = (Vec::new(), Vec::new());
    for (r, &t) in split.iter().enumerate() {
        let d = group.device(r);
        xs.push(d.upload(&random_real::<T>(rng, t * h, 2.0))?);
        y1.push(d.zeros::<T>(t * h)?);
        y2.push(d.zeros::<T>(t * h)?);
    }
    let xr: Vec<&kiln_runtime::DeviceBuffer<T>> = xs.iter().collect();
    let times = layer.forward_timed(&xr, &mut y1.iter_mut().collect::<Vec<_>>())?;
    layer.forward(&xr, &mut y2.iter_mut().collect::<Vec<_>>())?;
    ensure!(
        times.total_ms().is_finite() && times.total_ms() >= 0.0 && times.all_to_all_ms() >= 0.0,
        "{what}: stage times {times:?}"
    );
    for r in 0..n {
        ensure_eq!(
            group.device(r).download(&y1[r])?,
            group.device(r).download(&y2[r])?,
            "{what}: a timed call changes nothing (rank {r})"
        );
    }
    Ok(layer.traffic().clone())
}

/// The groups a check runs on: on the emulator groups of 1, 2 and 4 emulator ranks; on a GPU
/// one GPU and then every visible GPU up to 4 (2 or 4), over NCCL.
fn check_groups(dev: &Device) -> Result<Vec<Arc<CommGroup>>, VerifyError> {
    if !dev.is_gpu() {
        return [1, 2, 4]
            .into_iter()
            .map(|n| Ok(Arc::new(CommGroup::emulated(n)?)))
            .collect();
    }
    let visible = Device::gpu_count();
    let mut sizes = vec![1];
    match visible {
        0 | 1 => {}
        2 | 3 => sizes.push(2),
        _ => sizes.push(4),
    }
    sizes
        .into_iter()
        .map(|n| Ok(Arc::new(CommGroup::gpus(n)?)))
        .collect()
}

/// The expert-parallel layer of both structures against the one-device layer (bit for bit)
/// and the float64 reference, over groups of 1, 2 and 4 ranks (the emulator's host copies in
/// CI, NCCL on GPUs), with uneven token counts per rank, the balancing bias on one case; and
/// the measured all-to-all bytes: BigMac's tokens move at `r·h`, CDAC's at `h`, under the
/// same routing exactly `r` of them.
pub fn parallel_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    let (shape, tokens) = if dev.is_gpu() {
        (
            MoeShape {
                hidden: 1024,
                low: 256,
                experts: 64,
                top_k: 6,
            },
            3000,
        )
    } else {
        (
            MoeShape {
                hidden: 128,
                low: 64,
                experts: 8,
                top_k: 2,
            },
            60,
        )
    };
    for group in check_groups(dev)? {
        let n = group.ranks();
        let split = token_split(tokens, n);
        let mut rng = Rng::new(40 + n as u64);
        let cdac = random_weights::<half::bf16>(&mut rng, Structure::Cdac, shape);
        let mut bigmac = random_weights::<half::bf16>(&mut rng, Structure::BigMac, shape);
        // the same router: the same routing, so the byte counts compare exactly
        bigmac.gate = cdac.gate.clone();
        let tc = parallel_case(
            dev,
            &group,
            Structure::Cdac,
            shape,
            &cdac,
            None,
            &split,
            &mut Rng::new(7),
        )?;
        let tb = parallel_case(
            dev,
            &group,
            Structure::BigMac,
            shape,
            &bigmac,
            None,
            &split,
            &mut Rng::new(7),
        )?;
        ensure_eq!(tb.rows, tc.rows, "{n} ranks: the same routing");
        ensure_eq!(
            tb.token_bytes() * shape.hidden as u64,
            tc.token_bytes() * shape.low as u64,
            "{n} ranks: BigMac moves r = low/hidden of CDAC's bytes"
        );
        if n > 1 {
            ensure!(
                tb.token_bytes_to_peers() > 0,
                "{n} ranks: some tokens cross ranks"
            );
        }
        let bias: Vec<f32> = (0..shape.experts).map(|c| 0.02 * (c % 3) as f32).collect();
        let wide = MoeShape { top_k: 4, ..shape };
        let w = random_weights::<half::f16>(&mut rng, Structure::BigMac, wide);
        parallel_case(
            dev,
            &group,
            Structure::BigMac,
            wide,
            &w,
            Some(&bias),
            &split,
            &mut rng,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::layer::{MoeLayer, MoeShape, Structure};

    /// Bad shapes, weights and inputs are errors that say what is wrong, never panics.
    #[test]
    fn bad_layers_and_inputs_are_refused() {
        let dev = kiln_runtime::Device::emulator();
        let good = MoeShape {
            hidden: 128,
            low: 64,
            experts: 8,
            top_k: 2,
        };
        let mut rng = crate::verify::Rng::new(1);
        let w = super::random_weights::<half::bf16>(&mut rng, Structure::Cdac, good);
        for (shape, why) in [
            (
                MoeShape {
                    hidden: 100,
                    ..good
                },
                "multiples of 64",
            ),
            (
                MoeShape {
                    experts: 65,
                    ..good
                },
                "experts",
            ),
            (MoeShape { top_k: 3, ..good }, "top-3"),
        ] {
            let e = MoeLayer::new(&dev, Structure::Cdac, shape, &w, None)
                .err()
                .expect("refused");
            assert!(e.to_string().contains(why), "{e}");
        }
        let e = MoeLayer::new(&dev, Structure::BigMac, good, &w, None)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("descend"), "{e}");
        let e = MoeLayer::new(&dev, Structure::Cdac, good, &w, Some(&[0.0; 3]))
            .err()
            .expect("refused");
        assert!(e.to_string().contains("bias"), "{e}");
        let mut layer = MoeLayer::new(&dev, Structure::Cdac, good, &w, None).unwrap();
        let x = dev.upload(&vec![half::bf16::ONE; 130]).unwrap();
        let e = layer.forward(&x).expect_err("refused");
        assert!(e.to_string().contains("rows of 128"), "{e}");
    }

    /// The demo runs on the emulator and reports both structures within bf16 of the
    /// reference, with BigMac's dispatch width a quarter of CDAC's.
    #[test]
    fn the_demo_runs_on_the_emulator() {
        let dev = kiln_runtime::Device::emulator();
        let report = super::super::demo::run(&dev).expect("the BigMac demo runs");
        println!("{report}");
        for line in report
            .lines()
            .filter(|l| l.contains("output error vs float64"))
        {
            let err: f64 = line
                .split("float64 ")
                .nth(1)
                .and_then(|r| r.split(';').next())
                .and_then(|v| v.parse().ok())
                .expect("an error figure");
            assert!(err < 2e-2, "{line}");
        }
        assert!(report.contains("BigMac moves 0.25x"), "{report}");
        assert!(
            report.contains("measured: BigMac's all-to-all moved 0.25x CDAC's bytes"),
            "{report}"
        );
    }

    /// The expert-parallel layer refuses experts that do not divide over the ranks, inputs
    /// that are not one per rank, and bad rows, with errors that say what is wrong.
    #[test]
    fn bad_parallel_layers_and_inputs_are_refused() {
        use super::super::parallel::ParallelMoeLayer;
        use kiln_runtime::comm::CommGroup;
        use std::sync::Arc;
        let good = MoeShape {
            hidden: 128,
            low: 64,
            experts: 8,
            top_k: 2,
        };
        let mut rng = crate::verify::Rng::new(2);
        let w = super::random_weights::<half::bf16>(&mut rng, Structure::Cdac, good);
        let three = Arc::new(CommGroup::emulated(3).unwrap());
        let e = ParallelMoeLayer::new(three, Structure::Cdac, good, &w, None)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("8 experts over 3 ranks"), "{e}");
        let two = Arc::new(CommGroup::emulated(2).unwrap());
        let e = ParallelMoeLayer::new(two.clone(), Structure::BigMac, good, &w, None)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("descend"), "{e}");
        let mut layer =
            ParallelMoeLayer::new(two.clone(), Structure::Cdac, good, &w, None).unwrap();
        let x = two.device(0).upload(&vec![half::bf16::ONE; 128]).unwrap();
        let mut y = two.device(0).zeros::<half::bf16>(128).unwrap();
        let e = layer
            .forward(&[&x], &mut [&mut y])
            .expect_err("one input for two ranks");
        assert!(
            e.to_string().contains("1 inputs and 1 outputs for 2 ranks"),
            "{e}"
        );
        let x1 = two.device(1).upload(&vec![half::bf16::ONE; 130]).unwrap();
        let mut y1 = two.device(1).zeros::<half::bf16>(130).unwrap();
        let e = layer
            .forward(&[&x, &x1], &mut [&mut y, &mut y1])
            .expect_err("bad rows");
        assert!(e.to_string().contains("rank 1"), "{e}");
        assert!(e.to_string().contains("rows of 128"), "{e}");
    }

    #[test]
    fn token_splits_cover_every_token_unevenly() {
        for n in [1, 2, 3, 4, 8] {
            let s = super::token_split(60, n);
            assert_eq!(s.len(), n);
            assert_eq!(s.iter().sum::<usize>(), 60, "{s:?}");
            assert!(s.iter().all(|&t| t > 0), "{s:?}");
        }
        assert_ne!(super::token_split(60, 4)[0], super::token_split(60, 4)[1]);
    }
}
