//! The tensor-core prelude through NVRTC: a kernel using every `ldmatrix` variant (static
//! and dynamic shared memory), `mma` and the packed conversions, for f16 and bf16, compiles
//! to a CUBIN for sm_80 and sm_90 — so ptxas, not only the C++ front end, accepts the
//! inline PTX. Skips without NVRTC unless `KILN_REQUIRE_NVRTC=1`.

mod emu_common;

use emu_common::program_with;
use kiln_codegen::spec::{Bindings, Dtype};
use kiln_runtime::require::nvrtc_or_skip;
use kiln_runtime::{compile_ptx, CompileOptions};

const EVERY_FRAGMENT_OP: &str = "fn every_op<T: Float>(a: &[T], out: &mut [f32], regs: &mut [u32]) {
    let tile = shared::<[[T; 16]; 16]>();
    let dyn_tile = dyn_shared::<T>();
    let lane = lane_id();
    for i in (lane..256).step_by(32) {
        tile[i / 16][i % 16] = a[i];
        dyn_tile[i] = a[i];
    }
    sync_threads();
    let x1 = ldmatrix_x1::<T>(&tile[lane % 8][0]);
    let x1t = ldmatrix_x1_trans::<T>(&tile[lane % 8][8]);
    let fb = ldmatrix_x2::<T>(&tile[lane % 16][0]);
    let fbt = ldmatrix_x2_trans::<T>(&dyn_tile[lane % 16 * 16]);
    let fa = ldmatrix_x4::<T>(&tile[lane % 16][lane / 16 * 8]);
    let fat = ldmatrix_x4_trans::<T>(&dyn_tile[lane * 8]);
    let mut acc = mma(fa, fb, frag_c_zero());
    acc = mma(fat, fbt, acc);
    let mut p = frag_a_zero::<T>();
    p[0] = pack2::<T>(acc[0], acc[1]);
    p[1] = pack2::<T>(acc[2], acc[3]);
    p[2] = x1;
    p[3] = x1t;
    let mut b2 = frag_b_zero::<T>();
    b2[0] = fb[1];
    acc = mma(p, b2, acc);
    regs[lane] = p[0] ^ b2[1];
    out[lane] = acc[0] + acc[1] + acc[2] + acc[3] + unpack_lo::<T>(p[0]) as f32 + unpack_hi::<T>(p[1]) as f32;
}";

#[test]
fn every_fragment_op_compiles_to_cubin_for_sm80_and_sm90() {
    let Some(_) = nvrtc_or_skip() else { return };
    for dtype in [Dtype::Bf16, Dtype::F16] {
        let p = program_with(
            EVERY_FRAGMENT_OP,
            &[],
            Bindings::default().with_type("T", dtype),
        );
        let module = kiln_codegen::cuda::print(&p);
        for want in [
            "ldmatrix.sync.aligned.m8n8.x1.shared.b16",
            "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16",
            "ldmatrix.sync.aligned.m8n8.x2.shared.b16",
            "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16",
            "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
            "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
            "mma.sync.aligned.m16n8k16.row.col.f32",
            "x2.f32",
        ] {
            assert!(module.source.contains(want), "{dtype}: no `{want}`");
        }
        for arch in ["sm_80", "sm_90"] {
            let opts = CompileOptions {
                cubin: true,
                ..CompileOptions::for_arch(arch)
            };
            let out = compile_ptx(&module.source, &module.entry, &opts)
                .unwrap_or_else(|e| panic!("{dtype} {arch}: {e}\n{}", module.source));
            assert!(
                out.ptx.contains("mma.sync.aligned.m16n8k16"),
                "{dtype} {arch}"
            );
            assert!(out.ptx.contains("ldmatrix.sync.aligned"), "{dtype} {arch}");
            let cubin = out.cubin.expect("a CUBIN was requested");
            assert_eq!(&cubin[..4], b"\x7fELF", "{dtype} {arch}");
            println!(
                "{dtype} {arch}: {} bytes of PTX, {} bytes of CUBIN in {:.1} ms",
                out.ptx.len(),
                cubin.len(),
                out.compile_ms
            );
        }
    }
}
