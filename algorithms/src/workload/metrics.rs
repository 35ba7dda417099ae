//! How peaked attention is: the share of the softmax mass that the highest-scoring keys hold.
//! The workload tests use it to show that the planted structure makes attention sparse (and
//! that plain Gaussian Q/K do not); fidelity reports use it to describe their inputs.

/// The attention logits `scale · q·k` of one query row against each key row of `keys` (rows of
/// `q.len()` floats, so `keys.len()` must be a multiple of it), accumulated in f64. For the
/// usual softmax scale pass `1/√D`; for a causal query at position `p` pass only
/// `keys[..(p + 1)·D]`.
pub fn attention_logits(q: &[f32], keys: &[f32], scale: f32) -> Vec<f64> {
    let d = q.len();
    assert!(
        d > 0 && keys.len().is_multiple_of(d),
        "keys ({}) are not whole rows of {d}",
        keys.len()
    );
    keys.chunks_exact(d)
        .map(|k| {
            let dot: f64 = q.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
            dot * scale as f64
        })
        .collect()
}

/// The share of the softmax mass held by the `⌈fraction · n⌉` largest of `logits` (at least
/// one, at most all `n`). 1 means the top keys hold all the attention; for `n` equal logits it
/// is just the fraction. Empty input gives 0.
pub fn mass_of_top_logits(logits: &[f64], fraction: f64) -> f64 {
    let n = logits.len();
    if n == 0 {
        return 0.0;
    }
    let top = ((fraction * n as f64).ceil() as usize).clamp(1, n);
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut weights: Vec<f64> = logits.iter().map(|&l| (l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    weights.select_nth_unstable_by(top - 1, |a, b| b.total_cmp(a));
    weights[..top].iter().sum::<f64>() / total
}

/// The share of the softmax mass of query row `q` over `keys` (rows of `q.len()`) that the top
/// `fraction` of keys hold, with logits `scale · q·k`: [`attention_logits`] followed by
/// [`mass_of_top_logits`]. E.g. `softmax_mass_of_top(q, k, 1/√D, 0.02)` is the attention
/// that a top-k method keeping 2% of the cache could recover at best.
pub fn softmax_mass_of_top(q: &[f32], keys: &[f32], scale: f32, fraction: f32) -> f32 {
    mass_of_top_logits(&attention_logits(q, keys, scale), fraction as f64) as f32
}

/// The rank (0 = highest) of each logit in `logits`, ties broken by position. Used to ask
/// whether a planted key is among the top keys of a query.
pub fn logit_ranks(logits: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let mut ranks = vec![0; logits.len()];
    for (rank, &i) in order.iter().enumerate() {
        ranks[i] = rank;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_the_fraction() {
        let logits = vec![0.5; 1000];
        assert!((mass_of_top_logits(&logits, 0.02) - 0.02).abs() < 1e-12);
        assert_eq!(mass_of_top_logits(&logits, 2.0), 1.0);
        assert_eq!(mass_of_top_logits(&[], 0.5), 0.0);
    }

    #[test]
    fn one_dominant_logit_holds_the_mass() {
        let mut logits = vec![0.0; 100];
        logits[37] = 30.0;
        assert!(mass_of_top_logits(&logits, 0.01) > 0.999_999);
        assert_eq!(logit_ranks(&logits)[37], 0);
    }

    #[test]
    fn logits_are_scaled_dot_products() {
        let q = [1.0f32, 2.0];
        let keys = [1.0f32, 0.0, 0.0, 1.0, 3.0, 3.0];
        assert_eq!(attention_logits(&q, &keys, 0.5), vec![0.5, 1.0, 4.5]);
        assert_eq!(logit_ranks(&[0.5, 1.0, 4.5]), vec![2, 1, 0]);
        let m = softmax_mass_of_top(&q, &keys, 0.5, 0.3);
        let e = [0.5f64.exp(), 1f64.exp(), 4.5f64.exp()];
        assert!((m as f64 - e[2] / e.iter().sum::<f64>()).abs() < 1e-6);
    }
}
