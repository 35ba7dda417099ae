//! The emulator computes what the GPU computes: integer wrapping and PTX shift/division
//! rules, f16/bf16 rounding, saturating float→int casts, warp shuffles and votes with their
//! edge lanes, atomics across blocks, dynamic shared memory, async copies, vector and
//! register-array accesses, control flow, multi-dimensional blocks and device functions.

mod emu_common;

use emu_common::*;
use half::{bf16, f16};
use kiln_codegen::spec::{Bindings, Dtype};
use kiln_runtime::emu::{EmuArg, EmuOptions, Schedule};
use kiln_runtime::launch::LaunchConfig;

#[test]
fn integers_wrap_and_shifts_clamp() {
    let p = program(
        "fn ints(a: &[i32], b: &[u32], oi: &mut [i32], ou: &mut [u32], o8: &mut [u8], o64: &mut [i64]) {
            if thread_idx().x == 0 {
                oi[0] = a[0] + a[1];
                oi[1] = a[2] * a[3];
                oi[2] = a[4] / a[5];
                oi[3] = a[4] % a[5];
                oi[4] = a[4] >> 1;
                oi[5] = a[0] >> b[0];
                oi[6] = a[4] >> b[0];
                oi[7] = a[6] / a[7];
                oi[8] = -a[6];
                oi[9] = a[4].abs() + a[6].abs();
                ou[0] = b[1] << b[0];
                ou[1] = b[1] << 31;
                ou[2] = b[2] - b[3];
                ou[3] = b[5] >> b[6];
                ou[4] = !b[2];
                ou[5] = b[5].wrapping_mul(b[5]);
                ou[6] = b[1] << (a[7] as u32);
                o8[0] = (b[4] as u8) + 200u8;
                o8[1] = (b[5] as u8) << 1;
                o64[0] = (a[6] as i64) - 1;
                o64[1] = (b[5] as i64) << 40;
                o64[2] = (a[4] as u32) as i64;
            }
        }",
    );
    let a = [i32::MAX, 1, 65536, 65536, -7, 2, i32::MIN, -1];
    let b = [40u32, 1, 0, 1, 100, 0x8000_0001, 31];
    let (mut oi, mut ou, mut o8, mut o64) = (
        bytes(&[0i32; 10]),
        bytes(&[0u32; 7]),
        vec![0u8; 2],
        bytes(&[0i64; 3]),
    );
    run_clean(
        &p,
        LaunchConfig::linear(1, 32),
        &mut [
            EmuArg::Slice(&bytes(&a)),
            EmuArg::Slice(&bytes(&b)),
            EmuArg::SliceMut(&mut oi),
            EmuArg::SliceMut(&mut ou),
            EmuArg::SliceMut(&mut o8),
            EmuArg::SliceMut(&mut o64),
        ],
    );
    let oi: Vec<i32> = values(&oi);
    assert_eq!(
        oi,
        [
            i32::MIN,
            0,
            -3,
            -1,
            -4,
            0,
            -1,
            i32::MIN,
            i32::MIN,
            7 + i32::MIN
        ]
    );
    let ou: Vec<u32> = values(&ou);
    // shifts by >= 32 give 0 (PTX clamps); a negative amount is a huge unsigned one
    assert_eq!(
        ou,
        [
            0,
            0x8000_0000,
            u32::MAX,
            1,
            u32::MAX,
            0x0000_0001u32.wrapping_add(0),
            0
        ]
    );
    assert_eq!(o8, [44, 2]);
    let o64: Vec<i64> = values(&o64);
    assert_eq!(o64, [i32::MIN as i64 - 1, 1i64 << 40, 0xffff_fff9]);
}

#[test]
fn halves_round_like_the_gpu() {
    let p = program(
        "fn halves(a: &[f16], b: &[f16], x: &[f32], d: &[f64], c: &[bf16], oh: &mut [f16], ob: &mut [bf16], of: &mut [f32], n: u32) {
            let i = thread_idx().x;
            if i < n {
                oh[4 * i] = a[i] + b[i];
                oh[4 * i + 1] = a[i] * b[i];
                oh[4 * i + 2] = x[i] as f16;
                oh[4 * i + 3] = d[i] as f16;
                ob[3 * i] = c[i] * c[i] - c[i];
                ob[3 * i + 1] = x[i] as bf16;
                ob[3 * i + 2] = (a[i] as f32 / 3.0) as bf16;
                of[i] = (a[i] / b[i]) as f32 + (-c[i]) as f32;
            }
        }",
    );
    let n = 64usize;
    let a: Vec<f16> = (0..n)
        .map(|i| f16::from_f32(1.0 + i as f32 * 0.37))
        .collect();
    let b: Vec<f16> = (0..n)
        .map(|i| f16::from_f32(0.001 + i as f32 * 1.9))
        .collect();
    let x: Vec<f32> = (0..n)
        .map(|i| 1.0 + (i as f32) * 1.0e-3 + 2f32.powi(-12))
        .collect();
    // a value just above an f16 tie that f32 rounds onto the tie: the printer's
    // `kiln_f16_from((float)d)` rounds twice and lands on the even neighbour
    let mut d: Vec<f64> = (0..n).map(|i| i as f64 * 0.1).collect();
    d[0] = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
    let c: Vec<bf16> = (0..n)
        .map(|i| bf16::from_f32(0.5 + i as f32 * 3.3))
        .collect();
    let (mut oh, mut ob, mut of) = (
        bytes(&vec![f16::ZERO; 4 * n]),
        bytes(&vec![bf16::ZERO; 3 * n]),
        bytes(&vec![0f32; n]),
    );
    run_clean(
        &p,
        LaunchConfig::linear(1, 64),
        &mut [
            EmuArg::Slice(&bytes(&a)),
            EmuArg::Slice(&bytes(&b)),
            EmuArg::Slice(&bytes(&x)),
            EmuArg::Slice(&bytes(&d)),
            EmuArg::Slice(&bytes(&c)),
            EmuArg::SliceMut(&mut oh),
            EmuArg::SliceMut(&mut ob),
            EmuArg::SliceMut(&mut of),
            scalar(n as u32),
        ],
    );
    let oh: Vec<f16> = values(&oh);
    let ob: Vec<bf16> = values(&ob);
    let of: Vec<f32> = values(&of);
    let h = f16::from_f32;
    let hb = bf16::from_f32;
    for i in 0..n {
        let (af, bf, cf) = (a[i].to_f32(), b[i].to_f32(), c[i].to_f32());
        assert_eq!(oh[4 * i].to_bits(), h(af + bf).to_bits(), "f16 add {i}");
        assert_eq!(oh[4 * i + 1].to_bits(), h(af * bf).to_bits(), "f16 mul {i}");
        assert_eq!(oh[4 * i + 2].to_bits(), h(x[i]).to_bits(), "f32->f16 {i}");
        assert_eq!(
            oh[4 * i + 3].to_bits(),
            h(d[i] as f32).to_bits(),
            "f64->f16 {i}"
        );
        let cc = hb(cf * cf).to_f32();
        assert_eq!(ob[3 * i].to_bits(), hb(cc - cf).to_bits(), "bf16 {i}");
        assert_eq!(ob[3 * i + 1].to_bits(), hb(x[i]).to_bits(), "f32->bf16 {i}");
        assert_eq!(
            ob[3 * i + 2].to_bits(),
            hb(af / 3.0).to_bits(),
            "f32 stays f32 {i}"
        );
        assert_eq!(of[i].to_bits(), (h(af / bf).to_f32() - cf).to_bits(), "{i}");
    }
    // 1 + 2^-11 + 2^-40 is just above the tie between 1 and 1 + 2^-10, so one correct
    // rounding gives 1 + 2^-10; `(float)d` lands exactly on the tie and f16 then rounds to even
    assert_eq!(
        oh[3],
        f16::ONE,
        "double rounding through float, as the CUDA does"
    );
}

#[test]
fn float_to_int_casts_saturate() {
    let p = program(
        "fn casts(x: &[f32], oi: &mut [i32], ou: &mut [u32], o8: &mut [u8], o64: &mut [i64], ob: &mut [u16], n: u32) {
            let i = thread_idx().x;
            if i < n {
                oi[i] = x[i] as i32;
                ou[i] = x[i] as u32;
                o8[i] = x[i] as u8;
                o64[i] = x[i] as i64;
                ob[i] = (x[i] as f16) as u16;
            }
        }",
    );
    let x = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -1.5,
        2.9,
        3e9,
        -3e9,
        255.5,
        256.0,
        1e20,
        -0.0,
        65504.0,
        70000.0,
    ];
    let n = x.len();
    let (mut oi, mut ou, mut o8, mut o64, mut ob) = (
        bytes(&vec![7i32; n]),
        bytes(&vec![7u32; n]),
        vec![7u8; n],
        bytes(&vec![7i64; n]),
        bytes(&vec![7u16; n]),
    );
    run_clean(
        &p,
        LaunchConfig::linear(1, 32),
        &mut [
            EmuArg::Slice(&bytes(&x)),
            EmuArg::SliceMut(&mut oi),
            EmuArg::SliceMut(&mut ou),
            EmuArg::SliceMut(&mut o8),
            EmuArg::SliceMut(&mut o64),
            EmuArg::SliceMut(&mut ob),
            scalar(n as u32),
        ],
    );
    // Rust's `as` is PTX's cvt.rzi.sat: saturate, NaN -> 0
    assert_eq!(
        values::<i32>(&oi),
        x.iter().map(|v| *v as i32).collect::<Vec<_>>()
    );
    assert_eq!(
        values::<u32>(&ou),
        x.iter().map(|v| *v as u32).collect::<Vec<_>>()
    );
    assert_eq!(o8, x.iter().map(|v| *v as u8).collect::<Vec<_>>());
    assert_eq!(
        values::<i64>(&o64),
        x.iter().map(|v| *v as i64).collect::<Vec<_>>()
    );
    assert_eq!(
        values::<u16>(&ob),
        x.iter()
            .map(|v| f16::from_f32(*v).to_f32() as u16)
            .collect::<Vec<_>>()
    );
}

const SHUFFLES: &str = "fn shuffles(x: &[u32], h: &[f16], d: &[f64], out: &mut [u32], oh: &mut [f16], od: &mut [f64]) {
    let t = thread_idx().x;
    let v = x[t];
    out[8 * t] = shfl_sync(0xffff_ffff, v, (lane_id() + 3) % 32);
    out[8 * t + 1] = shfl_xor_sync(0xffff_ffff, v, 1);
    out[8 * t + 2] = shfl_down_sync(0xffff_ffff, v, 4);
    out[8 * t + 3] = shfl_up_sync(0xffff_ffff, v, 4);
    out[8 * t + 4] = ballot_sync(0xffff_ffff, v % 3 == 0);
    out[8 * t + 5] = (all_sync(0xffff_ffff, v < 1000) as u32) * 2 + any_sync(0xffff_ffff, v == 70) as u32;
    out[8 * t + 6] = activemask();
    out[8 * t + 7] = shfl_sync(0xffff_ffff, v, 0xffff_ffe1);
    oh[t] = shfl_xor_sync(0xffff_ffff, h[t], 16);
    od[t] = shfl_down_sync(0xffff_ffff, d[t], 31);
}";

#[test]
fn shuffles_and_votes_follow_ptx_lane_rules() {
    let p = program(SHUFFLES);
    let x: Vec<u32> = (0..64).map(|i| i * 10).collect();
    let h: Vec<f16> = (0..64).map(|i| f16::from_f32(i as f32 * 0.5)).collect();
    let d: Vec<f64> = (0..64).map(|i| i as f64 * 1.25).collect();
    let (mut out, mut oh, mut od) = (
        bytes(&[0u32; 64 * 8]),
        bytes(&[f16::ZERO; 64]),
        bytes(&[0f64; 64]),
    );
    run_clean(
        &p,
        LaunchConfig::linear(1, 64),
        &mut [
            EmuArg::Slice(&bytes(&x)),
            EmuArg::Slice(&bytes(&h)),
            EmuArg::Slice(&bytes(&d)),
            EmuArg::SliceMut(&mut out),
            EmuArg::SliceMut(&mut oh),
            EmuArg::SliceMut(&mut od),
        ],
    );
    let out: Vec<u32> = values(&out);
    let (oh, od): (Vec<f16>, Vec<f64>) = (values(&oh), values(&od));
    for t in 0..64usize {
        let (w, l) = (t / 32 * 32, t % 32);
        let at = |lane: usize| x[w + lane];
        let r = &out[8 * t..8 * t + 8];
        assert_eq!(r[0], at((l + 3) % 32), "shfl idx, thread {t}");
        assert_eq!(r[1], at(l ^ 1), "shfl xor, thread {t}");
        assert_eq!(
            r[2],
            if l + 4 <= 31 { at(l + 4) } else { at(l) },
            "shfl down keeps the top lanes, thread {t}"
        );
        assert_eq!(
            r[3],
            if l >= 4 { at(l - 4) } else { at(l) },
            "shfl up keeps the bottom lanes, thread {t}"
        );
        let ballot = (0..32)
            .filter(|&k| at(k) % 3 == 0)
            .fold(0u32, |m, k| m | 1 << k);
        assert_eq!(r[4], ballot, "ballot, thread {t}");
        assert_eq!(r[5], 2 + (w == 0) as u32, "all/any, thread {t}");
        assert_eq!(r[6], u32::MAX, "activemask, thread {t}");
        assert_eq!(
            r[7],
            at(1),
            "shfl idx uses the low 5 bits of the lane, thread {t}"
        );
        assert_eq!(oh[t], h[w + (l ^ 16)], "f16 shuffle, thread {t}");
        assert_eq!(
            od[t],
            if l == 0 { d[w + 31] } else { d[t] },
            "f64 shuffle, thread {t}"
        );
    }
}

#[test]
fn atomics_combine_across_blocks() {
    let p = program(
        "fn atomics(counts: &mut [u32], mins: &mut [i32], sums: &mut [f32], slots: &mut [u32], order: &mut [u32], flags: &mut [u64]) {
            let i = block_idx().x * block_dim().x + thread_idx().x;
            atomic_add(&mut counts[0], 1);
            atomic_max(&mut counts[1], i);
            atomic_sub(&mut counts[2], 2);
            atomic_min(&mut mins[0], 100 - (i as i32));
            atomic_add(&mut sums[0], 0.5);
            let slot = atomic_add(&mut slots[0], 1u32);
            order[slot] = i + 1;
            atomic_or(&mut flags[i / 64], 1u64 << (i % 64));
            let prev = atomic_cas(&mut counts[3], 0, i + 1);
            if prev == 0 {
                atomic_exch(&mut counts[4], i);
            }
        }",
    );
    let n = 64 * 128usize;
    let (mut counts, mut mins, mut sums, mut slots, mut order, mut flags) = (
        bytes(&[0u32, 0, 0, 0, u32::MAX]),
        bytes(&[i32::MAX]),
        bytes(&[0f32]),
        bytes(&[0u32]),
        bytes(&vec![0u32; n]),
        bytes(&vec![0u64; n / 64]),
    );
    for threads in [1, 2, 4] {
        let opts = EmuOptions {
            host_threads: threads,
            ..EmuOptions::default()
        };
        for b in [
            &mut counts,
            &mut mins,
            &mut sums,
            &mut slots,
            &mut order,
            &mut flags,
        ] {
            b.fill(0);
        }
        mins.copy_from_slice(&bytes(&[i32::MAX]));
        let r = run_with(
            &p,
            LaunchConfig::linear(64, 128),
            &mut [
                EmuArg::SliceMut(&mut counts),
                EmuArg::SliceMut(&mut mins),
                EmuArg::SliceMut(&mut sums),
                EmuArg::SliceMut(&mut slots),
                EmuArg::SliceMut(&mut order),
                EmuArg::SliceMut(&mut flags),
            ],
            &opts,
        );
        assert!(r.is_clean(), "{:?}", r.findings);
        let c: Vec<u32> = values(&counts);
        assert_eq!(c[0], n as u32);
        assert_eq!(c[1], n as u32 - 1);
        assert_eq!(c[2], (-(2 * n as i64)) as u32);
        assert_eq!(c[3], 1, "the first CAS (thread 0) wins");
        assert_eq!(c[4], 0);
        assert_eq!(values::<i32>(&mins)[0], 100 - (n as i32 - 1));
        assert_eq!(values::<f32>(&sums)[0], n as f32 * 0.5);
        let mut o: Vec<u32> = values(&order);
        o.sort_unstable();
        assert_eq!(
            o,
            (1..=n as u32).collect::<Vec<_>>(),
            "every slot taken exactly once"
        );
        assert!(values::<u64>(&flags).iter().all(|f| *f == u64::MAX));
    }
}

#[test]
fn dynamic_shared_memory_and_async_copies() {
    let reverse = program(
        "fn reverse_chunks(x: &[f32], out: &mut [f32], n: u32) {
            let buf = dyn_shared::<f32>();
            let t = thread_idx().x;
            let base = block_idx().x * block_dim().x;
            let mut v = 0.0f32;
            if base + t < n {
                v = x[base + t];
            }
            buf[t] = v;
            sync_threads();
            let src = block_dim().x - 1 - t;
            if base + t < n && base + src < n {
                out[base + t] = buf[src];
            }
        }",
    );
    let n = 1024u32;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut out = bytes(&vec![0f32; n as usize]);
    run_clean(
        &reverse,
        LaunchConfig::linear(4, 256).with_dyn_shared(256 * 4),
        &mut [
            EmuArg::Slice(&bytes(&x)),
            EmuArg::SliceMut(&mut out),
            scalar(n),
        ],
    );
    let out: Vec<f32> = values(&out);
    for (i, v) in out.iter().enumerate() {
        assert_eq!(*v, (i / 256 * 256 + 255 - i % 256) as f32);
    }

    let stage = program_with(
        "fn async_stage<const TILE: u32>(x: &[f32], out: &mut [f32], scale: f32, n: u32) {
            let tile = shared::<[f32; TILE]>();
            let base = block_idx().x * TILE;
            for j in (thread_idx().x * 4..TILE).step_by(block_dim().x * 4) {
                if base + j + 4 <= n {
                    cp_async(&mut tile[j], &x[base + j]);
                }
            }
            cp_async_commit();
            cp_async_wait::<0>();
            sync_threads();
            for j in (thread_idx().x..TILE).step_by(block_dim().x) {
                if base + j < n {
                    out[base + j] = tile[j] * scale;
                }
            }
        }",
        &[],
        Bindings::default().with_const("TILE", 512),
    );
    let n = 2048u32;
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
    let mut out = bytes(&vec![0f32; n as usize]);
    run_clean(
        &stage,
        LaunchConfig::linear(4, 64),
        &mut [
            EmuArg::Slice(&bytes(&x)),
            EmuArg::SliceMut(&mut out),
            scalar(2.0f32),
            scalar(n),
        ],
    );
    assert_eq!(
        values::<f32>(&out),
        x.iter().map(|v| v * 2.0).collect::<Vec<_>>()
    );
}

#[test]
fn vector_loads_stores_and_register_arrays() {
    let vec_scale = |t: Dtype| {
        program_with(
            "fn vec_scale<T: Float>(x: &[T], out: &mut [T], scale: T, n: u32) {
                let i = block_idx().x * block_dim().x + thread_idx().x;
                let lanes = 16 / size_of::<T>();
                let first = i * lanes;
                if first + lanes <= n {
                    let mut v = x.vload(first);
                    for k in 0..v.lanes() {
                        v[k] = v[k] * scale;
                    }
                    out.vstore(first, v);
                } else if first < n {
                    for j in first..n {
                        out[j] = x[j] * scale;
                    }
                }
            }",
            &[],
            Bindings::default().with_type("T", t),
        )
    };
    let n = 1003u32;
    let x: Vec<f32> = (0..n).map(|i| i as f32 - 500.0).collect();
    let mut out = bytes(&vec![0f32; n as usize]);
    run_clean(
        &vec_scale(Dtype::F32),
        LaunchConfig::for_elements(n.div_ceil(4), 64),
        &mut [
            EmuArg::Slice(&bytes(&x)),
            EmuArg::SliceMut(&mut out),
            scalar(3.0f32),
            scalar(n),
        ],
    );
    assert_eq!(
        values::<f32>(&out),
        x.iter().map(|v| v * 3.0).collect::<Vec<_>>()
    );
    let xb: Vec<bf16> = x.iter().map(|v| bf16::from_f32(*v * 0.01)).collect();
    let mut outb = bytes(&vec![bf16::ZERO; n as usize]);
    run_clean(
        &vec_scale(Dtype::Bf16),
        LaunchConfig::for_elements(n.div_ceil(8), 64),
        &mut [
            EmuArg::Slice(&bytes(&xb)),
            EmuArg::SliceMut(&mut outb),
            scalar(bf16::from_f32(1.5)),
            scalar(n),
        ],
    );
    let want: Vec<bf16> = xb
        .iter()
        .map(|v| bf16::from_f32(v.to_f32() * 1.5))
        .collect();
    assert_eq!(values::<bf16>(&outb), want);

    let regs = program(
        "fn regs(a: &[u32], out: &mut [u32]) {
            let t = thread_idx().x;
            let mut grid = [[0u32; 3]; 4];
            for r in 0..4u32 {
                for c in 0..3u32 {
                    grid[r][c] = a[t] * 10 + r * 3 + c;
                }
            }
            let mut acc = [1u32; 5];
            for k in 0..5u32 {
                acc[k] += grid[k % 4][k % 3];
            }
            let v = out.vload(4 * t);
            let mut w = v;
            w[t % 4] = acc[0] + acc[1] + acc[2] + acc[3] + acc[4];
            out.vstore(4 * t, w);
        }",
    );
    let a: Vec<u32> = (0..32).collect();
    let mut out = bytes(&[9u32; 128]);
    run_clean(
        &regs,
        LaunchConfig::linear(1, 32),
        &mut [EmuArg::Slice(&bytes(&a)), EmuArg::SliceMut(&mut out)],
    );
    let out: Vec<u32> = values(&out);
    for t in 0..32u32 {
        let g = |r: u32, c: u32| t * 10 + r * 3 + c;
        let sum: u32 = (0..5u32).map(|k| 1 + g(k % 4, k % 3)).sum();
        for lane in 0..4 {
            let want = if lane == t % 4 { sum } else { 9 };
            assert_eq!(out[(4 * t + lane) as usize], want, "thread {t} lane {lane}");
        }
    }
}

#[test]
fn loops_break_continue_and_early_return() {
    let p = program(
        "fn first_above(x: &[f32], out: &mut [u32], cols: u32, rows: u32, threshold: f32) {
            let row = block_idx().x * block_dim().x + thread_idx().x;
            if row >= rows {
                return;
            }
            let mut found = u32::MAX;
            let mut j = 0u32;
            loop {
                if j >= cols {
                    break;
                }
                let v = x[row * cols + j];
                j += 1;
                if v.is_nan() || v <= threshold {
                    continue;
                }
                found = j - 1;
                break;
            }
            let mut total = 0u32;
            for k in (1..11u32).step_by(3) {
                total += k;
            }
            let mut w = 5i32;
            while w > -3 {
                w -= 2;
            }
            out[row] = found + (total - 22) + (w + 3) as u32;
        }",
    );
    let (cols, rows) = (16u32, 100u32);
    let x: Vec<f32> = (0..cols * rows)
        .map(|i| {
            if i % 7 == 3 {
                f32::NAN
            } else {
                ((i * 37) % 101) as f32
            }
        })
        .collect();
    let mut out = bytes(&vec![0u32; rows as usize]);
    run_clean(
        &p,
        LaunchConfig::for_elements(rows, 32),
        &mut [
            EmuArg::Slice(&bytes(&x)),
            EmuArg::SliceMut(&mut out),
            scalar(cols),
            scalar(rows),
            scalar(90.0f32),
        ],
    );
    let out: Vec<u32> = values(&out);
    for r in 0..rows as usize {
        let row = &x[r * cols as usize..(r + 1) * cols as usize];
        let want = row
            .iter()
            .position(|v| !v.is_nan() && *v > 90.0)
            .map_or(u32::MAX, |p| p as u32);
        // 1 + 4 + 7 + 10 = 22; w ends at -3
        assert_eq!(out[r], want, "row {r}");
    }
}

#[test]
fn multi_dimensional_blocks_and_warp_ids() {
    let p = program(
        "fn dims(out: &mut [u32]) {
            let t = thread_idx();
            let b = block_idx();
            let lin = t.x + block_dim().x * (t.y + block_dim().y * t.z);
            let blk = b.x + grid_dim().x * (b.y + grid_dim().y * b.z);
            let id = blk * (block_dim().x * block_dim().y * block_dim().z) + lin;
            out[4 * id] = t.x + 100 * t.y + 10000 * t.z;
            out[4 * id + 1] = b.x + 100 * b.y + 10000 * b.z;
            out[4 * id + 2] = warp_id() * 1000 + lane_id();
            out[4 * id + 3] = warp_size();
        }",
    );
    let (grid, block) = ((2u32, 3u32, 2u32), (8u32, 3u32, 2u32));
    let total = (grid.0 * grid.1 * grid.2 * block.0 * block.1 * block.2) as usize;
    let mut out = bytes(&vec![0u32; 4 * total]);
    let cfg = LaunchConfig {
        grid,
        block,
        dyn_shared_bytes: 0,
    };
    let r = run_clean(&p, cfg, &mut [EmuArg::SliceMut(&mut out)]);
    assert_eq!(r.threads, total as u64);
    let out: Vec<u32> = values(&out);
    let mut id = 0;
    for bz in 0..grid.2 {
        for by in 0..grid.1 {
            for bx in 0..grid.0 {
                for z in 0..block.2 {
                    for y in 0..block.1 {
                        for x in 0..block.0 {
                            let lin = x + block.0 * (y + block.1 * z);
                            assert_eq!(
                                &out[4 * id..4 * id + 4],
                                [
                                    x + 100 * y + 10000 * z,
                                    bx + 100 * by + 10000 * bz,
                                    lin / 32 * 1000 + lin % 32,
                                    32
                                ]
                            );
                            id += 1;
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn device_functions_are_inlined_with_early_returns() {
    let p = program_with(
        "fn with_devices<T: Float>(x: &[T], out: &mut [f32], n: u32) {
            let i = block_idx().x * block_dim().x + thread_idx().x;
            let v = if i < n { x[i] as f32 } else { 0.0f32 };
            let total: f32 = warp_sum(v);
            let c: u32 = clamp_count(x, i);
            if i < n {
                out[2 * i] = total;
                out[2 * i + 1] = c as f32;
            }
        }",
        &[
            "fn warp_sum<T: Float>(v: T) -> T {
                let mut acc = v;
                let mut offset = 16u32;
                while offset > 0 {
                    acc = acc + shfl_xor_sync(0xffff_ffff, acc, offset);
                    offset = offset / 2;
                }
                acc
            }",
            "fn clamp_count<T: Float>(x: &[T], i: u32) -> u32 {
                if i >= x.len() {
                    return 0;
                }
                if x[i] > (2.0 as T) {
                    return 2;
                }
                1
            }",
        ],
        Bindings::default().with_type("T", Dtype::F16),
    );
    let n = 80u32;
    let x: Vec<f16> = (0..n).map(|i| f16::from_f32(i as f32 * 0.125)).collect();
    let mut out = bytes(&vec![0f32; 2 * n as usize]);
    run_clean(
        &p,
        LaunchConfig::linear(3, 32),
        &mut [
            EmuArg::Slice(&bytes(&x)),
            EmuArg::SliceMut(&mut out),
            scalar(n),
        ],
    );
    let out: Vec<f32> = values(&out);
    for i in 0..n as usize {
        let warp = i / 32 * 32;
        let want: f32 = (warp..warp + 32)
            .filter(|&j| j < n as usize)
            .map(|j| x[j].to_f32())
            .sum();
        assert_eq!(out[2 * i], want, "warp sum {i}");
        assert_eq!(out[2 * i + 1], if x[i].to_f32() > 2.0 { 2.0 } else { 1.0 });
    }
}

#[test]
fn same_results_on_any_number_of_host_threads_and_seeds() {
    let p = program(
        "fn dot(x: &[f32], y: &[f32], out: &mut [f32], n: u32) {
            let i = block_idx().x * block_dim().x + thread_idx().x;
            let mut v = 0.0f32;
            if i < n {
                v = x[i] * y[i];
            }
            let mut offset = 16u32;
            while offset > 0 {
                v += shfl_down_sync(0xffff_ffff, v, offset);
                offset /= 2;
            }
            if lane_id() == 0 {
                atomic_add(&mut out[0], v);
            }
        }",
    );
    let n = 100_000u32;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i as u64 * 7919) % 1000) as f32 * 1e-3)
        .collect();
    let y: Vec<f32> = (0..n)
        .map(|i| ((i as u64 * 104_729) % 997) as f32 * 1e-2)
        .collect();
    let run_once = |threads: usize, schedule: Schedule| {
        let mut out = bytes(&[0f32]);
        let opts = EmuOptions {
            host_threads: threads,
            schedule,
            ..EmuOptions::default()
        };
        let r = run_with(
            &p,
            LaunchConfig::for_elements(n, 256),
            &mut [
                EmuArg::Slice(&bytes(&x)),
                EmuArg::Slice(&bytes(&y)),
                EmuArg::SliceMut(&mut out),
                scalar(n),
            ],
            &opts,
        );
        assert!(r.is_clean());
        values::<f32>(&out)[0].to_bits()
    };
    // float atomics across blocks: blocks run in block order whatever the host threads
    let det = run_once(1, Schedule::Deterministic);
    for threads in [2, 8] {
        assert_eq!(run_once(threads, Schedule::Deterministic), det);
    }
    // a shuffled schedule reorders the warps of a block, reproducibly for its seed
    for seed in [1, 99] {
        let s = Schedule::Shuffled { seed };
        assert_eq!(run_once(1, s), run_once(3, s), "seed {seed}");
    }
}
