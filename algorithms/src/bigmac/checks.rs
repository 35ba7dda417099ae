//! The MoE kernels against their float64 references: the gate (with and without the
//! balancing bias), and whole layers of both structures through the host API — grouped
//! GEMMs over experts of uneven sizes, a partial last 128-row piece, the combine — checked
//! against the reference layer under the kernels' own routing. Inputs are random, never
//! all zero.

use super::hopper::WgmmaGrouped;
use super::layer::{MoeLayer, MoeShape, MoeWeights, Structure};
use super::reference;
use crate::gemm::hopper::WgmmaGemm;
use crate::verify::{ensure, ensure_eq, random_real, rel_err, widen, Real, Rng, VerifyError};
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
    }
}
