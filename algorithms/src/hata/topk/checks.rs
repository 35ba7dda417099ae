//! HATA's top-k selection (`crate::hata::topk`) against its plain-Rust reference
//! (sort by score descending, index ascending; NaN smallest): the selected indices must be
//! exactly the reference's, in ascending order, on fresh random inputs — spread-out floats,
//! heavy ties (scores quantised to a few values, like HATA's Hamming scores), `+∞` sink and
//! recent tokens, NaN, `±0`, `k = 1`, `k = n`, `k = n − 1`, rows whose length is not a multiple
//! of anything, several blocks per row — plus a loop over random shapes and chunk sizes, a
//! second call on the same scratch (it must come back clean), a repeated call (same output),
//! and the shape errors. Small shapes on the emulator, large ones (64 × 131072) on a GPU.

use crate::hata::topk::{reference, sort_key, TopK, TopKError, TopKScratch};
use kiln_runtime::emu::{EmuOptions, Schedule};
use kiln_runtime::Device;

use crate::verify::{ensure, ensure_eq, Rng, VerifyError};

/// How the scores of a case are drawn.
#[derive(Clone, Copy, Debug)]
enum Scores {
    /// Uniform in [-1, 1).
    Uniform,
    /// Small integers `0 .. levels` (heavy ties).
    Levels(u32),
    /// HATA-like: `G − 2·ham/rbit` times a norm in [0.5, 1.5) when `norms` (G = 4, rbit = 128).
    Hata { norms: bool },
    /// Every score the same.
    Constant,
    /// Uniform, with NaNs (both signs), `±0`, `±∞` sprinkled in.
    Specials,
}

fn draw(rng: &mut Rng, how: Scores, rows: usize, n: usize, sink: usize, recent: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..rows * n)
        .map(|_| match how {
            Scores::Uniform => rng.f32(),
            Scores::Levels(l) => (rng.u32() % l) as f32,
            Scores::Hata { norms } => {
                let ham: u32 = (0..16).map(|_| rng.u32().count_ones()).sum();
                let s = 4.0 - 2.0 * ham as f32 / 128.0;
                if norms {
                    s * (1.0 + 0.5 * rng.f32())
                } else {
                    s
                }
            }
            Scores::Constant => 0.25,
            Scores::Specials => match rng.u32() % 16 {
                0 => f32::NAN,
                1 => f32::from_bits(0xffc0_0001), // a negative NaN
                2 => 0.0,
                3 => -0.0,
                4 => f32::NEG_INFINITY,
                5 => f32::INFINITY,
                _ => rng.f32(),
            },
        })
        .collect();
    for r in 0..rows {
        for j in 0..n {
            if j < sink || j + recent >= n {
                v[r * n + j] = f32::INFINITY;
            }
        }
    }
    v
}

/// One call: `rows × n` scores drawn as `how` (first `sink`, last `recent` of each row `+∞`),
/// top `k` with blocks of `chunk` columns (`None`: the default); compares with the
/// reference, and checks that the output buffer's slack past `rows × k` is untouched.
#[allow(clippy::too_many_arguments)]
fn case(
    dev: &Device,
    topk: &mut TopK,
    scratch: &mut TopKScratch,
    rng: &mut Rng,
    how: Scores,
    (rows, n, k): (usize, usize, usize),
    (sink, recent): (usize, usize),
    chunk: Option<u32>,
) -> Result<Vec<u32>, VerifyError> {
    let scores = draw(rng, how, rows, n, sink, recent);
    topk.chunk = chunk;
    let slack = 5;
    let mut idx = dev.upload(&vec![u32::MAX; rows * k + slack])?;
    let what = format!("top-k {how:?} rows={rows} n={n} k={k} chunk={chunk:?}");
    topk.run(
        &dev.upload(&scores)?,
        rows as u32,
        n as u32,
        k as u32,
        &mut idx,
        scratch,
    )
    .map_err(|e| VerifyError::Mismatch(format!("{what}: {e}")))?;
    let got = dev.download(&idx)?;
    let want = reference(&scores, rows, n, k);
    for r in 0..rows {
        let (g, w) = (&got[r * k..(r + 1) * k], &want[r * k..(r + 1) * k]);
        if g != w {
            let mut gs = g.to_vec();
            gs.sort_unstable();
            let first = (0..k).find(|&i| g[i] != w[i]).unwrap_or(0);
            let key = |i: u32| scores.get(r * n + i as usize).map(|s| (*s, sort_key(*s)));
            return Err(VerifyError::Mismatch(format!(
                "{what}: row {r}: {} at position {first}: got index {} (score {:?}), want {} \
                 (score {:?}); same set when sorted: {}",
                if gs == w {
                    "order differs"
                } else {
                    "selection differs"
                },
                g[first],
                key(g[first]),
                w[first],
                key(w[first]),
                gs == w
            )));
        }
    }
    ensure!(
        got[rows * k..].iter().all(|&v| v == u32::MAX),
        "{what}: wrote past rows × k"
    );
    Ok(got[..rows * k].to_vec())
}

/// A fixed case: how the scores are drawn, (rows, n, k), (sink, recent) tokens forced to
/// +∞, and the chunk (`None`: the default).
type Case = (Scores, (usize, usize, usize), (usize, usize), Option<u32>);

/// GPU-sized cases: the bench's shape, the default chunk, and HATA-like shapes at 256K.
const GPU_CASES: &[Case] = &[
    (Scores::Uniform, (64, 131_072, 2048), (0, 0), None),
    (
        Scores::Hata { norms: false },
        (64, 131_072, 2048),
        (4, 64),
        None,
    ),
    (
        Scores::Hata { norms: true },
        (8, 262_144, 4194),
        (4, 64),
        None,
    ),
    (Scores::Levels(3), (8, 262_139, 4194), (0, 0), None),
    (Scores::Specials, (64, 32_771, 512), (1, 7), None),
    (Scores::Constant, (16, 65_536, 65_535), (0, 0), None),
    (Scores::Uniform, (3, 100_003, 100_003), (0, 0), Some(8192)),
    (Scores::Uniform, (1, 1 << 22, 1), (0, 0), None),
];

/// Cases for every device.
const CASES: &[Case] = &[
    // spread-out scores, several blocks per row (chunks not a multiple of the 4096-score step)
    (Scores::Uniform, (3, 5000, 100), (0, 0), Some(1000)),
    (Scores::Uniform, (2, 4999, 77), (0, 0), None),
    // heavy ties: the threshold value has hundreds of copies spread over the blocks
    (Scores::Levels(4), (3, 3001, 1500), (0, 0), Some(700)),
    // more blocks per row (25) than warps (16): a warp counts two blocks' candidates
    (Scores::Levels(4), (2, 5000, 700), (0, 0), Some(200)),
    (
        Scores::Hata { norms: false },
        (2, 4097, 333),
        (4, 16),
        Some(1024),
    ),
    (
        Scores::Hata { norms: true },
        (2, 3000, 128),
        (4, 16),
        Some(512),
    ),
    (Scores::Constant, (2, 2003, 1000), (0, 0), Some(400)),
    // +∞ sink/recent tokens: more of them than k (a tie among the infinities), then fewer
    (Scores::Uniform, (2, 1500, 5), (4, 8), Some(300)),
    (Scores::Levels(3), (2, 1500, 40), (4, 8), Some(300)),
    // NaN (smallest), ±0 (equal), ±∞
    (Scores::Specials, (2, 1003, 200), (0, 0), Some(256)),
    (Scores::Specials, (1, 1003, 1003), (0, 0), Some(256)),
    (Scores::Specials, (1, 1003, 990), (0, 0), None),
    // k = 1, k = n, k = n − 1, tiny rows
    (Scores::Uniform, (3, 1001, 1), (0, 0), Some(200)),
    (Scores::Levels(5), (3, 1001, 1001), (0, 0), Some(200)),
    (Scores::Uniform, (3, 1001, 1000), (0, 0), Some(200)),
    (Scores::Uniform, (5, 1, 1), (0, 0), None),
    (Scores::Levels(2), (4, 7, 3), (0, 0), Some(4)),
];

/// The fixed cases and a random-shape loop on `dev`; `big` picks GPU-sized shapes.
fn cases(dev: &Device, big: bool) -> Result<(), VerifyError> {
    let mut topk = TopK::new(dev).map_err(|e| VerifyError::Mismatch(e.to_string()))?;
    let mut scratch = TopKScratch::new(dev, 4, 1000)?;
    let mut rng = Rng::new(0x70b4);
    let t = &mut topk;
    let s = &mut scratch;
    let r = &mut rng;
    let fixed: Vec<&Case> = if big {
        GPU_CASES.iter().chain(CASES).collect()
    } else {
        CASES.iter().collect()
    };
    for &(how, shape, forced, chunk) in fixed {
        case(dev, t, s, r, how, shape, forced, chunk)?;
    }
    // random shapes, distributions and chunks
    let rounds = if big { 24 } else { 12 };
    let max_n = if big { 300_000 } else { 2500 };
    for _ in 0..rounds {
        let rows = 1 + (r.u32() % 4) as usize;
        let n = 1 + (r.u32() as usize % max_n);
        let k = match r.u32() % 4 {
            0 => 1,
            1 => n,
            _ => 1 + r.u32() as usize % n,
        };
        let how = match r.u32() % 5 {
            0 => Scores::Uniform,
            1 => Scores::Levels(1 + r.u32() % 6),
            2 => Scores::Hata {
                norms: r.u32().is_multiple_of(2),
            },
            3 => Scores::Specials,
            _ => Scores::Constant,
        };
        let chunk = match r.u32() % 3 {
            0 => None,
            _ => Some(4 + 4 * (r.u32() % (n as u32 / 4 + 1))),
        };
        let (sink, recent) = ((r.u32() % 3) as usize, (r.u32() % 9) as usize);
        case(
            dev,
            t,
            s,
            r,
            how,
            (rows, n, k),
            (sink.min(n), recent.min(n)),
            chunk,
        )?;
    }
    // the same call twice: identical outputs (nothing depends on timing)
    let shape = if big {
        (64, 131_072, 2048)
    } else {
        (3, 3001, 1500)
    };
    let mut twice = |seed| {
        let mut again = Rng::new(seed);
        case(
            dev,
            t,
            s,
            &mut again,
            Scores::Levels(4),
            shape,
            (0, 0),
            Some(704),
        )
    };
    let a = twice(99)?;
    let b = twice(99)?;
    ensure_eq!(a, b, "a repeated call gave a different output");
    shape_errors(dev, t, s)
}

/// Bad shapes are refused with [`TopKError::Shape`], never a panic or a launch.
fn shape_errors(dev: &Device, topk: &TopK, scratch: &mut TopKScratch) -> Result<(), VerifyError> {
    let scores = dev.upload(&vec![0.5f32; 100])?;
    let mut idx = dev.zeros::<u32>(100)?;
    let mut short = dev.zeros::<u32>(99)?;
    for (rows, n, k, why) in [
        (1, 100, 0, "k = 0"),
        (1, 10, 11, "k > n"),
        (0, 10, 1, "no rows"),
        (1, 0, 1, "n = 0"),
        (2, 60, 1, "scores too short"),
        (2, 50, 51, "k > n"),
        (4, 25, 26, "k > n"),
        (1, 100, 100, "ok"),
        (2, 50, 50, "ok"),
        (5, 20, 20, "idx too short"),
        (70_000, 1, 1, "too many rows"),
    ] {
        let idx_buf = if why == "idx too short" {
            &mut short
        } else {
            &mut idx
        };
        let got = topk.run(&scores, rows, n, k, idx_buf, scratch);
        match (why, got) {
            ("ok", Ok(())) => {}
            ("ok", Err(e)) => return Err(VerifyError::Mismatch(format!("{rows}×{n}, k={k}: {e}"))),
            (_, Err(TopKError::Shape(_))) => {}
            (_, other) => {
                return Err(VerifyError::Mismatch(format!(
                    "{why} ({rows}×{n}, k={k}) was not refused as a shape error: {other:?}"
                )))
            }
        }
    }
    Ok(())
}

/// The top-k kernels against the reference: the cases above on `dev` (GPU shapes on a GPU);
/// on the emulator also once with shuffled thread interleavings.
pub fn topk_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    cases(dev, dev.is_gpu())?;
    if !dev.is_gpu() {
        let shuffled = Device::emulator_with(EmuOptions {
            schedule: Schedule::Shuffled { seed: 7 },
            ..EmuOptions::default()
        });
        let mut topk = TopK::new(&shuffled).map_err(|e| VerifyError::Mismatch(e.to_string()))?;
        let mut scratch = TopKScratch::new(&shuffled, 2, 1000)?;
        let mut rng = Rng::new(5);
        case(
            &shuffled,
            &mut topk,
            &mut scratch,
            &mut rng,
            Scores::Levels(3),
            (2, 2100, 700),
            (2, 3),
            Some(520),
        )?;
    }
    Ok(())
}
