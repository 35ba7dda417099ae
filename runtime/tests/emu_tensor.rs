//! Tensor-core fragments on the emulator, against the PTX ISA written out independently
//! here: `ldmatrix` (x1, x2, x4, plain and `.trans`) against the layout formula, `mma`
//! m16n8k16 of small-integer bf16/f16 matrices against a Rust matmul (exact),
//! `pack2`/`unpack_lo`/`unpack_hi` against the `half` crate's round-to-nearest-even, and the
//! checks: the whole warp must execute `ldmatrix`/`mma`, and `ldmatrix` rows must be in
//! bounds and 16-byte aligned (the addresses of lanes the variant does not use are ignored).

mod emu_common;

use emu_common::*;
use half::{bf16, f16};
use kiln_codegen::spec::{Bindings, Dtype};
use kiln_runtime::emu::{EmuArg, FindingKind};
use kiln_runtime::launch::LaunchConfig;

const WARP: LaunchConfig = LaunchConfig {
    grid: (1, 1, 1),
    block: (32, 1, 1),
    dyn_shared_bytes: 0,
};

/// Every lane addresses the row with its own index; out: per lane 14 registers
/// (x1, x1.trans, x2 ×2, x2.trans ×2, x4 ×4, x4.trans ×4).
const LDMATRIX: &str = "fn ld(rows: &[bf16], out: &mut [u32]) {
    let tile = shared::<[[bf16; 8]; 32]>();
    let lane = lane_id();
    for e in 0..8u32 {
        tile[lane][e] = rows[lane * 8 + e];
    }
    sync_threads();
    let x1 = ldmatrix_x1::<bf16>(&tile[lane][0]);
    let x1t = ldmatrix_x1_trans::<bf16>(&tile[lane][0]);
    let x2 = ldmatrix_x2::<bf16>(&tile[lane][0]);
    let x2t: FragB<bf16> = ldmatrix_x2_trans(&tile[lane][0]);
    let x4 = ldmatrix_x4(&tile[lane][0]);
    let x4t = ldmatrix_x4_trans::<bf16>(&tile[lane][0]);
    let o = lane * 14;
    out[o] = x1;
    out[o + 1] = x1t;
    for r in 0..2u32 {
        out[o + 2 + r] = x2[r];
        out[o + 4 + r] = x2t[r];
    }
    for r in 0..4u32 {
        out[o + 6 + r] = x4[r];
        out[o + 10 + r] = x4t[r];
    }
}";

/// What lane `l` receives in register `i` of `ldmatrix` when lane `j` addressed the row of
/// 16-bit values `bits(j, e)` (PTX ISA: matrix `i` has its rows at lanes `8i..8i+7`; a lane
/// gets row `l/4`, elements `2(l%4)`, `+1`; `.trans` gets column `l/4`, rows `2(l%4)`, `+1`).
fn ldmatrix_reference(l: usize, i: usize, trans: bool, bits: &dyn Fn(usize, usize) -> u16) -> u32 {
    let (lo, hi) = if trans {
        (
            bits(8 * i + 2 * (l % 4), l / 4),
            bits(8 * i + 2 * (l % 4) + 1, l / 4),
        )
    } else {
        (
            bits(8 * i + l / 4, 2 * (l % 4)),
            bits(8 * i + l / 4, 2 * (l % 4) + 1),
        )
    };
    lo as u32 | (hi as u32) << 16
}

#[test]
fn ldmatrix_variants_follow_the_ptx_layout() {
    let p = program(LDMATRIX);
    let bits = |row: usize, e: usize| (0x3c00 + row * 8 + e) as u16;
    let rows: Vec<bf16> = (0..256)
        .map(|i| bf16::from_bits(bits(i / 8, i % 8)))
        .collect();
    let input = bytes(&rows);
    let mut out = bytes(&[0u32; 32 * 14]);
    run_clean(
        &p,
        WARP,
        &mut [EmuArg::Slice(&input), EmuArg::SliceMut(&mut out)],
    );
    let got: Vec<u32> = values(&out);
    for l in 0..32 {
        let o = l * 14;
        let want = |i: usize, trans: bool| ldmatrix_reference(l, i, trans, &bits);
        assert_eq!(got[o], want(0, false), "x1 lane {l}");
        assert_eq!(got[o + 1], want(0, true), "x1.trans lane {l}");
        for r in 0..2 {
            assert_eq!(got[o + 2 + r], want(r, false), "x2 lane {l} reg {r}");
            assert_eq!(got[o + 4 + r], want(r, true), "x2.trans lane {l} reg {r}");
        }
        for r in 0..4 {
            assert_eq!(got[o + 6 + r], want(r, false), "x4 lane {l} reg {r}");
            assert_eq!(got[o + 10 + r], want(r, true), "x4.trans lane {l} reg {r}");
        }
    }
}

/// `D = A·B + C`, then `D += A·B` again: A 16×16 and B 16×8 row-major, C from `c`.
const MMA: &str = "fn mm<T: Float>(a: &[T], b: &[T], c: &[f32], d: &mut [f32]) {
    let sa = shared::<[[T; 16]; 16]>();
    let sb = shared::<[[T; 8]; 16]>();
    let lane = lane_id();
    for i in (lane..256).step_by(32) {
        sa[i / 16][i % 16] = a[i];
    }
    for i in (lane..128).step_by(32) {
        sb[i / 8][i % 8] = b[i];
    }
    sync_threads();
    let fa = ldmatrix_x4::<T>(&sa[lane % 16][lane / 16 * 8]);
    let fb = ldmatrix_x2_trans::<T>(&sb[lane % 16][0]);
    let g = lane / 4;
    let t = lane % 4 * 2;
    let mut acc: FragC = frag_c_zero();
    acc[0] = c[g * 8 + t];
    acc[1] = c[g * 8 + t + 1];
    acc[2] = c[(g + 8) * 8 + t];
    acc[3] = c[(g + 8) * 8 + t + 1];
    acc = mma(fa, fb, acc);
    acc = mma(fa, fb, acc);
    d[g * 8 + t] = acc[0];
    d[g * 8 + t + 1] = acc[1];
    d[(g + 8) * 8 + t] = acc[2];
    d[(g + 8) * 8 + t + 1] = acc[3];
}";

fn mma_exact_as<T: kiln_runtime::KernelScalar>(dtype: Dtype, from: fn(f32) -> T) {
    let p = program_with(MMA, &[], Bindings::default().with_type("T", dtype));
    let a: Vec<f32> = (0..256).map(|i| ((i * 7 + 3) % 13) as f32 - 6.0).collect();
    let b: Vec<f32> = (0..128).map(|i| ((i * 5 + 1) % 11) as f32 - 5.0).collect();
    let c: Vec<f32> = (0..128).map(|i| i as f32 * 0.5 - 30.0).collect();
    let (ab, bb, cb) = (
        bytes(&a.iter().map(|v| from(*v)).collect::<Vec<T>>()),
        bytes(&b.iter().map(|v| from(*v)).collect::<Vec<T>>()),
        bytes(&c),
    );
    let mut d = bytes(&[f32::NAN; 128]);
    run_clean(
        &p,
        WARP,
        &mut [
            EmuArg::Slice(&ab),
            EmuArg::Slice(&bb),
            EmuArg::Slice(&cb),
            EmuArg::SliceMut(&mut d),
        ],
    );
    let got: Vec<f32> = values(&d);
    for i in 0..16 {
        for j in 0..8 {
            let dot: f32 = (0..16).map(|k| a[i * 16 + k] * b[k * 8 + j]).sum();
            let want = 2.0 * dot + c[i * 8 + j];
            assert_eq!(got[i * 8 + j], want, "{dtype} D[{i}][{j}]");
        }
    }
}

#[test]
fn mma_of_small_integers_matches_a_rust_matmul_exactly() {
    mma_exact_as(Dtype::Bf16, bf16::from_f32);
    mma_exact_as(Dtype::F16, f16::from_f32);
}

#[test]
fn mma_with_t_bound_to_f32_is_a_specialisation_error() {
    let f = kiln_codegen::front::check_source(MMA, kiln_codegen::ir::FnKind::Kernel)
        .expect("a generic T is accepted");
    let def: &'static kiln_codegen::FnDef = Box::leak(Box::new(kiln_codegen::FnDef {
        name: "mm",
        module: "emu_test",
        file: FILE,
        ir_json: Box::leak(kiln_codegen::FnDef::encode(&f).into_boxed_str()),
        deps: &[],
        examples: &[],
    }));
    let e = kiln_codegen::spec::specialize(
        def,
        &Bindings::default().with_type("T", Dtype::F32),
        kiln_codegen::Arch::SM90,
    )
    .expect_err("f32 fragments cannot be specialised");
    assert!(e.message.contains("f16 or bf16"), "{e}");
    assert!(e.message.contains("`f32`"), "{e}");
    assert!(e.hint.is_some(), "{e}");
}

/// Pairs of f32 packed into halves and unpacked again.
const PACK: &str =
    "fn pk<T: Float>(x: &[f32], packed: &mut [u32], lo: &mut [T], hi: &mut [T], n: u32) {
    let i = thread_idx().x;
    if i < n {
        let r = pack2::<T>(x[2 * i], x[2 * i + 1]);
        packed[i] = r;
        lo[i] = unpack_lo::<T>(r);
        hi[i] = unpack_hi::<T>(r);
    }
}";

/// Values around rounding ties, at the limits and beyond the range of f16 and bf16.
fn rounding_cases() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.5,
        1.0 + 2f32.powi(-8),
        1.0 + 3.0 * 2f32.powi(-8),
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        1.0 + 2f32.powi(-12),
        65504.0,
        65520.0,
        70000.0,
        -1e9,
        3.0e38,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-8,
        -6e-8,
        f32::MIN_POSITIVE,
        0.1,
        1.0 / 3.0,
    ];
    let mut s = 0x1234_5678u32;
    for _ in 0..42 {
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        v.push(f32::from_bits(s & 0xbfff_ffff) * 1e3);
    }
    v
}

fn pack_as<T: kiln_runtime::KernelScalar + PartialEq + std::fmt::Debug>(
    dtype: Dtype,
    round: fn(f32) -> T,
) {
    let p = program_with(PACK, &[], Bindings::default().with_type("T", dtype));
    let x = rounding_cases();
    let n = x.len() / 2;
    let xb = bytes(&x);
    let mut packed = bytes(&vec![0u32; n]);
    let zero = round(0.0);
    let (mut lo, mut hi) = (bytes(&vec![zero; n]), bytes(&vec![zero; n]));
    run_clean(
        &p,
        LaunchConfig::linear(1, 64),
        &mut [
            EmuArg::Slice(&xb),
            EmuArg::SliceMut(&mut packed),
            EmuArg::SliceMut(&mut lo),
            EmuArg::SliceMut(&mut hi),
            scalar(n as u32),
        ],
    );
    let (packed, lo, hi): (Vec<u32>, Vec<T>, Vec<T>) = (values(&packed), values(&lo), values(&hi));
    for i in 0..n {
        let (l, h) = (round(x[2 * i]), round(x[2 * i + 1]));
        let want = l.to_bits64() as u32 | (h.to_bits64() as u32) << 16;
        assert_eq!(
            packed[i],
            want,
            "{dtype} pack2({:e}, {:e}): {:#010x} vs {want:#010x}",
            x[2 * i],
            x[2 * i + 1],
            packed[i]
        );
        assert_eq!(lo[i], l, "{dtype} unpack_lo of pair {i}");
        assert_eq!(hi[i], h, "{dtype} unpack_hi of pair {i}");
    }
}

#[test]
fn pack_and_unpack_round_like_the_half_crate() {
    pack_as(Dtype::Bf16, bf16::from_f32);
    pack_as(Dtype::F16, f16::from_f32);
}

/// The mma kernel with a marked line, launched with `block` threads or under a condition.
fn mma_finding(src: &str, block: u32, marker: &str) -> String {
    let p = program(src);
    let a = bytes(&[bf16::ONE; 256]);
    let mut d = bytes(&[0f32; 128]);
    let r = run(
        &p,
        LaunchConfig::linear(1, block),
        &mut [EmuArg::Slice(&a), EmuArg::SliceMut(&mut d)],
    );
    let hits = of_kind(&r, FindingKind::IncompleteWarp);
    assert!(
        !hits.is_empty(),
        "expected an incomplete-warp finding, got {:?}",
        r.findings
    );
    let line = line_of(src, marker);
    assert!(
        hits.iter().any(|f| f.line == line),
        "expected one at line {line}: {hits:?}"
    );
    hits.iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

const MMA_HALF_WARP: &str = "fn hw(a: &[bf16], d: &mut [f32]) {
    let s = shared::<[[bf16; 16]; 16]>();
    let lane = lane_id();
    for i in (lane..256).step_by(block_dim().x) {
        s[i / 16][i % 16] = a[i];
    }
    sync_threads();
    let fa = ldmatrix_x4::<bf16>(&s[lane % 16][lane / 16 * 8]); // ldmatrix
    let fb = ldmatrix_x2::<bf16>(&s[lane % 16][0]);
    let mut acc = frag_c_zero();
    if lane < 16 {
        acc = mma(fa, fb, acc); // mma
    }
    d[lane] = acc[0];
}";

#[test]
fn a_partial_warp_is_reported() {
    // a block of 16 threads: the warp has only 16 lanes
    let text = mma_finding(MMA_HALF_WARP, 16, "// ldmatrix");
    println!("{text}");
    assert!(text.contains("does not exist"), "{text}");
    // a full warp, but only lanes 0-15 reach the mma
    let text = mma_finding(MMA_HALF_WARP, 32, "// mma");
    println!("{text}");
    assert!(text.contains("lane(s) 0-15 only"), "{text}");
    assert!(text.contains("16-31"), "{text}");
}

fn ldmatrix_with(address: &str) -> (String, kiln_runtime::emu::EmuReport) {
    let src = format!(
        "fn lm(a: &[bf16], out: &mut [u32]) {{
    let s = shared::<[[bf16; 16]; 16]>();
    let lane = lane_id();
    for i in (lane..256).step_by(32) {{
        s[i / 16][i % 16] = a[i];
    }}
    sync_threads();
    let f = {address}; // load
    out[lane] = f[0];
}}"
    );
    let p = program(&src);
    let a = bytes(&[bf16::ONE; 256]);
    let mut out = bytes(&[0u32; 32]);
    let r = run(
        &p,
        WARP,
        &mut [EmuArg::Slice(&a), EmuArg::SliceMut(&mut out)],
    );
    (src, r)
}

#[test]
fn ldmatrix_rows_must_be_aligned_and_in_bounds() {
    let (src, r) = ldmatrix_with("ldmatrix_x4::<bf16>(&s[lane % 16][1])");
    let hits = of_kind(&r, FindingKind::MisalignedAccess);
    assert_eq!(hits.len(), 1, "{:?}", r.findings);
    assert_eq!(hits[0].line, line_of(&src, "// load"));
    let (_, r) = ldmatrix_with("ldmatrix_x4::<bf16>(&s[lane % 16][12])");
    assert_eq!(
        of_kind(&r, FindingKind::SharedOutOfBounds).len(),
        1,
        "{:?}",
        r.findings
    );
    // x2 uses the addresses of lanes 0-15 only: what lanes 16-31 pass does not matter
    let (_, r) = ldmatrix_with("ldmatrix_x2::<bf16>(&s[lane][0])");
    assert!(r.is_clean(), "{:?}", r.findings);
    let (_, r) = ldmatrix_with("ldmatrix_x4::<bf16>(&s[lane][0])");
    assert_eq!(
        of_kind(&r, FindingKind::SharedOutOfBounds).len(),
        1,
        "{:?}",
        r.findings
    );
}

#[test]
fn ldmatrix_reads_of_unwritten_shared_memory_are_reported() {
    let src = "fn un(out: &mut [u32]) {
    let s = shared::<[[f16; 8]; 32]>();
    let f = ldmatrix_x1::<f16>(&s[lane_id()][0]); // load
    out[lane_id()] = f;
}";
    let p = program(src);
    let mut out = bytes(&[0u32; 32]);
    let r = run(&p, WARP, &mut [EmuArg::SliceMut(&mut out)]);
    let hits = of_kind(&r, FindingKind::UninitializedSharedRead);
    assert_eq!(hits.len(), 1, "{:?}", r.findings);
    assert_eq!(hits[0].line, line_of(src, "// load"));
}
