//! The language corpus: small kernels that together exercise the whole Kiln language
//! (indices, control flow, every element type, casts, intrinsics, warp collectives,
//! atomics, static/dynamic shared memory, register arrays, vector and async copies, device
//! functions local and from another crate, tensor-core fragments). Their CUDA is snapshot-tested and
//! NVRTC-checked in CI; `kiln demo` compiles (and, with a GPU, runs) them.

pub mod bandwidth;
pub mod basics;
pub mod memory;
pub mod reductions;
pub mod sorting;
pub mod tensor;
pub mod verify;
