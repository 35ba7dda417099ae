//! The Hopper builtins' targets: a kernel using `wgmma`/`setmaxnreg` is printed and compiled
//! for `sm_90a`, and specialising it for any other architecture is refused with a message
//! naming the instruction and the target (no NVRTC needed).

use kiln::algorithms::gemm::hopper::gemm_wgmma;
use kiln::codegen::{Arch, Dtype};

fn spec() -> gemm_wgmma::Spec {
    gemm_wgmma::spec().t(Dtype::Bf16).stages(3).group(16)
}

#[test]
fn hopper_kernels_target_sm90a() {
    let cuda = spec().cuda(Arch::SM90).expect("sm_90 specialises");
    assert!(cuda.needs_sm90a);
    assert!(cuda.source.contains("target sm_90a"));
    assert!(cuda
        .source
        .contains("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16"));
    assert!(cuda.source.contains("cp.async.bulk.tensor.2d"));
    let opts = kiln::runtime::cache::module_options(&cuda, Arch::SM90, &Default::default());
    assert_eq!(opts.arch, "sm_90a");
}

#[test]
fn other_architectures_are_refused() {
    for (arch, words) in [
        (Arch::SM80, "needs sm_90 (Hopper)"),
        (Arch(100), "exists only on sm_90a"),
    ] {
        let e = spec()
            .cuda(arch)
            .expect_err("not a Hopper target")
            .to_string();
        assert!(e.contains(words) && e.contains(&arch.sm_name()), "{e}");
        assert!(e.contains("gemm_wgmma") || e.contains("hopper.rs"), "{e}");
    }
}

#[test]
fn other_kernels_keep_their_target() {
    let cuda = kiln::algorithms::gemm::gemm::spec()
        .t(Dtype::Bf16)
        .b_col(true)
        .bm(128)
        .bn(128)
        .cuda(Arch::SM90)
        .expect("specialises");
    assert!(!cuda.needs_sm90a);
    assert!(cuda.source.contains("target sm_90."));
}
