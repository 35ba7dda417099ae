//! The tensor-core surface in the front end and the printer: what is accepted, the errors
//! (beyond the compile-fail cases of `tests/ui`), and the prelude each kernel gets.

use kiln_codegen::defs::FnDef;
use kiln_codegen::front::check_source;
use kiln_codegen::ir::FnKind;
use kiln_codegen::{cuda, spec, Arch, Bindings, Dtype};

/// The front end's error for `body` inside a kernel with the usual parameters.
fn error_of(body: &str) -> String {
    let src = format!(
        "fn k<T: Float>(a: &[bf16], h: &[f16], t: &[T], o: &mut [f32], u: &mut [u32]) {{
    let sa = shared::<[[bf16; 16]; 16]>();
    let sh = shared::<[[f16; 16]; 16]>();
    let lane = lane_id();
    {body}
}}"
    );
    match check_source(&src, FnKind::Kernel) {
        Ok(_) => panic!("accepted:\n{src}"),
        Err(d) => {
            assert!(d.hint.is_some(), "no hint for: {}", d.message);
            d.text()
        }
    }
}

#[test]
fn misuses_are_errors_with_hints() {
    let cases: &[(&str, &str)] = &[
        (
            "let fa = ldmatrix_x4::<bf16>(&sa[lane % 16][0]); let fb = ldmatrix_x2::<f16>(&sh[lane % 16][0]); let c = mma(fa, fb, frag_c_zero());",
            "A holds `bf16` but B holds `f16`",
        ),
        (
            "let fa = ldmatrix_x4::<f16>(&sa[lane % 16][0]);",
            "reads a tile of `bf16`",
        ),
        (
            "let acc = frag_c_zero(); atomic_add(&mut acc[0], 1.0);",
            "cannot address a fragment register",
        ),
        (
            "let acc = frag_c_zero(); acc[0] = 1.0;",
            "not mutable",
        ),
        ("let z = frag_a_zero();", "needs the element type"),
        ("let z = frag_c_zero::<bf16>();", "accumulators are f32"),
        ("let z: FragA<f32> = frag_a_zero::<f32>();", "f16 or bf16"),
        ("let z: FragB = frag_b_zero::<bf16>();", "needs its element type"),
        ("let v = unpack_lo(u[0]);", "needs the half type"),
        ("let r = pack2::<bf16>(1.0f32);", "takes 2 argument(s)"),
        (
            "let mut regs = [0u32; 4]; let x = ldmatrix_x1::<bf16>(&regs[0]);",
            "cannot read",
        ),
        (
            "let fa = ldmatrix_x4::<bf16>(&sa[lane]);",
            "expected one element",
        ),
        (
            "let acc = frag_c_zero(); let acc2 = mma(acc, acc, acc);",
            "first operand of `mma` is a `FragA<T>`, found `FragC`",
        ),
        (
            "let fb = frag_b_zero::<bf16>(); let x = fb[2];",
            "index 2 is out of range: a `FragB<bf16>` holds 2",
        ),
        (
            "let acc = frag_c_zero(); let s = acc + acc;",
            "needs scalar operands",
        ),
    ];
    for (body, want) in cases {
        let text = error_of(body);
        assert!(
            text.contains(want),
            "for `{body}`:\n{text}\nexpected: {want}"
        );
    }
}

fn def(src: &str) -> &'static FnDef {
    let f = check_source(src, FnKind::Kernel).unwrap_or_else(|d| panic!("{}", d.text()));
    Box::leak(Box::new(FnDef {
        name: Box::leak(f.name.clone().into_boxed_str()),
        module: "tensor_front",
        file: "tensor_front.rs",
        ir_json: Box::leak(FnDef::encode(&f).into_boxed_str()),
        deps: &[],
        examples: &[],
    }))
}

const SOFTMAX_TO_A: &str = "fn p_as_a<T: Float>(s: &[T], out: &mut [f32]) {
    let tile = shared::<[[T; 16]; 16]>();
    let lane = lane_id();
    for i in (lane..256).step_by(32) {
        tile[i / 16][i % 16] = s[i];
    }
    sync_threads();
    let s0 = mma(ldmatrix_x4::<T>(&tile[lane % 16][lane / 16 * 8]), ldmatrix_x2::<T>(&tile[lane % 8][0]), frag_c_zero());
    let mut p = frag_a_zero::<T>();
    p[0] = pack2::<T>(s0[0].exp(), s0[1].exp());
    p[1] = pack2::<T>(s0[2].exp(), s0[3].exp());
    let acc = mma(p, ldmatrix_x2_trans::<T>(&tile[lane % 16][8]), frag_c_zero());
    out[lane] = acc[0] + unpack_hi::<T>(p[1]) as f32;
}";

#[test]
fn the_prelude_has_exactly_the_helpers_used() {
    let d = def(SOFTMAX_TO_A);
    for (dtype, name) in [(Dtype::Bf16, "bf16"), (Dtype::F16, "f16")] {
        let p = spec::specialize(d, &Bindings::default().with_type("T", dtype), Arch::SM80)
            .expect("specialises");
        let src = cuda::print(&p).source;
        for want in [
            "struct kiln_frag_a { unsigned int x[4]; };",
            "kiln_ldmatrix_x4(const void* p)",
            "kiln_ldmatrix_x2(const void* p)",
            "kiln_ldmatrix_x2_trans(const void* p)",
            &format!("mma.sync.aligned.m16n8k16.row.col.f32.{name}.{name}.f32"),
            &format!("cvt.rn.{name}x2.f32 %0, %1, %2;\" : \"=r\"(r) : \"f\"(hi), \"f\"(lo)"),
            &format!("p.x[0u] = kiln_pack2_{name}(expf(s0.x[0u]), expf(s0.x[1u]));"),
            &format!("kiln_{name}{{(unsigned short)(p.x[1u] >> 16)}}"),
            "kiln_frag_a p = kiln_frag_a{};",
        ] {
            assert!(src.contains(want), "{name}: no `{want}` in\n{src}");
        }
        for absent in [
            "kiln_ldmatrix_x1",
            "kiln_ldmatrix_x4_trans",
            "#include",
            "kiln_cp_async",
        ] {
            assert!(!src.contains(absent), "{name}: unexpected `{absent}`");
        }
    }
    let e = spec::specialize(
        d,
        &Bindings::default().with_type("T", Dtype::F64),
        Arch::SM80,
    )
    .expect_err("f64 fragments");
    assert!(e.to_string().contains("`f64`"), "{e}");
}

#[test]
fn fragments_differ_per_lane_so_barriers_under_them_are_rejected() {
    let src = "fn k(a: &[bf16], o: &mut [f32]) {
    let sa = shared::<[[bf16; 16]; 16]>();
    let acc = mma(ldmatrix_x4::<bf16>(&sa[lane_id() % 16][0]), frag_b_zero::<bf16>(), frag_c_zero());
    if acc[0] > 0.0 {
        sync_threads();
    }
}";
    let e = check_source(src, FnKind::Kernel).expect_err("barrier under a fragment value");
    assert!(
        e.message.contains("differs between threads"),
        "{}",
        e.text()
    );
}

#[test]
fn fragments_cross_device_function_boundaries_but_not_kernel_ones() {
    let call = "fn k(o: &mut [f32]) {
    let acc = frag_c_zero();
    let s: f32 = row_sum(acc);
    o[0] = s;
}";
    let f = check_source(call, FnKind::Kernel).expect("a fragment is a device-function argument");
    assert!(format!("{:?}", f.body).contains("Call"));
    let device = "fn row_sum(acc: FragC) -> f32 { acc[0] + acc[1] }";
    check_source(device, FnKind::Device).expect("a device function takes a fragment");
    let returns = "fn step<T: Float>(a: FragA<T>, b: FragB<T>, c: FragC) -> FragC { mma(a, b, c) }";
    check_source(returns, FnKind::Device).expect("a device function returns a fragment");
    let kernel = "fn k(a: FragC, o: &mut [f32]) { o[0] = a[0]; }";
    let e = check_source(kernel, FnKind::Kernel).expect_err("kernels take no fragments");
    assert!(
        e.message.contains("kernels cannot take fragments"),
        "{}",
        e.text()
    );
}
