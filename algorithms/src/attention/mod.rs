//! Dense attention on tensor cores, written with the tile layer: flash attention forward
//! (prefill) and flash-decoding (one query token per sequence, optionally over an index list
//! of selected keys, which the sparse pipelines reuse), with float64 references.

pub mod checks;
pub mod decode;
pub mod hopper;
pub mod prefill;
pub mod reference;
