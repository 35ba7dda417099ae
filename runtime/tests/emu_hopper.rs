//! The Hopper builtins on the emulator: TMA box loads (128-byte swizzle, zero fill),
//! `wgmma` against a float64 matmul, an mbarrier producer/consumer ring over several phases,
//! and each asynchronous-misuse finding.

mod emu_common;

use emu_common::*;
use half::bf16;
use kiln_runtime::emu::{EmuArg, EmuOptions, EmuReport, FindingKind, Schedule};
use kiln_runtime::launch::LaunchConfig;
use kiln_runtime::tensor_map::EmulatedMap;
use kiln_runtime::{Swizzle, TensorMap};

fn cfg(threads: u32, dyn_shared_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid: (1, 1, 1),
        block: (threads, 1, 1),
        dyn_shared_bytes,
    }
}

/// Logical byte `addr` under the 128-byte swizzle (16-byte chunk ^= line % 8).
fn swizzle128(addr: usize) -> usize {
    addr ^ ((addr >> 7) & 7) << 4
}

/// The emulator's tensor map of `x` (row-major `rows × cols` u16) as kernel-argument bytes.
fn map_of(
    x: &[u8],
    rows: u64,
    cols: u64,
    box_rows: u32,
    box_cols: u32,
    swizzle: Swizzle,
) -> Vec<u8> {
    let words = EmulatedMap {
        address: x.as_ptr() as u64,
        map: TensorMap {
            rows,
            cols,
            box_rows,
            box_cols,
            swizzle,
        },
        elem_bytes: 2,
    }
    .words();
    bytes(&words)
}

const TMA_BOX: &str =
    "fn tma_box(x: &[u16], map: &[u64], out: &mut [u16], x0: u32, y0: u32, wait: u32) {
    let tile = dyn_shared::<u16>();
    let bar = shared::<[u64; 2]>();
    let t = thread_idx().x;
    if t == 0 {
        mbarrier_init(&mut bar[0], 1);
        fence_barrier_init();
    }
    sync_threads();
    if t == 0 {
        mbarrier_expect_tx(&mut bar[0], 2048);
        tma_load_2d(&mut tile[0], &map[0], x, &mut bar[0], x0, y0);
    }
    if wait >= 1 {
        mbarrier_wait(&mut bar[0], 0);
    }
    for i in 0..8u32 {
        out[t * 8 + i] = tile[t * 8 + i]; // read the tile
    }
    if wait == 2 {
        mbarrier_wait(&mut bar[1], 0); // never initialised
    }
}";

fn tma_case(wait: u32) -> (Vec<u16>, Vec<u16>, EmuReport) {
    let (rows, cols) = (40usize, 96usize);
    let x: Vec<u16> = (0..rows * cols).map(|i| i as u16 + 1).collect();
    let xb = bytes(&x);
    let map = map_of(&xb, rows as u64, cols as u64, 16, 64, Swizzle::B128);
    let mut out = bytes(&vec![0u16; 1024]);
    let (x0, y0) = (64usize, 32usize);
    let r = run(
        &program(TMA_BOX),
        cfg(128, 2048),
        &mut [
            EmuArg::Slice(&xb),
            EmuArg::Slice(&map),
            EmuArg::SliceMut(&mut out),
            scalar(x0 as u32),
            scalar(y0 as u32),
            scalar(wait),
        ],
    );
    // box element (r, c) at byte r*128 + c*2, swizzled; zero outside the 40 × 96 tensor
    let mut want = vec![0u16; 1024];
    for r in 0..16 {
        for c in 0..64 {
            let (gr, gc) = (y0 + r, x0 + c);
            let v = if gr < rows && gc < cols {
                x[gr * cols + gc]
            } else {
                0
            };
            want[swizzle128(r * 128 + c * 2) / 2] = v;
        }
    }
    (values(&out), want, r)
}

#[test]
fn tma_box_load_is_swizzled_and_zero_filled() {
    let (got, want, r) = tma_case(1);
    assert!(r.is_clean(), "{:?}", r.findings);
    assert_eq!(got, want);
    assert!(
        got.contains(&0) && got[1] != want[0],
        "the case has zero fill and a swizzle"
    );
}

#[test]
fn reading_a_tma_tile_before_its_barrier_is_reported() {
    let (_, _, r) = tma_case(0);
    let f = of_kind(&r, FindingKind::TmaPendingAccess);
    assert_eq!(f.len(), 1, "{:?}", r.findings);
    assert_eq!(f[0].line, line_of(TMA_BOX, "read the tile"));
    assert!(f[0].detail.contains("`tile`"), "{}", f[0]);
    // thread 0 issued the load, but only a wait on the barrier makes the bytes visible
    assert_eq!(f[0].thread, (0, 0, 0));
}

#[test]
fn an_uninitialised_barrier_is_reported() {
    let (_, _, r) = tma_case(2);
    let f = of_kind(&r, FindingKind::MbarrierMisuse);
    assert_eq!(f.len(), 1, "{:?}", r.findings);
    assert_eq!(f[0].line, line_of(TMA_BOX, "never initialised"));
    assert!(
        f[0].detail.contains("`bar`[1]") && f[0].detail.contains("never initialised"),
        "{}",
        f[0]
    );
}

const RING: &str = "fn ring(x: &[u16], map: &[u64], out: &mut [u32], tiles: u32) {
    let stages = dyn_shared::<u16>();
    let full = shared::<[u64; 2]>();
    let empty = shared::<[u64; 2]>();
    let t = thread_idx().x;
    if t == 0 {
        for s in 0..2u32 {
            mbarrier_init(&mut full[s], 1);
            mbarrier_init(&mut empty[s], 32);
        }
        fence_barrier_init();
    }
    sync_threads();
    if t >= 32 {
        if t == 32 {
            for i in 0..tiles {
                let s = i % 2;
                if i >= 2 {
                    mbarrier_wait(&mut empty[s], (i / 2 + 1) % 2);
                }
                mbarrier_expect_tx(&mut full[s], 1024);
                tma_load_2d(&mut stages[s * 512], &map[0], x, &mut full[s], 0, i * 8);
            }
        }
    } else {
        let mut sum = 0u32;
        for i in 0..tiles {
            let s = i % 2;
            mbarrier_wait(&mut full[s], (i / 2) % 2);
            for j in 0..16u32 {
                sum += stages[s * 512 + t * 16 + j] as u32;
            }
            mbarrier_arrive(&mut empty[s]);
        }
        out[t] = sum;
    }
}";

#[test]
fn mbarrier_ring_over_several_phases() {
    let tiles = 7usize;
    let x: Vec<u16> = (0..tiles * 512).map(|i| (i * 7 % 1000) as u16).collect();
    let xb = bytes(&x);
    let map = map_of(&xb, tiles as u64 * 8, 64, 8, 64, Swizzle::None);
    let want: Vec<u32> = (0..32)
        .map(|t| {
            (0..tiles)
                .flat_map(|i| (0..16).map(move |j| (i, j)))
                .map(|(i, j)| x[i * 512 + t * 16 + j] as u32)
                .sum()
        })
        .collect();
    let p = program(RING);
    for schedule in [
        Schedule::Deterministic,
        Schedule::Shuffled { seed: 1 },
        Schedule::Shuffled { seed: 7 },
    ] {
        let mut out = bytes(&[0u32; 32]);
        let opts = EmuOptions {
            schedule,
            ..EmuOptions::default()
        };
        let r = run_with(
            &p,
            cfg(64, 2048),
            &mut [
                EmuArg::Slice(&xb),
                EmuArg::Slice(&map),
                EmuArg::SliceMut(&mut out),
                scalar(tiles as u32),
            ],
            &opts,
        );
        assert!(r.is_clean(), "{schedule:?}: {:?}", r.findings);
        assert_eq!(values::<u32>(&out), want, "{schedule:?}");
    }
}

const NEVER_ARMED: &str = "fn never_armed(out: &mut [u32]) {
    let bar = shared::<[u64; 1]>();
    let t = thread_idx().x;
    if t == 0 {
        mbarrier_init(&mut bar[0], 1);
    }
    sync_threads();
    mbarrier_wait(&mut bar[0], 0); // nobody arrives
    out[t] = 1;
}";

#[test]
fn waiting_on_a_barrier_never_armed_is_a_deadlock() {
    let mut out = bytes(&[0u32; 64]);
    let r = run(
        &program(NEVER_ARMED),
        cfg(64, 0),
        &mut [EmuArg::SliceMut(&mut out)],
    );
    let f = of_kind(&r, FindingKind::MbarrierDeadlock);
    assert_eq!(f.len(), 1, "{:?}", r.findings);
    assert_eq!(f[0].line, line_of(NEVER_ARMED, "nobody arrives"));
    assert_eq!(f[0].occurrences, 64);
    assert!(f[0].detail.contains("`bar`[0]"), "{}", f[0]);
    assert!(f[0].detail.contains("1 of 1 arrival"), "{}", f[0]);
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
}

/// A kernel multiplying a 64 × 64 A by a 64 × N B (K = 64 in four k16 steps) from a host-built
/// shared image: A K-major and swizzled at byte 0, B after it.
fn mm_source(n: usize, trans_b: bool, misuse: &str) -> String {
    let (call, lbo, sbo, kstep) = if trans_b {
        ("wgmma_tb", 8192, 1024, 1024)
    } else {
        ("wgmma", 16, 1024, 16)
    };
    format!(
        "fn mm(img: &[u16], out: &mut [f32], words: u32) {{
    let sm = dyn_shared::<u16>();
    let t = thread_idx().x;
    for i in 0..words / 128 {{
        sm[i * 128 + t] = img[i * 128 + t];
    }}
    fence_proxy_async();
    sync_threads();
    let mut acc = [0.0f32; {r}];
    wgmma_fence();
    for kk in 0..4u32 {{
        let da = wgmma_desc(&sm[kk * 16], 16, 1024);
        let db = wgmma_desc(&sm[4096 + kk * {kstep}], {lbo}, {sbo});
        {call}::<bf16>(&mut acc, da, db);
    }}
    wgmma_commit();
    {misuse}
    wgmma_wait::<0>(&mut acc);
    let w = t / 32;
    let l = t % 32;
    for j in 0..{nb}u32 {{
        for r in 0..4u32 {{
            let row = 16 * w + l / 4 + 8 * (r / 2);
            let col = 8 * j + 2 * (l % 4) + r % 2;
            out[row * {n} + col] = acc[4 * j + r];
        }}
    }}
}}",
        r = n / 2,
        nb = n / 8,
    )
}

/// Runs `mm` on random small integers; (result, float64 reference, report).
fn mm_case(n: usize, trans_b: bool, misuse: &str) -> (Vec<f32>, Vec<f64>, EmuReport) {
    let k = 64;
    let val = |i: usize| ((i * 2654435761) >> 7) % 17;
    let a: Vec<f32> = (0..64 * k).map(|i| val(i) as f32 / 4.0 - 2.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| val(i + 99) as f32 / 8.0 - 1.0).collect(); // b[k][n]
    let b_bytes = if trans_b { k * n.max(64) * 2 } else { n * 128 };
    let mut img = vec![0u16; (8192 + b_bytes.div_ceil(256) * 256) / 2];
    let bits = |v: f32| bf16::from_f32(v).to_bits();
    for r in 0..64 {
        for kk in 0..k {
            img[swizzle128(r / 8 * 1024 + r % 8 * 128 + kk * 2) / 2] = bits(a[r * k + kk]);
        }
    }
    for kk in 0..k {
        for c in 0..n {
            let at = if trans_b {
                // N-major: 64 n per 128-byte line, 8 k per 1024-byte atom (SBO), atoms of n at LBO
                c / 64 * 8192 + c % 64 * 2 + kk % 8 * 128 + kk / 8 * 1024
            } else {
                // K-major: n as the row
                c / 8 * 1024 + c % 8 * 128 + kk * 2
            };
            img[(8192 + swizzle128(at)) / 2] = bits(b[kk * n + c]);
        }
    }
    let words = img.len() as u32;
    let ib = bytes(&img);
    let mut out = bytes(&vec![0f32; 64 * n]);
    let src = mm_source(n, trans_b, misuse);
    let r = run(
        &program(&src),
        cfg(128, img.len() as u32 * 2),
        &mut [
            EmuArg::Slice(&ib),
            EmuArg::SliceMut(&mut out),
            scalar(words),
        ],
    );
    let want: Vec<f64> = (0..64 * n)
        .map(|i| {
            let (row, col) = (i / n, i % n);
            (0..k)
                .map(|kk| a[row * k + kk] as f64 * b[kk * n + col] as f64)
                .sum()
        })
        .collect();
    (values(&out), want, r)
}

fn assert_matmul(n: usize, trans_b: bool) {
    let (got, want, r) = mm_case(n, trans_b, "");
    assert!(r.is_clean(), "n {n} trans_b {trans_b}: {:?}", r.findings);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            *g as f64,
            *w,
            "n {n} trans_b {trans_b}: C[{}][{}]",
            i / n,
            i % n
        );
    }
}

#[test]
fn wgmma_matches_a_float64_matmul() {
    assert_matmul(8, false);
    assert_matmul(256, false);
}

#[test]
fn wgmma_with_b_n_major_matches_a_float64_matmul() {
    assert_matmul(8, true);
    assert_matmul(128, true);
}

#[test]
fn the_accumulator_read_in_flight_is_reported() {
    let (_, _, r) = mm_case(8, false, "out[t] = acc[1]; // too early");
    let f = of_kind(&r, FindingKind::WgmmaAccumulatorInFlight);
    assert_eq!(f.len(), 1, "{:?}", r.findings);
    assert!(f[0].detail.contains("`acc`[1] is read"), "{}", f[0]);
    assert_eq!(f[0].occurrences, 128);
}

#[test]
fn a_shared_store_under_an_in_flight_wgmma_is_reported() {
    let (_, _, r) = mm_case(8, false, "if t == 0 { sm[4096] = 0; } // overwrite B");
    let f = of_kind(&r, FindingKind::WgmmaOperandOverwritten);
    assert_eq!(f.len(), 1, "{:?}", r.findings);
    assert!(f[0].detail.contains("`sm`[4096]"), "{}", f[0]);
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
}
