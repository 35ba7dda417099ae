//! The top-k selectors HATA's paper compares with, as float64 host references for the
//! fidelity report, at the same key budget as HATA:
//!
//! - **Quest** (query-aware page selection): keys are grouped in pages of [`QUEST_PAGE`]
//!   consecutive tokens; each page keeps its channel-wise min and max, and a query scores a
//!   page by the upper bound `Σ_c max(q_c·min_c, q_c·max_c)` of `q·k` over the page. The
//!   best pages are kept whole, `budget / page` of them (never more keys than the budget,
//!   but at least one page).
//! - **Loki** (low-rank keys): the keys are projected on their top-`r` principal components
//!   and a query scores each key by `q·k` in that `r`-dimensional space. Loki calibrates the
//!   components offline; here they are computed from the evaluated sequence's own keys, which
//!   can only favour Loki.
//!
//! A GQA group shares one selection (as in HATA): the group's query heads' scores are summed
//! per page or key. Both return the kept token indices in ascending order.

use super::reference::top_k;

/// Tokens per Quest page (the Quest paper's page size for this budget range).
pub const QUEST_PAGE: usize = 16;

/// One KV head's decode-step inputs: the group's query rows `[G, D]` and the head's keys
/// `[S, D]`, row-major, in float64.
pub struct HeadInputs<'a> {
    /// The group's query rows, `G·D` values.
    pub queries: &'a [f64],
    /// The head's keys, `S·D` values.
    pub keys: &'a [f64],
    /// The head dimension `D`.
    pub dim: usize,
}

impl HeadInputs<'_> {
    fn seq(&self) -> usize {
        self.keys.len() / self.dim
    }

    fn key(&self, t: usize) -> &[f64] {
        &self.keys[t * self.dim..][..self.dim]
    }

    fn query_rows(&self) -> impl Iterator<Item = &[f64]> {
        self.queries.chunks_exact(self.dim)
    }
}

/// Quest's selection of at most `budget` tokens (at least one page): the `budget /
/// QUEST_PAGE` pages with the largest upper bound on the group's summed `q·k` (the last page
/// may be partial).
pub fn quest_select(head: &HeadInputs<'_>, budget: usize) -> Vec<u32> {
    let (s, d) = (head.seq(), head.dim);
    let pages = s.div_ceil(QUEST_PAGE);
    let bounds: Vec<f64> = (0..pages)
        .map(|p| {
            let rows = p * QUEST_PAGE..((p + 1) * QUEST_PAGE).min(s);
            let mut lo = vec![f64::INFINITY; d];
            let mut hi = vec![f64::NEG_INFINITY; d];
            for t in rows {
                for (c, &x) in head.key(t).iter().enumerate() {
                    lo[c] = lo[c].min(x);
                    hi[c] = hi[c].max(x);
                }
            }
            head.query_rows()
                .map(|q| {
                    q.iter()
                        .enumerate()
                        .map(|(c, &qc)| (qc * lo[c]).max(qc * hi[c]))
                        .sum::<f64>()
                })
                .sum()
        })
        .collect();
    let mut kept: Vec<u32> = top_k(&bounds, (budget / QUEST_PAGE).max(1))
        .into_iter()
        .flat_map(|p| {
            let p = p as usize;
            (p * QUEST_PAGE) as u32..((p + 1) * QUEST_PAGE).min(s) as u32
        })
        .collect();
    kept.sort_unstable();
    kept
}

/// Loki's low-rank key basis for one KV head: the keys' top-`rank` principal components (of
/// the centred keys).
pub struct Loki {
    components: Vec<Vec<f64>>,
}

impl Loki {
    /// The basis of `keys` (`[S, dim]`, row-major) truncated to `rank ≤ dim` components.
    pub fn calibrate(keys: &[f64], dim: usize, rank: usize) -> Loki {
        Loki {
            components: principal_components(keys, dim, rank.min(dim)),
        }
    }

    fn project(&self, x: &[f64]) -> Vec<f64> {
        self.components.iter().map(|c| dot(c, x)).collect()
    }

    /// The `budget` tokens with the largest group-summed `q·k`, queries and keys projected
    /// on the basis.
    pub fn select(&self, head: &HeadInputs<'_>, budget: usize) -> Vec<u32> {
        let queries: Vec<Vec<f64>> = head.query_rows().map(|q| self.project(q)).collect();
        let scores: Vec<f64> = (0..head.seq())
            .map(|t| {
                let k = self.project(head.key(t));
                queries.iter().map(|q| dot(q, &k)).sum()
            })
            .collect();
        top_k(&scores, budget)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The `rank` unit eigenvectors of the rows' covariance with the largest eigenvalues, by
/// cyclic Jacobi rotations (exact for a symmetric matrix; `D ≤ 256` here).
fn principal_components(rows: &[f64], d: usize, rank: usize) -> Vec<Vec<f64>> {
    let n = rows.len() / d;
    let mut mean = vec![0.0; d];
    for r in rows.chunks_exact(d) {
        for (m, x) in mean.iter_mut().zip(r) {
            *m += x / n as f64;
        }
    }
    let mut a = vec![0.0; d * d];
    for r in rows.chunks_exact(d) {
        for i in 0..d {
            let xi = r[i] - mean[i];
            for j in i..d {
                a[i * d + j] += xi * (r[j] - mean[j]);
            }
        }
    }
    for i in 0..d {
        for j in 0..i {
            a[i * d + j] = a[j * d + i];
        }
    }
    let (values, vectors) = jacobi_eigen(a, d);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&x, &y| values[y].total_cmp(&values[x]));
    order
        .into_iter()
        .take(rank)
        .map(|c| (0..d).map(|i| vectors[i * d + c]).collect())
        .collect()
}

/// Eigenvalues and eigenvectors (columns of the returned `d × d` matrix) of the symmetric
/// matrix `a`, by cyclic Jacobi sweeps until the off-diagonal mass is negligible.
pub(crate) fn jacobi_eigen(mut a: Vec<f64>, d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    let total: f64 = a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _sweep in 0..50 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j] * a[i * d + j])
            .sum();
        if off <= 1e-22 * total {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Rng;

    fn random(rng: &mut Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.normal() as f64).collect()
    }

    /// The group-summed exact `q·k` of every key.
    fn exact_scores(head: &HeadInputs<'_>) -> Vec<f64> {
        (0..head.seq())
            .map(|t| head.query_rows().map(|q| dot(q, head.key(t))).sum())
            .collect()
    }

    #[test]
    fn jacobi_diagonalises_a_random_symmetric_matrix() {
        let d = 12;
        let mut rng = Rng::new(4);
        let b = random(&mut rng, d * d);
        let mut a = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                a[i * d + j] = (0..d).map(|k| b[i * d + k] * b[j * d + k]).sum();
            }
        }
        let (values, v) = jacobi_eigen(a.clone(), d);
        for c in 0..d {
            let col: Vec<f64> = (0..d).map(|i| v[i * d + c]).collect();
            let av: Vec<f64> = (0..d)
                .map(|i| (0..d).map(|j| a[i * d + j] * col[j]).sum())
                .collect();
            for i in 0..d {
                assert!(
                    (av[i] - values[c] * col[i]).abs() < 1e-8 * values[c].abs().max(1.0),
                    "A v != λ v for eigenpair {c}"
                );
            }
            assert!((dot(&col, &col) - 1.0).abs() < 1e-10);
        }
    }

    #[test]
    fn quest_bound_never_misses_the_page_of_the_best_key() {
        // every page's bound is at least the exact score of each of its keys, so the page
        // kept at a budget of one page has a bound at least the best key's exact score
        let (d, s, g) = (16, 200, 2);
        let mut rng = Rng::new(9);
        for _ in 0..20 {
            let keys = random(&mut rng, s * d);
            let queries = random(&mut rng, g * d);
            let head = HeadInputs {
                queries: &queries,
                keys: &keys,
                dim: d,
            };
            let exact = exact_scores(&head);
            let kept = quest_select(&head, QUEST_PAGE);
            // one whole page, in order
            assert_eq!(kept.len(), QUEST_PAGE);
            assert!(kept.windows(2).all(|w| w[1] == w[0] + 1));
            assert_eq!(kept[0] as usize % QUEST_PAGE, 0);
            // the bound of the kept page is ≥ the best key's exact score
            let page = kept[0] as usize / QUEST_PAGE;
            let bound = |p: usize| -> f64 {
                let rows = p * QUEST_PAGE..((p + 1) * QUEST_PAGE).min(s);
                head.query_rows()
                    .map(|q| {
                        (0..d)
                            .map(|c| {
                                let (lo, hi) = rows
                                    .clone()
                                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), t| {
                                        (lo.min(head.key(t)[c]), hi.max(head.key(t)[c]))
                                    });
                                (q[c] * lo).max(q[c] * hi)
                            })
                            .sum::<f64>()
                    })
                    .sum()
            };
            let best = exact.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            assert!(bound(page) >= best - 1e-9);
        }
    }

    #[test]
    fn loki_at_full_rank_is_the_exact_top_k() {
        let (d, s, g, k) = (8, 120, 4, 17);
        let mut rng = Rng::new(2);
        let keys = random(&mut rng, s * d);
        let queries = random(&mut rng, g * d);
        let head = HeadInputs {
            queries: &queries,
            keys: &keys,
            dim: d,
        };
        let exact = exact_scores(&head);
        assert_eq!(
            Loki::calibrate(&keys, d, d).select(&head, k),
            top_k(&exact, k)
        );
        // a lower rank keeps the budget and stays a valid, sorted, distinct selection
        let low = Loki::calibrate(&keys, d, 2).select(&head, k);
        assert_eq!(low.len(), k);
        assert!(low.windows(2).all(|w| w[0] < w[1]) && low.iter().all(|&t| (t as usize) < s));
    }
}
