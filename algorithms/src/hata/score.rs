//! HATA's scoring: how well each cached key matches the query heads of its GQA group, from
//! their hash codes alone (xor + popcount), optionally weighted by the key's norm.

use kiln::LaunchConfig;
use kiln_dsl::kernel;

/// Consecutive tokens one thread of [`hash_score`] scores (for one KV head).
pub const TOKENS_PER_THREAD: u32 = 4;
/// Threads per block of [`hash_score`].
pub const THREADS: u32 = 256;

/// The launch shape of [`hash_score`] over `len` cached tokens of `batch` sequences with
/// `kv_heads` KV heads (`kv_heads ≤ 256`).
pub fn launch_config(len: u32, kv_heads: u32, batch: u32) -> LaunchConfig {
    let tokens_per_block = THREADS / kv_heads.clamp(1, THREADS) * TOKENS_PER_THREAD;
    LaunchConfig {
        grid: (len.div_ceil(tokens_per_block).max(1), batch, 1),
        block: (THREADS, 1, 1),
        dyn_shared_bytes: 0,
    }
}

/// Scores every cached key of every (batch, KV head): with `ham` the Hamming distance summed
/// over the group's `G = heads / kv_heads` query codes, `score = G − 2·ham / RBIT`, times the
/// key's norm when `use_norms` — larger is better. The first `sink` and last `recent` tokens
/// get `+∞` so that top-k always keeps them.
///
/// `q_codes` `[B, H, RBIT/32]`, `k_codes` `[B, cap, H_kv, RBIT/32]`, `norms` `[B, cap, H_kv]`;
/// writes `scores[(b·H_kv + h)·len + s]` for the `len` cached tokens. Thread `t` serves KV
/// head `t % H_kv` for the whole call, so it keeps its group's query codes in registers
/// (`G·RBIT/32` words, loaded once) and scores [`TOKENS_PER_THREAD`] consecutive tokens of
/// that head: for a fixed token step a warp reads whole cache rows (every head's codes of a
/// token are adjacent), and the loads of the unrolled steps are in flight together. The last
/// `256 mod H_kv` threads of a block idle. Grid `(⌈len / (4·⌊256 / H_kv⌋)⌉, B)`, 256
/// threads; `H_kv ≤ 256`.
#[kernel(threads = 256, example(RBIT = 128, G = 4), example(RBIT = 256, G = 1))]
pub fn hash_score<const RBIT: u32, const G: u32>(
    q_codes: &[u32],
    k_codes: &[u32],
    norms: &[f32],
    scores: &mut [f32],
    len: u32,
    cap: u32,
    kv_heads: u32,
    sink: u32,
    recent: u32,
    use_norms: bool,
) {
    let t = thread_idx().x;
    let b = block_idx().y;
    let groups = 256 / kv_heads;
    if t >= groups * kv_heads {
        return;
    }
    let h = t % kv_heads;
    let words = RBIT / 32;
    let mut qr = [0u32; G * (RBIT / 32)];
    let q0 = (b * kv_heads + h) * G * words;
    for c in 0..G * RBIT / 128 {
        let v = q_codes.vload(q0 + c * 4);
        for e in 0..4u32 {
            qr[c * 4 + e] = v[e];
        }
    }
    // 4 = TOKENS_PER_THREAD (kernels see only their own names)
    let s0 = (block_idx().x * groups + t / kv_heads) * 4;
    let out = (b * kv_heads + h) * len;
    for j in 0..4u32 {
        let s = s0 + j;
        if s < len {
            let row = (b * cap + s) * kv_heads + h;
            let mut ham = 0u32;
            for c in 0..RBIT / 128 {
                let kc = k_codes.vload(row * words + c * 4);
                for e in 0..4u32 {
                    for gg in 0..G {
                        ham += (qr[gg * words + c * 4 + e] ^ kc[e]).count_ones();
                    }
                }
            }
            let mut score = G as f32 - 2.0 * ham as f32 / RBIT as f32;
            if use_norms {
                score *= norms[row];
            }
            if s < sink || s + recent >= len {
                score = f32::INFINITY;
            }
            scores[out + s] = score;
        }
    }
}
