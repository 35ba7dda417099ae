//! Every corpus kernel against its plain-Rust reference (`kiln::corpus::verify`) on the
//! test device: the GPU when present (required under `KILN_REQUIRE_GPU=1`), else the CPU
//! emulator.

mod common;

use kiln::algorithms::verify::VerifyError;
use kiln::corpus::verify;
use kiln::runtime::Device;

fn check(name: &str, f: fn(&Device) -> Result<(), VerifyError>) {
    let Some(dev) = common::device() else { return };
    match f(&dev) {
        Ok(()) => println!("{name}: ok on {}", dev.name()),
        Err(VerifyError::Runtime(e)) if common::unavailable(&e) && !dev.is_gpu() => {
            println!("SKIPPED {name}: {e}")
        }
        Err(e) => panic!("{name} on {}: {e}", dev.name()),
    }
}

#[test]
fn vector_add_all_dtypes() {
    check("vector_add_all_dtypes", verify::vector_add_all_dtypes);
}

#[test]
fn saxpy_grid_stride() {
    check("saxpy_grid_stride", verify::saxpy_grid_stride);
}

#[test]
fn hamming_scores_match() {
    check("hamming_scores_match", verify::hamming_scores_match);
}

#[test]
fn vec_scale_with_tail() {
    check("vec_scale_with_tail", verify::vec_scale_with_tail);
}

#[test]
fn bits_and_casts_match_rust() {
    check(
        "bits_and_casts_match_rust",
        verify::bits_and_casts_match_rust,
    );
}

#[test]
fn first_above_loops() {
    check("first_above_loops", verify::first_above_loops);
}

#[test]
fn row_dot_registers_close() {
    check("row_dot_registers_close", verify::row_dot_registers_close);
}

#[test]
fn transpose_tiled() {
    check("transpose_tiled", verify::transpose_tiled);
}

#[test]
fn histogram_counts() {
    check("histogram_counts", verify::histogram_counts);
}

#[test]
fn reverse_chunks_dynamic_shared() {
    check(
        "reverse_chunks_dynamic_shared",
        verify::reverse_chunks_dynamic_shared,
    );
}

#[test]
fn async_stage_copies() {
    check("async_stage_copies", verify::async_stage_copies);
}

#[test]
fn reductions_close_to_f64() {
    check("reductions_close_to_f64", verify::reductions_close_to_f64);
}

#[test]
fn row_softmax_all_dtypes() {
    check("row_softmax_all_dtypes", verify::row_softmax_all_dtypes);
}

#[test]
fn block_scan_inclusive() {
    check("block_scan_inclusive", verify::block_scan_inclusive);
}

#[test]
fn warp_votes_count() {
    check("warp_votes_count", verify::warp_votes_count);
}

#[test]
fn row_mean_square_cross_crate_device_fn() {
    check(
        "row_mean_square_cross_crate_device_fn",
        verify::row_mean_square_cross_crate_device_fn,
    );
}

#[test]
fn bitonic_sort_chunks() {
    check("bitonic_sort_chunks", verify::bitonic_sort_chunks);
}

#[test]
fn stream_copy_and_sum() {
    check("stream_copy_and_sum", verify::stream_copy_and_sum);
}

#[test]
fn mma_tile_exact() {
    check("mma_tile_exact", verify::mma_tile_exact);
}

#[test]
fn fragment_layout_per_lane() {
    check("fragment_layout_per_lane", verify::fragment_layout_per_lane);
}

#[test]
fn mma_throughput_exact() {
    check("mma_throughput_exact", verify::mma_throughput_exact);
}

#[test]
fn gemm_tiled_close() {
    check("gemm_tiled_close", verify::gemm_tiled_close);
}

#[test]
fn every_corpus_kernel_has_a_check() {
    let checked: Vec<&str> = verify::CHECKS
        .iter()
        .chain(kiln::algorithms::checks::CHECKS)
        .flat_map(|(label, _)| label.split(" + "))
        .collect();
    for def in kiln::codegen::registered_kernels() {
        assert!(
            checked.contains(&def.name),
            "no reference check for `{}`",
            def.name
        );
    }
}
