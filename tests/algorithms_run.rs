//! Every algorithm kernel against its float64 reference (the checks beside each kernel in
//! `kiln::algorithms`, listed in `kiln::algorithms::checks`) on the test device:
//! the GPU when present (required under `KILN_REQUIRE_GPU=1`), else the CPU emulator.

mod common;

use kiln::algorithms::verify::VerifyError;
use kiln::algorithms::{attention, chelsea, clo, gemm, hata};
use kiln::runtime::Device;

fn check(name: &str, f: fn(&Device) -> Result<(), VerifyError>) {
    let Some(dev) = common::device() else { return };
    let started = std::time::Instant::now();
    match f(&dev) {
        Ok(()) => println!("{name}: ok on {} in {:.1?}", dev.name(), started.elapsed()),
        Err(VerifyError::Runtime(e)) if common::unavailable(&e) && !dev.is_gpu() => {
            println!("SKIPPED {name}: {e}")
        }
        Err(e) => panic!("{name} on {}: {e}", dev.name()),
    }
}

#[test]
fn flash_attn_fwd_matches_reference() {
    check(
        "flash_attn_fwd",
        attention::checks::prefill_matches_reference,
    );
}

#[test]
fn flash_decode_matches_reference() {
    check("flash_decode", attention::checks::decode_matches_reference);
}

#[test]
fn gemm_matches_reference() {
    check("gemm", gemm::checks::gemm_matches_reference);
}

#[test]
fn hata_kernels_match_reference() {
    check("hata kernels", hata::checks::hata_kernels_match_reference);
}

#[test]
fn hata_append_and_mask_match_reference() {
    check(
        "hata append and mask",
        hata::checks::append_and_mask_match_reference,
    );
}

#[test]
fn hata_decoder_matches_reference() {
    check("hata decoder", hata::checks::hata_decoder_matches_reference);
}

#[test]
fn topk_matches_reference() {
    check("topk", hata::topk::checks::topk_matches_reference);
}

#[test]
fn hash_train_matches_reference() {
    check(
        "hash_train",
        hata::train::checks::hash_train_matches_reference,
    );
}

#[test]
fn chelsea_matches_reference() {
    check("chelsea", chelsea::checks::chelsea_matches_reference);
}

#[test]
fn clo_matches_reference() {
    check("clo", clo::checks::clo_matches_reference);
}
