//! The step-latency predictor: per tensor-parallel degree, the profile's grid of
//! (batch, context) points interpolated bilinearly in `(ln batch, ln context)` on
//! `ln ms` — a model that follows the memory-bound and compute-bound regimes and the knee
//! between them without assuming their form — and its error on held-out points.

use super::profile::ProfilePoint;

/// One TP degree's grid: `ms[i][j]` at `batches[i]`, `contexts[j]`.
#[derive(Clone, Debug, PartialEq)]
struct Grid {
    tp: u32,
    batches: Vec<u32>,
    contexts: Vec<u32>,
    ln_ms: Vec<Vec<f64>>,
}

/// The fitted model of every profiled TP degree.
#[derive(Clone, Debug, PartialEq)]
pub struct Predictor {
    grids: Vec<Grid>,
}

/// Where `x` falls between the sorted `knots` (in log space): the lower index and the
/// weight of the upper one (clamped to the ends: no extrapolation).
fn bracket(knots: &[u32], x: f64) -> (usize, f64) {
    let lx = x.max(1e-9).ln();
    if knots.len() == 1 || x <= knots[0] as f64 {
        return (0, 0.0);
    }
    let last = knots.len() - 1;
    if x >= knots[last] as f64 {
        return (last - 1, 1.0);
    }
    let i = knots
        .iter()
        .rposition(|&k| k as f64 <= x)
        .unwrap_or(0)
        .min(last - 1);
    let (a, b) = ((knots[i] as f64).ln(), (knots[i + 1] as f64).ln());
    (i, (lx - a) / (b - a))
}

impl Predictor {
    /// Builds the model from `points`, which must hold a full (batch × context) grid for
    /// each TP degree with positive times; anything else is an error saying what is missing.
    pub fn fit(points: &[ProfilePoint]) -> Result<Predictor, String> {
        let mut tps: Vec<u32> = points.iter().map(|p| p.tp).collect();
        tps.sort_unstable();
        tps.dedup();
        let mut grids = Vec::new();
        for tp in tps {
            let mine: Vec<&ProfilePoint> = points.iter().filter(|p| p.tp == tp).collect();
            let mut batches: Vec<u32> = mine.iter().map(|p| p.batch).collect();
            let mut contexts: Vec<u32> = mine.iter().map(|p| p.context).collect();
            batches.sort_unstable();
            batches.dedup();
            contexts.sort_unstable();
            contexts.dedup();
            let mut ln_ms = vec![vec![f64::NAN; contexts.len()]; batches.len()];
            for p in &mine {
                if !p.ms.is_finite() || p.ms <= 0.0 || p.batch == 0 || p.context == 0 {
                    return Err(format!(
                        "TP {tp}: point {p:?} is not a positive, finite measurement"
                    ));
                }
                let i = batches.binary_search(&p.batch).unwrap_or(0);
                let j = contexts.binary_search(&p.context).unwrap_or(0);
                ln_ms[i][j] = p.ms.ln();
            }
            if ln_ms.iter().flatten().any(|v| v.is_nan()) {
                return Err(format!(
                    "TP {tp}: the profile is not a full grid of batches {batches:?} × contexts {contexts:?}"
                ));
            }
            grids.push(Grid {
                tp,
                batches,
                contexts,
                ln_ms,
            });
        }
        Ok(Predictor { grids })
    }

    /// The predicted step latency, ms (clamped to the profiled range); `None` for a TP degree
    /// the profile did not cover.
    pub fn predict(&self, tp: u32, batch: u32, context: f64) -> Option<f64> {
        let g = self.grids.iter().find(|g| g.tp == tp)?;
        let (i, wi) = bracket(&g.batches, batch as f64);
        let (j, wj) = bracket(&g.contexts, context);
        let at =
            |a: usize, b: usize| g.ln_ms[a.min(g.batches.len() - 1)][b.min(g.contexts.len() - 1)];
        let v = (1.0 - wi) * ((1.0 - wj) * at(i, j) + wj * at(i, j + 1))
            + wi * ((1.0 - wj) * at(i + 1, j) + wj * at(i + 1, j + 1));
        Some(v.exp())
    }

    /// Fits on the profile without its odd-numbered batch values and returns the median and
    /// the largest relative error at the points left out (each interpolated from neighbours
    /// twice as far apart as in the full profile: a pessimistic test).
    pub fn heldout_error(points: &[ProfilePoint]) -> Result<(f64, f64), String> {
        let mut batches: Vec<u32> = points.iter().map(|p| p.batch).collect();
        batches.sort_unstable();
        batches.dedup();
        let held: Vec<u32> = batches
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 1 && *i + 1 < batches.len())
            .map(|(_, &b)| b)
            .collect();
        let train: Vec<ProfilePoint> = points
            .iter()
            .filter(|p| !held.contains(&p.batch))
            .copied()
            .collect();
        let model = Predictor::fit(&train)?;
        let mut errs: Vec<f64> = points
            .iter()
            .filter(|p| held.contains(&p.batch))
            .filter_map(|p| {
                model
                    .predict(p.tp, p.batch, p.context as f64)
                    .map(|q| (q - p.ms).abs() / p.ms)
            })
            .collect();
        if errs.is_empty() {
            return Err("the profile has too few batch values to hold any out".into());
        }
        errs.sort_by(f64::total_cmp);
        Ok((errs[errs.len() / 2], errs[errs.len() - 1]))
    }
}
