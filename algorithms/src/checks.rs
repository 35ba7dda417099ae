//! The registry of every algorithm check: each kernel against its float64 reference, run on
//! whichever device is present (the emulator on small shapes, a GPU on larger ones). The
//! checks live beside their kernels (`<module>/checks.rs`); the tests
//! (`tests/algorithms_run.rs`) and `kiln demo` run them from this list.

use crate::verify::Check;
use crate::{adacluster, attention, bigmac, chelsea, clo, gemm, hata, pat};

/// Every algorithm check, by name.
pub const CHECKS: &[(&str, Check)] = &[
    (
        "flash_attn_fwd",
        attention::checks::prefill_matches_reference,
    ),
    (
        "flash_decode + decode_merge",
        attention::checks::decode_matches_reference,
    ),
    ("gemm", gemm::checks::gemm_matches_reference),
    ("gemm_wgmma", gemm::checks::wgmma_matches_reference),
    (
        "flash_attn_wgmma",
        attention::checks::wgmma_prefill_matches_reference,
    ),
    (
        "chelsea_round + chelsea_copy",
        chelsea::checks::chelsea_matches_reference,
    ),
    (
        "hash_encode + hash_encode_group + hash_score + scatter_rows + key_sum_partial + key_mean",
        hata::checks::hata_kernels_match_reference,
    ),
    (
        "hata_append",
        hata::checks::append_matches_reference,
    ),
    ("hata decoder", hata::checks::hata_decoder_matches_reference),
    (
        "clo_hit + clo_plan + clo_gather + clo_append + clo_advance",
        clo::checks::clo_matches_reference,
    ),
    (
        "topk_hist + topk_filter + topk_refine + topk_write",
        hata::topk::checks::topk_matches_reference,
    ),
    (
        "hash_train_forward + hash_train_gram + hash_train_update + hash_train_finish",
        hata::train::checks::hash_train_matches_reference,
    ),
    (
        "hash_rank_forward + hash_rank_update + hash_rank_finish",
        hata::train::rank_checks::hash_rank_matches_reference,
    ),
    (
        "kmeans_assign + cluster_count + cluster_offsets + cluster_scatter + cluster_update + cluster_select + permute_rows + cluster_attn",
        adacluster::checks::adacluster_matches_reference,
    ),
    (
        "moe_gate + slot_maps + grouped_gemm + moe_combine",
        bigmac::checks::moe_matches_reference,
    ),
    (
        "grouped_gemm_wgmma",
        bigmac::checks::grouped_wgmma_matches_reference,
    ),
    (
        "expert-parallel MoE (CommGroup all-to-all + the MoE kernels)",
        bigmac::checks::parallel_matches_reference,
    ),
    (
        "add_rms_norm + rope + swiglu + qkv_split + kv_append + kv_move + clear_counts + transpose_heads + take_cols + gather_rows + tree_sum + embed + argmax_rows",
        pat::checks::decoder_kernels_match_reference,
    ),
    (
        "pat decoder: TP 1/2/4 over CommGroup vs float64, fixed-tree TP equality",
        pat::checks::decoder_matches_reference,
    ),
];
