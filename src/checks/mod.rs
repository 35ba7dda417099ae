//! Checks of the algorithm kernels (`kiln_algorithms`) against their float64 references, run
//! on whichever device is present: the emulator on small shapes, a GPU on larger ones. Used
//! by the tests (`tests/algorithms_run.rs`) and `kiln demo`.

pub mod attention;
pub mod gemm;

use crate::corpus::verify::Check;

/// Every algorithm check, by name.
pub const CHECKS: &[(&str, Check)] = &[
    ("flash_attn_fwd", attention::prefill_matches_reference),
    (
        "flash_decode + decode_merge",
        attention::decode_matches_reference,
    ),
    ("gemm", gemm::gemm_matches_reference),
];
