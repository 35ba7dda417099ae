//! HATA's scoring: how well each cached key matches the query heads of its GQA group, from
//! their hash codes alone (xor + popcount), optionally weighted by the key's norm.

use kiln_dsl::kernel;

/// Scores every cached key of every (batch, KV head): with `ham` the Hamming distance summed
/// over the group's `G = heads / kv_heads` query codes, `score = G − 2·ham / RBIT`, times the
/// key's norm when `use_norms` — larger is better. The first `sink` and last `recent` tokens
/// get `+∞` so that top-k always keeps them.
///
/// `q_codes` `[B, H, RBIT/32]`, `k_codes` `[B, cap, H_kv, RBIT/32]`, `norms` `[B, cap, H_kv]`;
/// writes `scores[(b·H_kv + h)·len + s]` for the `len` cached tokens. Thread `i` of batch `b`
/// takes token `i / H_kv` of KV head `i % H_kv`, so a warp reads codes and norms contiguously
/// (the cache interleaves the heads); the query codes sit in shared memory word-major, so the
/// heads of a warp read different banks. `G` (the group size, `heads / kv_heads`) is comptime
/// so the loop over the group unrolls. Grid `(⌈len·H_kv / 256⌉, B)`, 256 threads; H ≤ 128.
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
    let qs = shared::<[u32; 128 * (RBIT / 32)]>();
    let t = thread_idx().x;
    let b = block_idx().y;
    let heads = G * kv_heads;
    let words = RBIT / 32;
    // word-major: word c of head hq at qs[c·heads + hq]
    for i in (t..heads * words).step_by(256) {
        qs[i % words * heads + i / words] = q_codes[b * heads * words + i];
    }
    sync_threads();
    let i = block_idx().x * 256 + t;
    if i < len * kv_heads {
        let s = i / kv_heads;
        let h = i % kv_heads;
        let row = b * cap * kv_heads + i;
        let mut ham = 0u32;
        for c0 in (0..words).step_by(4) {
            let kc = k_codes.vload(row * words + c0);
            for e in 0..4u32 {
                for gg in 0..G {
                    ham += (qs[(c0 + e) * heads + h * G + gg] ^ kc[e]).count_ones();
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
        scores[(b * kv_heads + h) * len + s] = score;
    }
}
