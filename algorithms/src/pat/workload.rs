//! The long-tail generation workload: a batch of prompts whose response lengths follow a
//! log-normal law, as RLHF rollouts do (most responses are short, a few run to many times the
//! median and keep the batch — and the GPUs — busy long after the rest have finished).

use crate::verify::Rng;

/// A batch of generations: every sequence has a `prompt`-token prompt and a log-normal
/// response length (median `median`, log-std `sigma`), capped at `max_len`.
///
/// The defaults (256 sequences, prompts of 512, median 600 tokens, σ 1.0, cap 16K) put the
/// 99th percentile near 6K tokens — ten times the median — which is the shape reported for
/// RLHF rollouts of reasoning-tuned models (a small share of very long responses dominating
/// the generation time); every knob is public, so a measured distribution can replace it.
#[derive(Clone, Debug, PartialEq)]
pub struct LongTail {
    /// Sequences in the batch.
    pub sequences: usize,
    /// Prompt tokens per sequence.
    pub prompt: usize,
    /// Median response length, tokens.
    pub median: f64,
    /// Standard deviation of the log of the response length.
    pub sigma: f64,
    /// The longest response (generation stops there).
    pub max_len: usize,
    /// Seed of the draws.
    pub seed: u64,
}

impl Default for LongTail {
    fn default() -> Self {
        LongTail {
            sequences: 256,
            prompt: 512,
            median: 600.0,
            sigma: 1.0,
            max_len: 16384,
            seed: 0,
        }
    }
}

/// The standard normal CDF (Abramowitz–Stegun 7.1.26 for erf, error below 1.5e-7).
pub fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// The inverse of [`normal_cdf`] by bisection (to 1e-10 in `z`), for `p` in `(0, 1)`.
pub fn normal_quantile(p: f64) -> f64 {
    let (mut lo, mut hi) = (-12.0f64, 12.0f64);
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

impl LongTail {
    /// Every sequence's response length (at least 1, at most `max_len`), seeded.
    pub fn response_lengths(&self) -> Vec<usize> {
        let mut rng = Rng::new(self.seed ^ 0x5041_5431);
        let uniform = |rng: &mut Rng| ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        (0..self.sequences)
            .map(|_| {
                // Box–Muller: one normal per pair of uniforms is plenty here
                let (u1, u2) = (uniform(&mut rng), uniform(&mut rng));
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let len = (self.median.ln() + self.sigma * z).exp().round() as usize;
                len.clamp(1, self.max_len)
            })
            .collect()
    }

    /// The expected total length of a response that has already reached `generated` tokens:
    /// the median of the law conditioned on exceeding `generated` (what the scheduler can
    /// know at run time — not the true lengths), capped at `max_len`.
    pub fn expected_length(&self, generated: usize) -> f64 {
        if self.sigma <= 0.0 {
            return self
                .median
                .max(generated as f64 + 1.0)
                .min(self.max_len as f64);
        }
        let z = ((generated.max(1) as f64).ln() - self.median.ln()) / self.sigma;
        let p = normal_cdf(z);
        let q = (p + 1.0) / 2.0;
        let len = if q >= 1.0 - 1e-12 {
            generated as f64 + 1.0
        } else {
            (self.median.ln() + self.sigma * normal_quantile(q)).exp()
        };
        len.max(generated as f64 + 1.0).min(self.max_len as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_long_tailed_and_seeded() {
        let w = LongTail::default();
        let mut l = w.response_lengths();
        assert_eq!(l, w.response_lengths(), "deterministic");
        assert_ne!(
            l,
            LongTail {
                seed: 1,
                ..w.clone()
            }
            .response_lengths()
        );
        l.sort_unstable();
        let median = l[l.len() / 2] as f64;
        let p99 = l[l.len() * 99 / 100] as f64;
        assert!((400.0..900.0).contains(&median), "median {median}");
        assert!(p99 > 5.0 * median, "p99 {p99} vs median {median}");
    }

    #[test]
    fn the_remaining_estimate_grows_with_what_was_generated() {
        let w = LongTail::default();
        let mut last = 0.0;
        for g in [1usize, 100, 600, 2000, 8000] {
            let e = w.expected_length(g);
            assert!(e > g as f64 && e >= last, "{g}: {e}");
            last = e;
        }
        assert!((w.expected_length(1) - 600.0).abs() < 60.0);
        assert!((normal_quantile(normal_cdf(1.3)) - 1.3).abs() < 1e-6);
    }
}
