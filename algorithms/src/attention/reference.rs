//! Float64 references for the attention kernels: what the tests compare against.

/// `softmax(scale · q·Kᵀ)·V` for one query row over the keys `keys` (indices into `k`/`v`,
/// whose rows `row(j)` are `d` long): the output row and its natural-log log-sum-exp.
fn attend_row<'a>(
    q: &[f64],
    keys: &mut dyn Iterator<Item = usize>,
    k: &dyn Fn(usize) -> &'a [f64],
    v: &dyn Fn(usize) -> &'a [f64],
    scale: f64,
) -> (Vec<f64>, f64) {
    let d = q.len();
    let scored: Vec<(usize, f64)> = keys
        .map(|j| {
            (
                j,
                scale * q.iter().zip(k(j)).map(|(a, b)| a * b).sum::<f64>(),
            )
        })
        .collect();
    let mx = scored.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
    let mut out = vec![0.0; d];
    let mut den = 0.0;
    for (j, s) in &scored {
        let p = (s - mx).exp();
        den += p;
        for (o, x) in out.iter_mut().zip(v(*j)) {
            *o += p * x;
        }
    }
    out.iter_mut().for_each(|o| *o /= den);
    (out, mx + den.ln())
}

/// The shape of a prefill attention call: `q` `[B, H, S_q, D]`, `k`/`v` `[B, H_kv, S_kv, D]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillShape {
    /// Sequences.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// KV heads (a divisor of `heads`).
    pub kv_heads: usize,
    /// Query tokens.
    pub s_q: usize,
    /// Key tokens.
    pub s_kv: usize,
    /// Head dimension.
    pub dim: usize,
    /// Query `i` sees key `j` only when `j ≤ i + s_kv − s_q`.
    pub causal: bool,
}

/// Prefill attention in float64: `(o [B, H, S_q, D], lse [B, H, S_q])`.
pub fn prefill(
    s: &PrefillShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let d = s.dim;
    let group = s.heads / s.kv_heads;
    let mut o = Vec::with_capacity(s.batch * s.heads * s.s_q * d);
    let mut lse = Vec::with_capacity(s.batch * s.heads * s.s_q);
    for b in 0..s.batch {
        for h in 0..s.heads {
            let kv = (b * s.kv_heads + h / group) * s.s_kv * d;
            for i in 0..s.s_q {
                let qi = &q[((b * s.heads + h) * s.s_q + i) * d..][..d];
                let last = if s.causal {
                    (i + s.s_kv - s.s_q + 1).min(s.s_kv)
                } else {
                    s.s_kv
                };
                let (out, l) = attend_row(
                    qi,
                    &mut (0..last),
                    &|j| &k[kv + j * d..][..d],
                    &|j| &v[kv + j * d..][..d],
                    scale,
                );
                o.extend(out);
                lse.push(l);
            }
        }
    }
    (o, lse)
}

/// Decode attention in float64 for `q` `[B, H, D]` over the KV cache `k`/`v`
/// `[B, S, H_kv, D]`: the first `n_keys` tokens, or those listed in `ids`
/// `[B, H_kv, n_keys]`. Returns `(o [B, H, D], lse [B, H])`.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    batch: usize,
    heads: usize,
    kv_heads: usize,
    seq: usize,
    dim: usize,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    ids: Option<&[u32]>,
    n_keys: usize,
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let d = dim;
    let group = heads / kv_heads;
    let mut o = Vec::with_capacity(batch * heads * d);
    let mut lse = Vec::with_capacity(batch * heads);
    for b in 0..batch {
        for h in 0..heads {
            let hk = h / group;
            let at = |j: usize| ((b * seq + j) * kv_heads + hk) * d;
            let token = |i: usize| match ids {
                Some(ids) => ids[(b * kv_heads + hk) * n_keys + i] as usize,
                None => i,
            };
            let (out, l) = attend_row(
                &q[(b * heads + h) * d..][..d],
                &mut (0..n_keys).map(token),
                &|j| &k[at(j)..][..d],
                &|j| &v[at(j)..][..d],
                scale,
            );
            o.extend(out);
            lse.push(l);
        }
    }
    (o, lse)
}
