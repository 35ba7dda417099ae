//! The small, self-contained random number generator of the workload generator: SplitMix64
//! for uniform bits and the ziggurat method for normals (five to ten times faster than
//! Box-Muller's logarithm, square root, sine and cosine per pair). Every row of every tensor draws from its own
//! stream, named by a seed and a few indices ([`Rng::stream`]), so the output does not depend
//! on how the rows are spread over threads.

/// SplitMix64 (Steele, Lea and Flood, 2014): a 64-bit state advanced by a Weyl sequence and
/// scrambled by two multiply-xorshift rounds. Fast, passes BigCrush, and any seed is fine,
/// which is what per-row streams need. Not cryptographic.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

/// The golden-ratio increment of SplitMix64.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function: a bijective scramble of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// An independent stream named by `seed` and `parts` (a tag and indices such as batch,
    /// head and position): each part is folded into the state through the SplitMix64
    /// scramble, so streams with different names are unrelated.
    pub fn stream(seed: u64, parts: &[u64]) -> Rng {
        let mut h = mix(seed.wrapping_add(GAMMA));
        for &p in parts {
            h = mix(h ^ mix(p.wrapping_add(GAMMA)).wrapping_add(GAMMA));
        }
        Rng::new(h)
    }

    /// The next 64 uniform bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix(self.state)
    }

    /// A uniform number in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `0..n` (`n > 0`), by Lemire's multiply-shift (bias below 2⁻³²
    /// for any `n` used here).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// A uniform number in `(0, 1)`: never 0, so its logarithm is finite.
    fn open_uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal, by the ziggurat method (Marsaglia and Tsang, 2000) with 128 layers:
    /// about 99% of draws cost one 64-bit draw, a compare and a multiply. Following Doornik
    /// (2005), the layer index (low 7 bits) and the abscissa (high 32 bits) come from
    /// different bits of the draw, so they are independent.
    pub fn normal(&mut self) -> f32 {
        self.normal_with(ziggurat())
    }

    /// Fills `out` with independent standard normals.
    pub fn fill_normal(&mut self, out: &mut [f32]) {
        let z = ziggurat();
        for x in out {
            *x = self.normal_with(z);
        }
    }

    fn normal_with(&mut self, z: &Ziggurat) -> f32 {
        loop {
            let bits = self.next_u64();
            let i = (bits & (LAYERS as u64 - 1)) as usize;
            let hz = (bits >> 32) as u32 as i32;
            let x = hz as f32 * z.w[i];
            if hz.unsigned_abs() < z.k[i] {
                return x;
            }
            if i == 0 {
                // The tail beyond r, by Marsaglia's exponential rejection.
                loop {
                    let t = -self.open_uniform().ln() / ZIGGURAT_R;
                    let y = -self.open_uniform().ln();
                    if y + y >= t * t {
                        let v = (ZIGGURAT_R + t) as f32;
                        return if hz > 0 { v } else { -v };
                    }
                }
            }
            // The wedge between layer i's rectangle and the density.
            let f = z.f[i] as f64 + self.uniform() * (z.f[i - 1] as f64 - z.f[i] as f64);
            if f < (-0.5 * x as f64 * x as f64).exp() {
                return x;
            }
        }
    }
}

/// Layers of the ziggurat.
const LAYERS: usize = 128;
/// Where the base layer's tail starts, for 128 layers.
const ZIGGURAT_R: f64 = 3.442_619_855_899;
/// Area of each layer, for 128 layers.
const ZIGGURAT_V: f64 = 9.912_563_035_262_17e-3;

/// The ziggurat tables: `k` compares the 32-bit abscissa, `w` scales it, `f` is the density at
/// each layer's edge.
struct Ziggurat {
    k: [u32; LAYERS],
    w: [f32; LAYERS],
    f: [f32; LAYERS],
}

/// The tables, built once (Marsaglia and Tsang's `zigset`).
fn ziggurat() -> &'static Ziggurat {
    static TABLES: std::sync::OnceLock<Ziggurat> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let m1 = 2_147_483_648.0f64;
        let mut z = Ziggurat {
            k: [0; LAYERS],
            w: [0.0; LAYERS],
            f: [0.0; LAYERS],
        };
        let mut dn = ZIGGURAT_R;
        let mut tn = dn;
        let q = ZIGGURAT_V / (-0.5 * dn * dn).exp();
        z.k[0] = ((dn / q) * m1) as u32;
        z.k[1] = 0;
        z.w[0] = (q / m1) as f32;
        z.w[LAYERS - 1] = (dn / m1) as f32;
        z.f[0] = 1.0;
        z.f[LAYERS - 1] = (-0.5 * dn * dn).exp() as f32;
        for i in (1..LAYERS - 1).rev() {
            dn = (-2.0 * (ZIGGURAT_V / dn + (-0.5 * dn * dn).exp()).ln()).sqrt();
            z.k[i + 1] = ((dn / tn) * m1) as u32;
            tn = dn;
            z.f[i] = (-0.5 * dn * dn).exp() as f32;
            z.w[i] = (dn / m1) as f32;
        }
        z
    })
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn streams_are_deterministic_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::stream(7, &[1, 2]).next_u64()).collect();
        assert!(a.iter().all(|&x| x == a[0]));
        let mut seen = std::collections::HashSet::new();
        for i in 0..64u64 {
            for j in 0..64u64 {
                assert!(seen.insert(Rng::stream(7, &[i, j]).next_u64()));
            }
        }
        assert_ne!(
            Rng::stream(7, &[1]).next_u64(),
            Rng::stream(8, &[1]).next_u64()
        );
    }

    #[test]
    fn normals_have_unit_moments() {
        let mut rng = Rng::new(3);
        let mut x = vec![0f32; 1 << 20];
        rng.fill_normal(&mut x);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let kurt = x.iter().map(|&v| (v as f64 - mean).powi(4)).sum::<f64>() / n / (var * var);
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!((var - 1.0).abs() < 0.005, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.05, "kurtosis {kurt}");
        // Tail masses against the normal law: P(x > t) for t = 1, 2, 3, and P(|x| > 3.5),
        // which only the tail sampler reaches (the base layer ends at r ≈ 3.44).
        for (t, p) in [(1.0f32, 0.158_655), (2.0, 0.022_750), (3.0, 0.001_350)] {
            let got = x.iter().filter(|&&v| v > t).count() as f64 / n;
            let sd = (p * (1.0 - p) / n).sqrt();
            assert!(
                (got - p).abs() < 5.0 * sd,
                "P(x > {t}) = {got}, expected {p}"
            );
        }
        let far = x.iter().filter(|&&v| v.abs() > 3.5).count() as f64 / n;
        assert!(
            (far - 4.6525e-4).abs() < 5.0 * (4.6525e-4 / n).sqrt(),
            "P(|x| > 3.5) = {far}"
        );
        // A histogram over 40 bins of [-4, 4] against the density (chi-square, 39 degrees of
        // freedom: 80 is beyond its 99.99th percentile).
        let bins = 40;
        let mut hist = vec![0usize; bins];
        for &v in &x {
            if (-4.0..4.0).contains(&v) {
                hist[((v + 4.0) / 8.0 * bins as f32) as usize] += 1;
            }
        }
        let cdf = |t: f64| 0.5 * (1.0 + erf(t / std::f64::consts::SQRT_2));
        let chi2: f64 = (0..bins)
            .map(|b| {
                let lo = -4.0 + 8.0 * b as f64 / bins as f64;
                let e = n * (cdf(lo + 8.0 / bins as f64) - cdf(lo));
                (hist[b] as f64 - e).powi(2) / e
            })
            .sum();
        assert!(chi2 < 80.0, "chi-square {chi2}");
        let positive = x.iter().filter(|&&v| v > 0.0).count() as f64 / n;
        assert!((positive - 0.5).abs() < 0.002, "P(x > 0) = {positive}");
    }

    /// The error function (Abramowitz and Stegun 7.1.26 is too coarse here; this is the
    /// series/continued-fraction pair, accurate to about 1e-12).
    fn erf(x: f64) -> f64 {
        let t = x.abs();
        let r = if t < 3.0 {
            // Maclaurin series.
            let mut sum = t;
            let mut term = t;
            let mut k = 0.0;
            loop {
                k += 1.0;
                term *= -t * t / k;
                let add = term / (2.0 * k + 1.0);
                sum += add;
                if add.abs() < 1e-17 {
                    break;
                }
            }
            2.0 / std::f64::consts::PI.sqrt() * sum
        } else {
            // Continued fraction for erfc.
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (t + f);
            }
            1.0 - (-t * t).exp() / std::f64::consts::PI.sqrt() / (t + f)
        };
        r.copysign(x)
    }

    #[test]
    fn below_and_uniform_stay_in_range() {
        let mut rng = Rng::new(11);
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            counts[rng.below(5)] += 1;
            let u = rng.uniform();
            assert!((0.0..1.0).contains(&u));
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }
}
