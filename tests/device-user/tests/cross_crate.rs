//! The device functions of `kiln-algorithms` are instantiated into this crate's kernels.

use kiln::codegen::{Arch, Dtype};

#[test]
fn imported_device_function_is_instantiated_per_type() {
    let cuda = kiln_device_user::row_sums_32::spec()
        .t(Dtype::Bf16)
        .cuda(Arch::SM90)
        .expect("specialises");
    assert!(
        cuda.source
            .contains("__device__ __forceinline__ float warp_sum_f32(float v)"),
        "{}",
        cuda.source
    );
    assert!(cuda.source.contains("warp_sum_f32(v)"));
}

#[test]
fn device_function_by_full_path_compiles_with_nvrtc() {
    let cuda = kiln_device_user::row_max_32::spec()
        .cuda(Arch::SM90)
        .expect("specialises");
    assert!(cuda.source.contains("warp_max_f32("));
    let Some(_) = kiln::runtime::require::nvrtc_or_skip() else {
        return;
    };
    kiln::runtime::cache::compile_cached(&cuda, Arch::SM90, &Default::default())
        .expect("NVRTC compiles it");
}
