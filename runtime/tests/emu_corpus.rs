//! The correct kernels of the language corpus (`src/corpus`, copied here because this crate
//! cannot depend on the facade that defines them, plus the device functions of
//! `kiln-algorithms`) run clean on the emulator — no finding at all — and compute what a
//! plain-Rust reference computes.

mod emu_common;

use emu_common::*;
use half::{bf16, f16};
use kiln_codegen::spec::{Bindings, Dtype, Program};
use kiln_runtime::emu::EmuArg;
use kiln_runtime::launch::{KernelScalar, LaunchConfig};

const VECTOR_ADD: &str = r#"fn vector_add<T: Float>(a: &[T], b: &[T], out: &mut [T], n: u32) {
    let i = block_idx().x * block_dim().x + thread_idx().x;
    if i < n {
        out[i] = a[i] + b[i];
    }
}"#;

const SAXPY: &str = r#"fn saxpy(alpha: f32, x: &[f32], y: &mut [f32], n: u32) {
    let start = block_idx().x * block_dim().x + thread_idx().x;
    let stride = grid_dim().x * block_dim().x;
    for i in (start..n).step_by(stride) {
        y[i] = alpha.mul_add(x[i], y[i]);
    }
}"#;

const HAMMING_SCORES: &str = r#"fn hamming_scores<const WORDS: u32>(q: &[u32], keys: &[u32], out: &mut [u16], n: u32) {
    let i = block_idx().x * block_dim().x + thread_idx().x;
    if i < n {
        let mut dist = 0u32;
        for w in 0..WORDS {
            dist += (q[w] ^ keys[i * WORDS + w]).count_ones();
        }
        out[i] = (32 * WORDS - dist) as u16;
    }
}"#;

const VEC_SCALE: &str = r#"fn vec_scale<T: Float>(x: &[T], out: &mut [T], scale: T, n: u32) {
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
}"#;

const BITS_AND_CASTS: &str = r#"fn bits_and_casts(
    x: &[f32],
    words: &[u64],
    out_u32: &mut [u32],
    out_f16: &mut [f16],
    out_bf16: &mut [bf16],
    out_i64: &mut [i64],
    n: u32,
) {
    let i = block_idx().x * block_dim().x + thread_idx().x;
    if i >= n {
        return;
    }
    let v = x[i];
    let bits = v.to_bits();
    let w = words[i];
    let small = (bits & 0xff) as u8;
    let medium = (bits >> 16) as u16;
    let mut acc = bits.leading_zeros() + bits.trailing_zeros() + bits.reverse_bits().count_ones();
    acc += w.count_ones() + w.leading_zeros() + small.count_ones() + medium.trailing_zeros();
    acc = acc.max(3).min(1000).div_ceil(2);
    let back = f32::from_bits(bits);
    let h = back as f16;
    let b = (h as f32 * 2.0) as bf16;
    out_f16[i] = if v.is_nan() { f16::NAN } else { h };
    out_bf16[i] = b;
    out_u32[i] = acc.wrapping_mul(2654435761) ^ (medium as u32);
    let signed = (v * 1000.0) as i64 - i64::MAX / 4;
    out_i64[i] = signed.abs() + (w >> 60) as i64;
}"#;

const FIRST_ABOVE: &str = r#"fn first_above(x: &[f32], out: &mut [u32], cols: u32, rows: u32, threshold: f32) {
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
    out[row] = found;
}"#;

const ROW_DOT_REGISTERS: &str = r#"fn row_dot_registers<const K: u32>(a: &[f32], b: &[f32], out: &mut [f32], rows: u32) {
    let row = block_idx().x * block_dim().x + thread_idx().x;
    if row < rows {
        let mut partial = [0.0f32; 4];
        for k in 0..K {
            let lane = k % 4;
            partial[lane] += a[row * K + k] * b[k];
        }
        let mut total = 0.0f32;
        for p in 0..4u32 {
            total += partial[p];
        }
        out[row] = total;
    }
}"#;

const TRANSPOSE: &str = r#"fn transpose<const TILE: u32>(input: &[f32], out: &mut [f32], rows: u32, cols: u32) {
    let tile = shared::<[[f32; TILE + 1]; TILE]>();
    let x = block_idx().x * TILE + thread_idx().x;
    let y = block_idx().y * TILE + thread_idx().y;
    if x < cols && y < rows {
        tile[thread_idx().y][thread_idx().x] = input[y * cols + x];
    }
    sync_threads();
    let tx = block_idx().y * TILE + thread_idx().x;
    let ty = block_idx().x * TILE + thread_idx().y;
    if tx < rows && ty < cols {
        out[ty * rows + tx] = tile[thread_idx().x][thread_idx().y];
    }
}"#;

const HISTOGRAM: &str = r#"fn histogram<const BINS: u32>(values: &[u32], bins: &mut [u32], n: u32) {
    let local = shared::<[u32; BINS]>();
    for b in (thread_idx().x..BINS).step_by(block_dim().x) {
        local[b] = 0;
    }
    sync_threads();
    let stride = grid_dim().x * block_dim().x;
    for i in (block_idx().x * block_dim().x + thread_idx().x..n).step_by(stride) {
        atomic_add(&mut local[values[i] % BINS], 1);
    }
    sync_threads();
    for b in (thread_idx().x..BINS).step_by(block_dim().x) {
        let count = local[b];
        if count > 0 {
            atomic_add(&mut bins[b], count);
        }
    }
}"#;

const REVERSE_CHUNKS: &str = r#"fn reverse_chunks(x: &[f32], out: &mut [f32], n: u32) {
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
}"#;

const ASYNC_STAGE: &str = r#"fn async_stage<const TILE: u32>(x: &[f32], out: &mut [f32], scale: f32, n: u32) {
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
}"#;

const WARP_REDUCE_SUM: &str = r#"fn warp_reduce_sum(x: &[f32], out: &mut [f32], n: u32) {
    let i = block_idx().x * block_dim().x + thread_idx().x;
    let mut v = 0.0f32;
    if i < n {
        v = x[i];
    }
    let mut offset = 16u32;
    while offset > 0 {
        v += shfl_down_sync(0xffff_ffff, v, offset);
        offset /= 2;
    }
    if lane_id() == 0 {
        atomic_add(&mut out[0], v);
    }
}"#;

const BLOCK_REDUCE_SUM: &str = r#"fn block_reduce_sum<const BLOCK: u32>(x: &[f32], partial: &mut [f32], n: u32) {
    let cache = shared::<[f32; BLOCK]>();
    let t = thread_idx().x;
    let i = block_idx().x * BLOCK * 2 + t;
    let mut v = 0.0f32;
    if i < n {
        v = x[i];
    }
    if i + BLOCK < n {
        v += x[i + BLOCK];
    }
    cache[t] = v;
    sync_threads();
    let mut width = BLOCK / 2;
    while width > 0 {
        if t < width {
            cache[t] += cache[t + width];
        }
        sync_threads();
        width /= 2;
    }
    if t == 0 {
        partial[block_idx().x] = cache[0];
    }
}"#;

const ROW_SOFTMAX: &str = r#"fn row_softmax<T: Float>(x: &[T], out: &mut [T], rows: u32, cols: u32) {
    let row = block_idx().x * (block_dim().x / 32) + warp_id();
    if row < rows {
        let lane = lane_id();
        let mut m = f32::NEG_INFINITY;
        for j in (lane..cols).step_by(32) {
            m = m.max(x[row * cols + j] as f32);
        }
        m = warp_max(m);
        let mut s = 0.0f32;
        for j in (lane..cols).step_by(32) {
            s += (x[row * cols + j] as f32 - m).exp();
        }
        s = warp_sum(s);
        let inv = s.recip();
        for j in (lane..cols).step_by(32) {
            out[row * cols + j] = ((x[row * cols + j] as f32 - m).exp() * inv) as T;
        }
    }
}"#;

const BLOCK_SCAN: &str = r#"fn block_scan<const BLOCK: u32>(x: &[u32], out: &mut [u32], n: u32) {
    let buf = shared::<[u32; BLOCK]>();
    let t = thread_idx().x;
    let i = block_idx().x * BLOCK + t;
    buf[t] = if i < n { x[i] } else { 0 };
    sync_threads();
    let mut offset = 1u32;
    while offset < BLOCK {
        let mut add = 0u32;
        if t >= offset {
            add = buf[t - offset];
        }
        sync_threads();
        buf[t] += add;
        sync_threads();
        offset *= 2;
    }
    if i < n {
        out[i] = buf[t];
    }
}"#;

const WARP_VOTES: &str = r#"fn warp_votes(
    flags: &[u32],
    counts: &mut [u32],
    all_any: &mut [u32],
    sums: &mut [u32],
    n: u32,
) {
    let i = block_idx().x * block_dim().x + thread_idx().x;
    let flag = if i < n { flags[i] } else { 0 };
    let ballot = ballot_sync(0xffff_ffff, flag != 0);
    let all = all_sync(0xffff_ffff, flag != 0);
    let any = any_sync(0xffff_ffff, flag != 0);
    let total: u32 = warp_sum_u32(flag);
    let warp = i / 32;
    if lane_id() == 0 && warp * 32 < n {
        counts[warp] = ballot.count_ones();
        all_any[warp] = (all as u32) * 2 + any as u32;
        sums[warp] = total;
    }
}"#;

const ROW_MEAN_SQUARE: &str = r#"fn row_mean_square<T: Float>(x: &[T], out: &mut [f32], cols: u32) {
    let row = block_idx().x;
    let mut acc = 0.0f32;
    for j in (thread_idx().x..cols).step_by(32) {
        acc += square(x[row * cols + j] as f32);
    }
    acc = warp_sum(acc);
    if thread_idx().x == 0 {
        out[row] = acc / cols as f32;
    }
}"#;

const SQUARE: &str = r#"fn square(v: f32) -> f32 {
    v * v
}"#;

const BITONIC_SORT: &str = r#"fn bitonic_sort<const N: u32>(keys: &mut [u32], n: u32) {
    let buf = shared::<[u32; N]>();
    let t = thread_idx().x;
    let base = block_idx().x * N;
    buf[t] = if base + t < n {
        keys[base + t]
    } else {
        u32::MAX
    };
    sync_threads();
    let mut size = 2u32;
    while size <= N {
        let mut stride = size / 2;
        while stride > 0 {
            let partner = t ^ stride;
            if partner > t {
                let ascending = (t & size) == 0;
                let a = buf[t];
                let b = buf[partner];
                if (a > b) == ascending {
                    buf[t] = b;
                    buf[partner] = a;
                }
            }
            sync_threads();
            stride /= 2;
        }
        size *= 2;
    }
    if base + t < n {
        keys[base + t] = buf[t];
    }
}"#;

const STREAM_COPY: &str = r#"fn stream_copy<T: Float>(x: &[T], out: &mut [T], n: u32) {
    let lanes = 16 / size_of::<T>();
    let vectors = n / lanes;
    let threads = grid_dim().x * block_dim().x;
    let first = block_idx().x * block_dim().x * 4 + thread_idx().x;
    for base in (first..vectors).step_by(threads * 4) {
        let i1 = base + block_dim().x;
        let i2 = i1 + block_dim().x;
        let i3 = i2 + block_dim().x;
        if i3 < vectors {
            let v0 = x.vload(base * lanes);
            let v1 = x.vload(i1 * lanes);
            let v2 = x.vload(i2 * lanes);
            let v3 = x.vload(i3 * lanes);
            out.vstore(base * lanes, v0);
            out.vstore(i1 * lanes, v1);
            out.vstore(i2 * lanes, v2);
            out.vstore(i3 * lanes, v3);
        } else {
            for i in (base..vectors).step_by(block_dim().x) {
                out.vstore(i * lanes, x.vload(i * lanes));
            }
        }
    }
}"#;

const STREAM_SUM: &str = r#"fn stream_sum(x: &[f32], total: &mut [f32], n: u32) {
    let vectors = n / 4;
    let threads = grid_dim().x * block_dim().x;
    let first = block_idx().x * block_dim().x * 4 + thread_idx().x;
    let mut acc0 = 0.0f32;
    let mut acc1 = 0.0f32;
    for base in (first..vectors).step_by(threads * 4) {
        let i1 = base + block_dim().x;
        let i2 = i1 + block_dim().x;
        let i3 = i2 + block_dim().x;
        if i3 < vectors {
            let v0 = x.vload(base * 4);
            let v1 = x.vload(i1 * 4);
            let v2 = x.vload(i2 * 4);
            let v3 = x.vload(i3 * 4);
            acc0 += (v0[0] + v0[1]) + (v0[2] + v0[3]) + (v1[0] + v1[1]) + (v1[2] + v1[3]);
            acc1 += (v2[0] + v2[1]) + (v2[2] + v2[3]) + (v3[0] + v3[1]) + (v3[2] + v3[3]);
        } else {
            for i in (base..vectors).step_by(block_dim().x) {
                let v = x.vload(i * 4);
                acc0 += (v[0] + v[1]) + (v[2] + v[3]);
            }
        }
    }
    let mut acc = acc0 + acc1;
    for k in 0..5u32 {
        acc += shfl_xor_sync(0xffff_ffff, acc, 16u32 >> k);
    }
    if lane_id() == 0 {
        atomic_add(&mut total[0], acc);
    }
}"#;

const WARP_SUM: &str = r#"fn warp_sum<T: Float>(v: T) -> T {
    let mut acc = v;
    let mut offset = 16u32;
    while offset > 0 {
        acc = acc + shfl_xor_sync(0xffff_ffff, acc, offset);
        offset = offset / 2;
    }
    acc
}"#;

const WARP_MAX: &str = r#"fn warp_max<T: Float>(v: T) -> T {
    let mut acc = v;
    let mut offset = 16u32;
    while offset > 0 {
        acc = acc.max(shfl_xor_sync(0xffff_ffff, acc, offset));
        offset = offset / 2;
    }
    acc
}"#;

const WARP_SUM_U32: &str = r#"fn warp_sum_u32(v: u32) -> u32 {
    let mut acc = v;
    for k in 0..5u32 {
        acc += shfl_xor_sync(0xffff_ffff, acc, 1u32 << k);
    }
    acc
}"#;

/// Reads a buffer of some float type as f64.
type Decode = fn(&[u8]) -> Vec<f64>;

fn typed(src: &str, t: Dtype, devices: &[&str]) -> Program {
    program_with(src, devices, Bindings::default().with_type("T", t))
}

fn with_const(src: &str, name: &str, v: i128) -> Program {
    program_with(src, &[], Bindings::default().with_const(name, v))
}

/// Relative L2 error of `got` against an f64 reference.
fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(g, w)| (g - w) * (g - w)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den.max(1e-300)).sqrt()
}

fn vector_add_case<T: KernelScalar + Copy>(dtype: Dtype, conv: fn(f32) -> T, back: fn(T) -> f32) {
    let n = 1000u32;
    let a: Vec<T> = (0..n).map(|i| conv(i as f32 * 0.25)).collect();
    let b: Vec<T> = (0..n).map(|i| conv(100.0 - i as f32)).collect();
    let mut out = bytes(&vec![conv(f32::NAN); n as usize]);
    run_clean(
        &typed(VECTOR_ADD, dtype, &[]),
        LaunchConfig::for_elements(n, 256),
        &mut [
            EmuArg::Slice(&bytes(&a)),
            EmuArg::Slice(&bytes(&b)),
            EmuArg::SliceMut(&mut out),
            scalar(n),
        ],
    );
    let out: Vec<T> = values(&out);
    for i in 0..n as usize {
        assert_eq!(
            back(out[i]).to_bits(),
            back(conv(back(a[i]) + back(b[i]))).to_bits(),
            "{dtype} {i}"
        );
    }
}

#[test]
fn elementwise_kernels() {
    vector_add_case(Dtype::F32, |v| v, |v| v);
    vector_add_case(Dtype::Bf16, bf16::from_f32, bf16::to_f32);
    vector_add_case(Dtype::F16, f16::from_f32, f16::to_f32);

    let n = 5000u32;
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    let y: Vec<f32> = (0..n).map(|i| 1.0 - i as f32).collect();
    let mut yb = bytes(&y);
    run_clean(
        &program(SAXPY),
        LaunchConfig::linear(3, 128),
        &mut [
            scalar(1.5f32),
            EmuArg::Slice(&bytes(&x)),
            EmuArg::SliceMut(&mut yb),
            scalar(n),
        ],
    );
    let want: Vec<f32> = x
        .iter()
        .zip(&y)
        .map(|(x, y)| 1.5f32.mul_add(*x, *y))
        .collect();
    assert_eq!(values::<f32>(&yb), want);

    let n = 300u32;
    let q = [0xdead_beefu32, 0x1234_5678, 0, u32::MAX];
    let keys: Vec<u32> = (0..4 * n).map(|i| i.wrapping_mul(2_654_435_761)).collect();
    let mut out = bytes(&vec![0u16; n as usize]);
    run_clean(
        &with_const(HAMMING_SCORES, "WORDS", 4),
        LaunchConfig::for_elements(n, 128),
        &mut [
            EmuArg::Slice(&bytes(&q)),
            EmuArg::Slice(&bytes(&keys)),
            EmuArg::SliceMut(&mut out),
            scalar(n),
        ],
    );
    let out: Vec<u16> = values(&out);
    for i in 0..n as usize {
        let dist: u32 = (0..4).map(|w| (q[w] ^ keys[i * 4 + w]).count_ones()).sum();
        assert_eq!(out[i], (128 - dist) as u16);
    }

    let mut xs: Vec<f32> = (0..200).map(|i| (i as f32 - 100.0) * 123.456).collect();
    xs[3] = f32::NAN;
    xs[4] = f32::INFINITY;
    xs[5] = 1e30;
    xs[6] = -0.0;
    let n = xs.len() as u32;
    let words: Vec<u64> = (0..n as u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let (mut o32, mut o16, mut ob, mut o64) = (
        bytes(&vec![0u32; n as usize]),
        bytes(&vec![f16::ZERO; n as usize]),
        bytes(&vec![bf16::ZERO; n as usize]),
        bytes(&vec![0i64; n as usize]),
    );
    run_clean(
        &program(BITS_AND_CASTS),
        LaunchConfig::for_elements(n, 64),
        &mut [
            EmuArg::Slice(&bytes(&xs)),
            EmuArg::Slice(&bytes(&words)),
            EmuArg::SliceMut(&mut o32),
            EmuArg::SliceMut(&mut o16),
            EmuArg::SliceMut(&mut ob),
            EmuArg::SliceMut(&mut o64),
            scalar(n),
        ],
    );
    let (o32, o16, ob, o64): (Vec<u32>, Vec<f16>, Vec<bf16>, Vec<i64>) =
        (values(&o32), values(&o16), values(&ob), values(&o64));
    for i in 0..n as usize {
        let v = xs[i];
        let bits = v.to_bits();
        let w = words[i];
        let small = (bits & 0xff) as u8;
        let medium = (bits >> 16) as u16;
        let mut acc =
            bits.leading_zeros() + bits.trailing_zeros() + bits.reverse_bits().count_ones();
        acc += w.count_ones() + w.leading_zeros() + small.count_ones() + medium.trailing_zeros();
        acc = acc.clamp(3, 1000).div_ceil(2);
        let h = f16::from_f32(v);
        assert_eq!(
            o32[i],
            acc.wrapping_mul(2_654_435_761) ^ medium as u32,
            "{i}"
        );
        assert_eq!(
            o16[i].to_bits(),
            if v.is_nan() { f16::NAN } else { h }.to_bits(),
            "{i}"
        );
        assert_eq!(
            ob[i].to_bits(),
            bf16::from_f32(h.to_f32() * 2.0).to_bits(),
            "{i}"
        );
        let signed = ((v * 1000.0) as i64).wrapping_sub(i64::MAX / 4);
        assert_eq!(
            o64[i],
            signed.wrapping_abs().wrapping_add((w >> 60) as i64),
            "{i}"
        );
    }

    let (rows, k) = (100u32, 64u32);
    let a: Vec<f32> = (0..rows * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
    let b: Vec<f32> = (0..k).map(|i| i as f32 * 0.5).collect();
    let mut out = bytes(&vec![0f32; rows as usize]);
    run_clean(
        &with_const(ROW_DOT_REGISTERS, "K", k as i128),
        LaunchConfig::for_elements(rows, 32),
        &mut [
            EmuArg::Slice(&bytes(&a)),
            EmuArg::Slice(&bytes(&b)),
            EmuArg::SliceMut(&mut out),
            scalar(rows),
        ],
    );
    let out: Vec<f32> = values(&out);
    for r in 0..rows as usize {
        let mut partial = [0f32; 4];
        for j in 0..k as usize {
            partial[j % 4] += a[r * k as usize + j] * b[j];
        }
        assert_eq!(out[r], partial.iter().sum::<f32>());
    }

    let (cols, rows, thr) = (10u32, 50u32, 0.5f32);
    let x: Vec<f32> = (0..cols * rows)
        .map(|i| ((i * 31) % 17) as f32 / 17.0)
        .collect();
    let mut out = bytes(&vec![0u32; rows as usize]);
    run_clean(
        &program(FIRST_ABOVE),
        LaunchConfig::for_elements(rows, 32),
        &mut [
            EmuArg::Slice(&bytes(&x)),
            EmuArg::SliceMut(&mut out),
            scalar(cols),
            scalar(rows),
            scalar(thr),
        ],
    );
    let want: Vec<u32> = (0..rows as usize)
        .map(|r| {
            x[r * 10..r * 10 + 10]
                .iter()
                .position(|v| *v > thr)
                .map_or(u32::MAX, |p| p as u32)
        })
        .collect();
    assert_eq!(values::<u32>(&out), want);
}

#[test]
fn vector_and_stream_kernels() {
    for (dtype, lanes) in [(Dtype::F32, 4u32), (Dtype::Bf16, 8)] {
        let n = 4096 + 8 * lanes;
        let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        let (xin, want): (Vec<u8>, Vec<u8>) = match dtype {
            Dtype::F32 => (bytes(&x), bytes(&x)),
            _ => {
                let h: Vec<bf16> = x.iter().map(|v| bf16::from_f32(*v)).collect();
                (bytes(&h), bytes(&h))
            }
        };
        let mut out = vec![0u8; xin.len()];
        run_clean(
            &typed(STREAM_COPY, dtype, &[]),
            LaunchConfig::linear(3, 64),
            &mut [EmuArg::Slice(&xin), EmuArg::SliceMut(&mut out), scalar(n)],
        );
        assert_eq!(out, want, "{dtype}");
        let mut out = vec![0u8; xin.len()];
        let scale = match dtype {
            Dtype::F32 => scalar(2.0f32),
            _ => scalar(bf16::from_f32(2.0)),
        };
        run_clean(
            &typed(VEC_SCALE, dtype, &[]),
            LaunchConfig::for_elements(n.div_ceil(lanes), 128),
            &mut [
                EmuArg::Slice(&xin),
                EmuArg::SliceMut(&mut out),
                scale,
                scalar(n),
            ],
        );
        assert!(out.iter().any(|b| *b != 0));
    }
    let n = 1u32 << 14;
    let x: Vec<f32> = (0..n).map(|i| (i % 100) as f32 * 0.01).collect();
    let mut total = bytes(&[0f32]);
    run_clean(
        &program(STREAM_SUM),
        LaunchConfig::linear(4, 128),
        &mut [
            EmuArg::Slice(&bytes(&x)),
            EmuArg::SliceMut(&mut total),
            scalar(n),
        ],
    );
    let want: f64 = x.iter().map(|v| *v as f64).sum();
    assert!(rel_err(&[values::<f32>(&total)[0] as f64], &[want]) < 1e-5);
}

#[test]
fn shared_memory_kernels() {
    let (rows, cols) = (70u32, 45u32);
    let input: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
    let mut out = bytes(&vec![0f32; (rows * cols) as usize]);
    let cfg = LaunchConfig {
        grid: (cols.div_ceil(32), rows.div_ceil(32), 1),
        block: (32, 32, 1),
        dyn_shared_bytes: 0,
    };
    run_clean(
        &with_const(TRANSPOSE, "TILE", 32),
        cfg,
        &mut [
            EmuArg::Slice(&bytes(&input)),
            EmuArg::SliceMut(&mut out),
            scalar(rows),
            scalar(cols),
        ],
    );
    let out: Vec<f32> = values(&out);
    for r in 0..rows as usize {
        for c in 0..cols as usize {
            assert_eq!(out[c * rows as usize + r], input[r * cols as usize + c]);
        }
    }

    let n = 10_000u32;
    let vals: Vec<u32> = (0..n).map(|i| i.wrapping_mul(2_654_435_761) >> 7).collect();
    let mut bins = bytes(&[0u32; 256]);
    run_clean(
        &with_const(HISTOGRAM, "BINS", 256),
        LaunchConfig::linear(8, 256),
        &mut [
            EmuArg::Slice(&bytes(&vals)),
            EmuArg::SliceMut(&mut bins),
            scalar(n),
        ],
    );
    let mut want = vec![0u32; 256];
    for v in &vals {
        want[(v % 256) as usize] += 1;
    }
    assert_eq!(values::<u32>(&bins), want);

    let n = 1000u32;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut out = bytes(&vec![0f32; n as usize]);
    run_clean(
        &program(REVERSE_CHUNKS),
        LaunchConfig::for_elements(n, 250).with_dyn_shared(250 * 4),
        &mut [
            EmuArg::Slice(&bytes(&x)),
            EmuArg::SliceMut(&mut out),
            scalar(n),
        ],
    );
    assert_eq!(values::<f32>(&out)[0], 249.0);

    let n = 4096u32;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut out = bytes(&vec![0f32; n as usize]);
    run_clean(
        &with_const(ASYNC_STAGE, "TILE", 1024),
        LaunchConfig::linear(4, 128),
        &mut [
            EmuArg::Slice(&bytes(&x)),
            EmuArg::SliceMut(&mut out),
            scalar(0.5f32),
            scalar(n),
        ],
    );
    assert_eq!(
        values::<f32>(&out),
        x.iter().map(|v| v * 0.5).collect::<Vec<_>>()
    );

    let n = 3000u32;
    let keys: Vec<u32> = (0..n)
        .map(|i| i.wrapping_mul(2_654_435_761) % 100_000)
        .collect();
    let mut kb = bytes(&keys);
    run_clean(
        &with_const(BITONIC_SORT, "N", 1024),
        LaunchConfig::linear(n.div_ceil(1024), 1024),
        &mut [EmuArg::SliceMut(&mut kb), scalar(n)],
    );
    let got: Vec<u32> = values(&kb);
    for (c, chunk) in keys.chunks(1024).enumerate() {
        let mut want = chunk.to_vec();
        want.sort_unstable();
        assert_eq!(&got[c * 1024..c * 1024 + chunk.len()], &want[..]);
    }
}

#[test]
fn reduction_kernels() {
    let n = 20_000u32;
    let x: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 * 0.01).collect();
    let want: f64 = x.iter().map(|v| *v as f64).sum();
    let mut out = bytes(&[0f32]);
    run_clean(
        &program(WARP_REDUCE_SUM),
        LaunchConfig::for_elements(n, 256),
        &mut [
            EmuArg::Slice(&bytes(&x)),
            EmuArg::SliceMut(&mut out),
            scalar(n),
        ],
    );
    assert!(rel_err(&[values::<f32>(&out)[0] as f64], &[want]) < 1e-5);

    let blocks = n.div_ceil(512);
    let mut partial = bytes(&vec![0f32; blocks as usize]);
    run_clean(
        &with_const(BLOCK_REDUCE_SUM, "BLOCK", 256),
        LaunchConfig::linear(blocks, 256),
        &mut [
            EmuArg::Slice(&bytes(&x)),
            EmuArg::SliceMut(&mut partial),
            scalar(n),
        ],
    );
    let got: f64 = values::<f32>(&partial).iter().map(|v| *v as f64).sum();
    assert!(rel_err(&[got], &[want]) < 1e-5);

    let n = 1000u32;
    let xs: Vec<u32> = (0..n).map(|i| i % 7).collect();
    let mut out = bytes(&vec![0u32; n as usize]);
    run_clean(
        &with_const(BLOCK_SCAN, "BLOCK", 256),
        LaunchConfig::for_elements(n, 256),
        &mut [
            EmuArg::Slice(&bytes(&xs)),
            EmuArg::SliceMut(&mut out),
            scalar(n),
        ],
    );
    let out: Vec<u32> = values(&out);
    for (c, chunk) in xs.chunks(256).enumerate() {
        let mut acc = 0;
        for (j, v) in chunk.iter().enumerate() {
            acc += v;
            assert_eq!(out[c * 256 + j], acc);
        }
    }

    let n = 200u32;
    let flags: Vec<u32> = (0..n).map(|i| (i % 3 == 0 || i < 32) as u32).collect();
    let warps = n.div_ceil(32) as usize;
    let (mut counts, mut all_any, mut sums) = (
        bytes(&vec![0u32; warps]),
        bytes(&vec![0u32; warps]),
        bytes(&vec![0u32; warps]),
    );
    let p = program_with(WARP_VOTES, &[WARP_SUM_U32], Bindings::default());
    run_clean(
        &p,
        LaunchConfig::linear(2, 128),
        &mut [
            EmuArg::Slice(&bytes(&flags)),
            EmuArg::SliceMut(&mut counts),
            EmuArg::SliceMut(&mut all_any),
            EmuArg::SliceMut(&mut sums),
            scalar(n),
        ],
    );
    let (counts, all_any, sums): (Vec<u32>, Vec<u32>, Vec<u32>) =
        (values(&counts), values(&all_any), values(&sums));
    for w in 0..warps {
        let lanes: Vec<u32> = (w * 32..w * 32 + 32)
            .map(|i| if i < n as usize { flags[i] } else { 0 })
            .collect();
        let c = lanes.iter().sum::<u32>();
        assert_eq!((counts[w], sums[w]), (c, c), "warp {w}");
        assert_eq!(
            all_any[w],
            2 * (c == 32) as u32 + (c > 0) as u32,
            "warp {w}"
        );
    }
}

#[test]
fn softmax_and_mean_square_in_every_dtype() {
    let (rows, cols) = (12u32, 100u32);
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 13) % 29) as f32 * 0.3 - 4.0)
        .collect();
    for dtype in [Dtype::F32, Dtype::Bf16, Dtype::F16] {
        let (xin, tol, decode): (Vec<u8>, f64, Decode) = match dtype {
            Dtype::F32 => (bytes(&x), 1e-6, |b| {
                values::<f32>(b).iter().map(|v| *v as f64).collect()
            }),
            Dtype::Bf16 => (
                bytes(&x.iter().map(|v| bf16::from_f32(*v)).collect::<Vec<_>>()),
                1e-2,
                |b| values::<bf16>(b).iter().map(|v| v.to_f64()).collect(),
            ),
            _ => (
                bytes(&x.iter().map(|v| f16::from_f32(*v)).collect::<Vec<_>>()),
                2e-3,
                |b| values::<f16>(b).iter().map(|v| v.to_f64()).collect(),
            ),
        };
        let xin_f64 = decode(&xin);
        let mut out = vec![0u8; xin.len()];
        run_clean(
            &typed(ROW_SOFTMAX, dtype, &[WARP_MAX, WARP_SUM]),
            LaunchConfig::linear(rows.div_ceil(4), 128),
            &mut [
                EmuArg::Slice(&xin),
                EmuArg::SliceMut(&mut out),
                scalar(rows),
                scalar(cols),
            ],
        );
        let mut want = Vec::new();
        for r in xin_f64.chunks(cols as usize) {
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = r.iter().map(|v| (v - m).exp()).sum();
            want.extend(r.iter().map(|v| (v - m).exp() / s));
        }
        let err = rel_err(&decode(&out), &want);
        assert!(err < tol, "softmax {dtype}: {err}");

        if dtype != Dtype::F16 {
            let mut out = bytes(&vec![0f32; rows as usize]);
            run_clean(
                &typed(ROW_MEAN_SQUARE, dtype, &[SQUARE, WARP_SUM]),
                LaunchConfig::linear(rows, 32),
                &mut [
                    EmuArg::Slice(&xin),
                    EmuArg::SliceMut(&mut out),
                    scalar(cols),
                ],
            );
            let want: Vec<f64> = xin_f64
                .chunks(cols as usize)
                .map(|r| r.iter().map(|v| v * v).sum::<f64>() / cols as f64)
                .collect();
            let got: Vec<f64> = values::<f32>(&out).iter().map(|v| *v as f64).collect();
            assert!(rel_err(&got, &want) < 1e-6, "mean square {dtype}");
        }
    }
}
