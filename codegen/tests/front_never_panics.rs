//! Property tests: whatever function body the front end is given — generated from a
//! grammar of the language, mutated from the corpus, or token soup — it returns CUDA or a
//! diagnostic, never a panic (an internal error counts as a failure here).

use kiln_codegen::defs::FnDef;
use kiln_codegen::front::check_source;
use kiln_codegen::ir::{FnKind, Generic};
use kiln_codegen::{cuda, spec, Arch, Bindings, Dtype};
use proptest::prelude::*;

const HEADER: &str =
    "fn k<const N: u32, T: Float>(x: &[f32], y: &mut [f32], h: &[T], o: &mut [T], n: u32, s: f32) ";

/// A kernel descriptor for `f` that lives for the rest of the test process.
fn leak_def(f: &kiln_codegen::ir::Function) -> &'static FnDef {
    Box::leak(Box::new(FnDef {
        name: "k",
        module: "t",
        file: "t.rs",
        ir_json: Box::leak(FnDef::encode(f).into_boxed_str()),
        deps: &[],
        examples: &[],
    }))
}

/// Checks `source`; on success also specialises and prints it. Returns whether it was accepted.
fn check_and_print(source: &str) -> bool {
    match check_source(source, FnKind::Kernel) {
        Err(d) => {
            assert!(
                !d.message.contains("internal error"),
                "front end panicked on:\n{source}"
            );
            assert!(!d.message.is_empty());
            false
        }
        Ok(f) => {
            let mut b = Bindings::default();
            for g in &f.generics {
                b = match g {
                    Generic::Const { name, .. } => b.with_const(name, 4),
                    Generic::Type { name } => b.with_type(name, Dtype::Bf16),
                };
            }
            let def = leak_def(&f);
            // specialisation may reject (e.g. unknown device function); it must not panic
            if let Ok(p) = spec::specialize(def, &b, Arch::SM90) {
                let m = cuda::print(&p);
                assert!(m.source.contains("__global__"));
            }
            true
        }
    }
}

fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("x[0]".to_string()),
        Just("y[1]".to_string()),
        Just("h[2]".to_string()),
        Just("n".to_string()),
        Just("s".to_string()),
        Just("N".to_string()),
        Just("thread_idx().x".to_string()),
        Just("block_idx().y".to_string()),
        Just("lane_id()".to_string()),
        Just("1.5f32".to_string()),
        Just("2.0".to_string()),
        Just("3".to_string()),
        Just("7u32".to_string()),
        Just("true".to_string()),
        Just("f32::INFINITY".to_string()),
        Just("u32::MAX".to_string()),
        Just("x.len()".to_string()),
        Just("size_of::<T>()".to_string()),
        Just("frag_c_zero()[0]".to_string()),
        Just("pack2::<T>(s, 0.5)".to_string()),
        Just("unpack_hi::<T>(7u32)".to_string()),
        "[a-z]{1,3}".prop_map(|s| s),
    ]
}

fn expr() -> impl Strategy<Value = String> {
    leaf().prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop::sample::select(vec![
                    "+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>", "<", "==", "&&", "||", ">="
                ]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            (
                inner.clone(),
                prop::sample::select(vec![
                    "u32", "f32", "i64", "f16", "bf16", "T", "bool", "u8", "usize"
                ])
            )
                .prop_map(|(a, t)| format!("({a} as {t})")),
            (
                inner.clone(),
                prop::sample::select(vec![
                    "exp",
                    "sqrt",
                    "count_ones",
                    "abs",
                    "max",
                    "foo",
                    "to_bits",
                    "leading_zeros",
                    "vload",
                    "lanes"
                ])
            )
                .prop_map(|(a, m)| if m == "max" || m == "vload" {
                    format!("{a}.{m}({a})")
                } else {
                    format!("{a}.{m}()")
                }),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("x[{a} as u32 + {b}]")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(c, a, b)| format!("if {c} {{ {a} }} else {{ {b} }}")),
            inner.clone().prop_map(|a| format!("-{a}")),
            inner.clone().prop_map(|a| format!("!{a}")),
            (inner.clone(), inner.clone())
                .prop_map(|(a, b)| format!("shfl_xor_sync(0xffff_ffff, {a}, {b})")),
            inner
                .clone()
                .prop_map(|a| format!("atomic_add(&mut y[0], {a})")),
            inner.prop_map(|a| format!("foo({a})")),
        ]
    })
}

fn stmt() -> impl Strategy<Value = String> {
    let simple = prop_oneof![
        expr().prop_map(|e| format!("let a = {e};")),
        expr().prop_map(|e| format!("let mut b: f32 = {e};")),
        expr().prop_map(|e| format!("y[0] = {e};")),
        expr().prop_map(|e| format!("o[1] += {e};")),
        expr().prop_map(|e| format!("{e};")),
        Just("sync_threads();".to_string()),
        Just("return;".to_string()),
        Just("break;".to_string()),
        Just("let t = shared::<[f32; N * 2]>();".to_string()),
        Just("let d = dyn_shared::<u32>();".to_string()),
        Just("let mut r = [0.0f32; N];".to_string()),
        Just("cp_async_wait::<0>();".to_string()),
        Just("let c = |q: f32| q;".to_string()),
        Just("let ht = shared::<[[T; 16]; 16]>(); let fa = ldmatrix_x4::<T>(&ht[lane_id() % 16][lane_id() / 16 * 8]); let mut acc = mma(fa, ldmatrix_x2_trans::<T>(&ht[lane_id() % 16][0]), frag_c_zero()); acc[1] += 1.0; y[0] = acc[1];".to_string()),
        Just("let mut p = frag_a_zero::<T>(); p[3] = pack2::<T>(s, s); o[0] = unpack_lo::<T>(p[3]);".to_string()),
    ];
    simple.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            (expr(), prop::collection::vec(inner.clone(), 0..3))
                .prop_map(|(c, b)| format!("if {c} {{ {} }}", b.join(" "))),
            (expr(), prop::collection::vec(inner.clone(), 0..3))
                .prop_map(|(e, b)| format!("for i in 0..{e} {{ {} }}", b.join(" "))),
            (expr(), prop::collection::vec(inner.clone(), 0..3))
                .prop_map(|(c, b)| format!("while {c} {{ {} }}", b.join(" "))),
            prop::collection::vec(inner.clone(), 0..3)
                .prop_map(|b| format!("loop {{ {} break; }}", b.join(" "))),
            prop::collection::vec(inner, 0..3).prop_map(|b| format!("{{ {} }}", b.join(" "))),
        ]
    })
}

const CORPUS: &[&str] = &[
    include_str!("../../src/corpus/basics.rs"),
    include_str!("../../src/corpus/memory.rs"),
    include_str!("../../src/corpus/reductions.rs"),
    include_str!("../../src/corpus/sorting.rs"),
    include_str!("../../src/corpus/tensor.rs"),
];

/// Every function of the corpus, as source text with whitespace-separated tokens.
fn corpus_functions() -> Vec<Vec<String>> {
    corpus_functions_with_kind()
        .into_iter()
        .map(|(tokens, _)| tokens)
        .collect()
}

/// Every function of the corpus with whether it is a `#[device]` function.
fn corpus_functions_with_kind() -> Vec<(Vec<String>, FnKind)> {
    let mut out = Vec::new();
    for file in CORPUS {
        let parsed: syn::File = syn::parse_str(file).expect("the corpus parses");
        for item in parsed.items {
            if let syn::Item::Fn(mut f) = item {
                let device = f.attrs.iter().any(|a| a.path().is_ident("device"));
                f.attrs.clear();
                let text = quote::ToTokens::to_token_stream(&f).to_string();
                let kind = if device {
                    FnKind::Device
                } else {
                    FnKind::Kernel
                };
                out.push((text.split_whitespace().map(str::to_string).collect(), kind));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn generated_bodies_never_panic(body in prop::collection::vec(stmt(), 0..6)) {
        check_and_print(&format!("{HEADER}{{ {} }}", body.join("\n")));
    }

    #[test]
    fn mutated_corpus_never_panics(which in 0usize..64, edits in prop::collection::vec((0usize..10_000, 0u8..3, 0usize..10_000), 1..4)) {
        let fns = corpus_functions();
        let mut tokens = fns[which % fns.len()].clone();
        for (at, kind, other) in edits {
            if tokens.is_empty() { break; }
            let i = at % tokens.len();
            let j = other % tokens.len();
            match kind {
                0 => { tokens.remove(i); }
                1 => { let t = tokens[j].clone(); tokens.insert(i, t); }
                _ => tokens.swap(i, j),
            }
        }
        check_and_print(&tokens.join(" "));
    }

    #[test]
    fn token_soup_never_panics(words in prop::collection::vec(prop::sample::select(vec![
        "let", "mut", "x", "y", "=", ";", "+", "(", ")", "[", "]", "{", "}", "if", "else", "for", "in", "..", "while", "loop",
        "break", "return", "0", "1.0", "u32", "as", "f16", "thread_idx", "()", ".", "x", "sync_threads", "shared", "::", "<", ">", ",", "&", "mut", "T",
    ]), 0..40)) {
        let _ = check_source(&format!("{HEADER}{{ {} }}", words.join(" ")), FnKind::Kernel);
    }
}

#[test]
fn every_corpus_function_is_accepted_unmodified() {
    for (tokens, kind) in corpus_functions_with_kind() {
        let src = tokens.join(" ");
        let r = check_source(&src, kind);
        assert!(r.is_ok(), "{src}\n{:?}", r.err().map(|d| d.text()));
    }
}

#[test]
fn the_grammar_reaches_the_printer() {
    // The generator must produce accepted kernels too, or the property above would only
    // exercise error paths.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = prop::collection::vec(stmt(), 1..4);
    let mut accepted = 0;
    for _ in 0..300 {
        let body = strategy.new_tree(&mut runner).expect("generates").current();
        if check_and_print(&format!("{HEADER}{{ {} }}", body.join("\n"))) {
            accepted += 1;
        }
    }
    println!("{accepted} of 300 generated kernels accepted");
    assert!(
        accepted >= 30,
        "only {accepted} of 300 generated kernels were accepted"
    );
}

#[test]
fn narrow_integer_arithmetic_wraps_in_its_own_type() {
    let src = "fn k(a: &[u8], out: &mut [u8], flag: &mut [u32]) { out[0] = (a[0] + a[1]) >> 1; flag[0] = (a[0] + a[1] < 100) as u32; for i in 250u8..=255u8 { out[1] = i; } }";
    let f = check_source(src, FnKind::Kernel).expect("accepted");
    let def = leak_def(&f);
    let cuda =
        cuda::print(&spec::specialize(def, &Bindings::default(), Arch::SM90).unwrap()).source;
    assert!(
        cuda.contains("((unsigned char)(a[0u] + a[1u])) >> 1u"),
        "{cuda}"
    );
    assert!(
        cuda.contains("(unsigned char)(a[0u] + a[1u]) < (unsigned char)100"),
        "{cuda}"
    );
    assert!(
        cuda.contains("kiln_last_i = i == (unsigned char)255"),
        "{cuda}"
    );
}

#[test]
fn loop_carried_thread_dependence_is_seen_before_the_barrier() {
    let rejected = [
        "fn k(out: &mut [u32]) { let mut k = 0u32; while k < 10 { sync_threads(); k += thread_idx().x; } out[0] = k; }",
        "fn k(out: &mut [u32]) { let mut flag = true; for j in 0..4u32 { if flag { sync_threads(); } flag = thread_idx().x == j; } out[0] = 1; }",
    ];
    for src in rejected {
        let err = check_source(src, FnKind::Kernel).expect_err(src);
        assert!(
            err.message.contains("sync_threads"),
            "{src}: {}",
            err.message
        );
    }
    // a uniform loop-carried value stays accepted
    let ok = "fn k(out: &mut [u32], n: u32) { let mut k = 0u32; while k < n { sync_threads(); k += 1; } out[0] = k; }";
    assert!(check_source(ok, FnKind::Kernel).is_ok());
}

#[test]
fn printed_names_never_capture_user_variables() {
    let src = "fn k(x: &[f32], out: &mut [f32], n: u32) { let i_end = 10.0f32; let kiln_last_i = 2.0f32; let mut m = n; for i in 0..m { out[i] = i_end + kiln_last_i + x[i]; m = m - 1; } for i in 0..=3u32 { out[i] = -(-x[i]); } }";
    let f = check_source(src, FnKind::Kernel).expect("accepted");
    let def = leak_def(&f);
    let cuda =
        cuda::print(&spec::specialize(def, &Bindings::default(), Arch::SM90).unwrap()).source;
    assert!(
        cuda.contains("out[i] = i_end + kiln_last_i_ + x[i];"),
        "{cuda}"
    );
    assert!(
        cuda.contains("-(-x[i_1])") || cuda.contains("-(-x[i])"),
        "{cuda}"
    );
    assert!(!cuda.contains("--"), "{cuda}");
}

#[test]
fn shared_memory_of_a_generic_type_is_sized_when_specialised() {
    // 2 × 13824 elements: 55 KB at 4 bytes, 27 KB at 2 bytes
    let src = "fn k<T: Float>(o: &mut [T]) { let a = shared::<[[T; 72]; 96]>(); let b = shared::<[[T; 72]; 96]>(); a[0][0] = b[0][0]; sync_threads(); o[0] = a[0][0]; }";
    let f = check_source(src, FnKind::Kernel).expect("the size depends on T");
    let def = leak_def(&f);
    assert!(spec::specialize(
        def,
        &Bindings::default().with_type("T", Dtype::Bf16),
        Arch::SM90
    )
    .is_ok());
    let err = spec::specialize(
        def,
        &Bindings::default().with_type("T", Dtype::F32),
        Arch::SM90,
    )
    .unwrap_err();
    assert!(err.message.contains("shared"), "{err}");
}
