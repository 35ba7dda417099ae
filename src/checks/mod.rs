//! Checks of the algorithm kernels (`kiln_algorithms`) against their float64 references, run
//! on whichever device is present: the emulator on small shapes, a GPU on larger ones. Used
//! by the tests (`tests/algorithms_run.rs`) and `kiln demo`.

pub mod attention;
pub mod chelsea;
pub mod gemm;
pub mod hata;
pub mod hata_train;
pub mod topk;

use crate::corpus::verify::Check;

/// Every algorithm check, by name.
pub const CHECKS: &[(&str, Check)] = &[
    ("flash_attn_fwd", attention::prefill_matches_reference),
    (
        "flash_decode + decode_merge",
        attention::decode_matches_reference,
    ),
    ("gemm", gemm::gemm_matches_reference),
    (
        "chelsea_round + chelsea_copy",
        chelsea::chelsea_matches_reference,
    ),
    (
        "hash_encode + hash_encode_group + hash_score + scatter_rows",
        hata::hata_kernels_match_reference,
    ),
    ("hata decoder", hata::hata_decoder_matches_reference),
    (
        "topk_hist + topk_filter + topk_refine + topk_write",
        topk::topk_matches_reference,
    ),
    (
        "hash_train_forward + hash_train_gram + hash_train_update + hash_train_finish",
        hata_train::hash_train_matches_reference,
    ),
];
