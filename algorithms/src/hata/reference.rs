//! Plain-Rust references for HATA's kernels (what the tests compare against) and the
//! selectors its fidelity is measured against.

/// The hash code of `x` (`d` values) under `w` (`[d, rbit]` row-major): bit `j` set when
/// `x·w[:, j] > 0`, packed little-endian into `rbit / 32` words. Products are summed in f64
/// in index order; the kernel sums in f32, so a column whose dot product is within rounding
/// of zero may differ (the checks allow for that).
pub fn encode(x: &[f64], w: &[f64], rbit: usize) -> Vec<u32> {
    let mut words = vec![0u32; rbit / 32];
    for j in 0..rbit {
        let dot: f64 = x.iter().enumerate().map(|(d, v)| v * w[d * rbit + j]).sum();
        if dot > 0.0 {
            words[j / 32] |= 1 << (j % 32);
        }
    }
    words
}

/// The dot products behind [`encode`], to tell a genuine mismatch from a rounding tie.
pub fn projections(x: &[f64], w: &[f64], rbit: usize) -> Vec<f64> {
    (0..rbit)
        .map(|j| x.iter().enumerate().map(|(d, v)| v * w[d * rbit + j]).sum())
        .collect()
}

/// HATA's score of one key code against its group's query codes: `G − 2·ham/rbit`, times
/// the key norm when given.
pub fn score(q_codes: &[&[u32]], k_code: &[u32], rbit: usize, norm: Option<f64>) -> f64 {
    let ham: u32 = q_codes
        .iter()
        .map(|q| {
            q.iter()
                .zip(k_code)
                .map(|(a, b)| (a ^ b).count_ones())
                .sum::<u32>()
        })
        .sum();
    let s = q_codes.len() as f64 - 2.0 * ham as f64 / rbit as f64;
    s * norm.unwrap_or(1.0)
}

/// The `k` indices of the largest `scores` (ties: the lower index first), ascending.
pub fn top_k(scores: &[f64], k: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_by(|&a, &b| {
        scores[b as usize]
            .partial_cmp(&scores[a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    order.truncate(k);
    order.sort_unstable();
    order
}

/// Fraction of `want` found in `got` (both sets of indices).
pub fn recall(got: &[u32], want: &[u32]) -> f64 {
    if want.is_empty() {
        return 1.0;
    }
    let got: std::collections::HashSet<u32> = got.iter().copied().collect();
    want.iter().filter(|i| got.contains(i)).count() as f64 / want.len() as f64
}
