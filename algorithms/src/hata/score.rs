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
/// key's norm when `use_norms` — larger is better. The selection's hand is fixed here too,
/// from the cache length `n = len[0] + ahead` read from device memory (so that one captured
/// graph serves many steps; `ahead` 0 where the length already counts the step's token, as
/// in HATA's step, 1 where it moves at the end of the step, as in CLO's): the columns
/// `[n, cols)` past the cache get `−∞` (never selected while the budget is at most `n`), the
/// last `recent` tokens below `n` get `recent_score` (`+∞` to always keep them: HATA; `−∞`
/// to leave them out: CLO, whose recent ring is already on the GPU), and the first `sink`
/// tokens otherwise `+∞`.
///
/// `q_codes` `[B, H, RBIT/32]`, `k_codes` `[B, cap, H_kv, RBIT/32]`, `norms` `[B, cap, H_kv]`;
/// writes `scores[(b·H_kv + h)·cols + s]` for the `cols` columns. Block `x` takes tokens
/// `[x·P, (x + 1)·P)` with `P = 4·⌊256 / H_kv⌋`. Thread `t` serves KV head `t % H_kv`, so it
/// keeps its group's query codes in registers (`G·RBIT/32` words, loaded once) and scores
/// [`TOKENS_PER_THREAD`] consecutive tokens of that head: for a fixed token step a warp reads
/// whole cache rows (every head's codes of a token are adjacent), and the loads of the
/// unrolled steps are in flight together. The scores go through shared memory so that each
/// head's `P` scores are written as one contiguous run (written straight from the threads,
/// a warp's stores would touch four times the sectors). The last `256 mod H_kv` threads of a
/// block only help with the writing. Grid `(⌈cols / P⌉, B)`, 256 threads; `H_kv ≤ 256`.
#[kernel(threads = 256, example(RBIT = 128, G = 4), example(RBIT = 256, G = 1))]
pub fn hash_score<const RBIT: u32, const G: u32>(
    q_codes: &[u32],
    k_codes: &[u32],
    norms: &[f32],
    scores: &mut [f32],
    len: &[u32],
    ahead: u32,
    cols: u32,
    cap: u32,
    kv_heads: u32,
    sink: u32,
    recent: u32,
    recent_score: f32,
    use_norms: bool,
) {
    // row h of the block's scores at stage[h·(P + 1) ..] (padded against bank conflicts)
    let stage = shared::<[f32; 1280]>();
    let t = thread_idx().x;
    let b = block_idx().y;
    let groups = 256 / kv_heads;
    // 4 = TOKENS_PER_THREAD (kernels see only their own names)
    let per_block = groups * 4;
    let first = block_idx().x * per_block;
    let h = t % kv_heads;
    let words = RBIT / 32;
    let n = len[0] + ahead;
    if t < groups * kv_heads {
        let mut qr = [0u32; G * (RBIT / 32)];
        let q0 = (b * kv_heads + h) * G * words;
        for c in 0..G * RBIT / 128 {
            let v = q_codes.vload(q0 + c * 4);
            for e in 0..4u32 {
                qr[c * 4 + e] = v[e];
            }
        }
        let local = t / kv_heads * 4;
        for j in 0..4u32 {
            let s = first + local + j;
            let mut score = f32::NEG_INFINITY;
            // past the cache (s ≥ n) the score stays −∞
            if s < n {
                if s + recent >= n {
                    score = recent_score;
                } else if s < sink {
                    score = f32::INFINITY;
                } else {
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
                    score = G as f32 - 2.0 * ham as f32 / RBIT as f32;
                    if use_norms {
                        score *= norms[row];
                    }
                }
            }
            if s < cols {
                stage[h * (per_block + 1) + local + j] = score;
            }
        }
    }
    sync_threads();
    let count = per_block.min(cols - first);
    for i in (t..kv_heads * per_block).step_by(256) {
        let hh = i / per_block;
        let x = i % per_block;
        if x < count {
            scores[(b * kv_heads + hh) * cols + first + x] = stage[hh * (per_block + 1) + x];
        }
    }
}
