//! Every algorithm kernel against its float64 reference (the checks beside each kernel in
//! `kiln::algorithms`, listed in `kiln::algorithms::checks`) on the test device:
//! the GPU when present (required under `KILN_REQUIRE_GPU=1`), else the CPU emulator.

mod common;

use kiln::algorithms::verify::VerifyError;
use kiln::algorithms::{adacluster, attention, bigmac, chelsea, clo, gemm, hata, pat};
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
fn gemm_wgmma_matches_reference() {
    check("gemm_wgmma", gemm::checks::wgmma_matches_reference);
}

#[test]
fn flash_attn_wgmma_matches_reference() {
    check(
        "flash_attn_wgmma",
        attention::checks::wgmma_prefill_matches_reference,
    );
}

#[test]
fn hata_kernels_match_reference() {
    check("hata kernels", hata::checks::hata_kernels_match_reference);
}

#[test]
fn hata_append_matches_reference() {
    check("hata append", hata::checks::append_matches_reference);
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
fn hash_rank_matches_reference() {
    check(
        "hash_rank",
        hata::train::rank_checks::hash_rank_matches_reference,
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

/// `HataLayer::new` refuses a configuration it cannot serve with a `Config` error saying
/// why, before allocating anything: an empty batch, hash weights of the wrong size, and a
/// cache too large for the kernels' u32 indexing (B 16 × 256K tokens × 8 KV heads × D 128).
#[test]
fn hata_layer_refuses_bad_configurations() {
    use kiln::algorithms::hata::decoder::{Budget, HataConfig, HataError, HataLayer};
    let Some(dev) = common::device() else { return };
    let cfg = HataConfig {
        batch: 1,
        heads: 32,
        kv_heads: 8,
        dim: 128,
        rbit: 128,
        capacity: 4096,
        budget: Budget::Count(64),
        sink: 4,
        recent: 16,
        use_norms: true,
        center_keys: true,
        dense: false,
    };
    let weights = vec![0.5f32; 8 * 128 * 128];
    let refused = |cfg: HataConfig, weights: &[f32], says: &str| match HataLayer::<half::bf16>::new(
        &dev, cfg, weights,
    ) {
        Err(HataError::Config(m)) => assert!(m.contains(says), "{m}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("accepted {cfg:?}"),
    };
    refused(HataConfig { batch: 0, ..cfg }, &weights, "positive");
    refused(cfg, &weights[1..], "hash weights hold");
    refused(
        HataConfig {
            batch: 16,
            capacity: 256 * 1024,
            ..cfg
        },
        &weights,
        "2^32",
    );
}

#[test]
fn adacluster_matches_reference() {
    check(
        "adacluster",
        adacluster::checks::adacluster_matches_reference,
    );
}

#[test]
fn moe_matches_reference() {
    check("bigmac moe", bigmac::checks::moe_matches_reference);
}

/// On a GPU machine: NCCL over 1 GPU and every visible GPU up to 4 (KILN_REQUIRE_GPU=1 makes a
/// missing NCCL a failure, with the error saying how to install it).
#[test]
fn expert_parallel_moe_matches_reference() {
    check(
        "bigmac expert-parallel moe",
        bigmac::checks::parallel_matches_reference,
    );
}

#[test]
fn grouped_gemm_wgmma_matches_reference() {
    check(
        "grouped_gemm_wgmma",
        bigmac::checks::grouped_wgmma_matches_reference,
    );
}

#[test]
fn decoder_kernels_match_reference() {
    check(
        "pat decoder kernels",
        pat::checks::decoder_kernels_match_reference,
    );
}

#[test]
fn pat_decoder_matches_reference() {
    check(
        "pat decoder (TP 1/2/4 over CommGroup)",
        pat::checks::decoder_matches_reference,
    );
}

#[test]
fn pat_adaptive_matches_static() {
    check(
        "pat switch (adaptive TP1×DPn → TPn equals static, migrate / recompute / mixed)",
        pat::switch_check::adaptive_matches_static,
    );
}
