//! HATA: hash-aware top-k attention for decoding. Keys and the query heads of a step are
//! hashed to short binary codes by a learned projection; every cached key is scored by the
//! Hamming distance of its code to its group's query codes; the top-k keys (plus sink and
//! recent tokens) are attended to exactly with flash-decoding over their indices.

pub mod append;
pub mod checks;
pub mod crossover;
pub mod decoder;
pub mod demo;
pub mod encode;
pub mod fidelity;
pub mod peers;
pub mod reference;
pub mod score;
pub mod speed;
#[cfg(test)]
mod study;
pub mod topk;
pub mod train;
