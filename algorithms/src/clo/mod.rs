//! CLO: CPU-light KV-cache offloading for decoding (placeholder docs, expanded below).

pub mod kernels;
pub mod model;
