//! The autotuner: searches a space of comptime values and launch shapes for the fastest
//! candidate. Candidates are compiled in parallel on host threads, timed one by one on the
//! device (events, warm-up, median — the caller's `measure` does the timing), optionally
//! checked against the first valid candidate's output; failures (compile errors, too many
//! registers or too much shared memory at launch, wrong output) are dropped with the reason.
//! The winner and every timing are stored per (kernel, device, arch, shape bucket) and reused.

mod progress;
mod space;
mod store;

pub use space::{Point, Space};
pub use store::{Entry, Store, Trial, TuneKey};

use crate::error::RuntimeError;
use progress::Progress;

/// How a search goes.
pub struct TuneOptions {
    /// Show the search's progress on stderr (a bar with the `progress-bar` feature).
    pub progress: bool,
    /// Search again even when the store has an entry for the key.
    pub force: bool,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            progress: true,
            force: false,
        }
    }
}

/// Runs (or reuses) a search. `compile` builds a candidate (called from several host threads
/// at once); `measure` times a built candidate on the device and returns its median time in
/// ms and optionally an output to compare with the first valid candidate's (`check`).
pub fn tune<K: Send, O>(
    key: &TuneKey,
    space: &Space,
    store: &Store,
    options: &TuneOptions,
    compile: impl Fn(&Point) -> Result<K, String> + Sync,
    mut measure: impl FnMut(&Point, &K) -> Result<(f64, Option<O>), String>,
    check: impl Fn(&O, &O) -> Result<(), String>,
) -> Result<Entry, RuntimeError> {
    if !options.force {
        if let Some(hit) = store.lookup(key) {
            return Ok(hit);
        }
    }
    let (points, pruned) = space.points();
    let mut trials: Vec<Trial> = pruned
        .into_iter()
        .map(|(point, why)| Trial {
            point,
            outcome: Err(format!("pruned: {why}")),
        })
        .collect();
    let bar = options
        .progress
        .then(|| Progress::new(points.len() as u64 * 2, format!("tuning {}", key.kernel)));
    // compile every candidate in parallel
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(points.len().max(1));
    let mut built: Vec<Option<Result<K, String>>> = (0..points.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let chunks: Vec<_> = built
            .chunks_mut(points.len().div_ceil(threads).max(1))
            .zip(points.chunks(points.len().div_ceil(threads).max(1)))
            .collect();
        for (slots, pts) in chunks {
            let compile = &compile;
            let bar = bar.clone();
            s.spawn(move || {
                for (slot, p) in slots.iter_mut().zip(pts) {
                    *slot = Some(compile(p));
                    if let Some(b) = &bar {
                        b.step(None);
                    }
                }
            });
        }
    });
    // time them one by one
    let mut reference: Option<O> = None;
    let mut best: Option<(Point, f64)> = None;
    for (p, b) in points.into_iter().zip(built) {
        let outcome = match b.unwrap_or_else(|| Err("not compiled".into())) {
            Err(e) => Err(format!("compile: {e}")),
            Ok(k) => match measure(&p, &k) {
                Err(e) => Err(e),
                Ok((ms, out)) => match (&reference, out) {
                    (Some(r), Some(o)) => check(r, &o)
                        .map(|_| ms)
                        .map_err(|e| format!("wrong output: {e}")),
                    (None, Some(o)) => {
                        reference = Some(o);
                        Ok(ms)
                    }
                    (_, None) => Ok(ms),
                },
            },
        };
        if let Ok(ms) = outcome {
            if best.as_ref().is_none_or(|(_, b)| ms < *b) {
                best = Some((p.clone(), ms));
            }
        }
        if let Some(bar) = &bar {
            bar.step(
                best.as_ref()
                    .map(|(p, ms)| format!("best {ms:.4} ms ({})", p.describe())),
            );
        }
        trials.push(Trial { point: p, outcome });
    }
    if let Some(bar) = &bar {
        bar.finish();
    }
    let Some((winner, winner_ms)) = best else {
        let reasons: Vec<String> = trials
            .iter()
            .filter_map(|t| {
                t.outcome
                    .as_ref()
                    .err()
                    .map(|e| format!("{}: {e}", t.point.describe()))
            })
            .take(5)
            .collect();
        return Err(RuntimeError::InvalidInput {
            what: "tuning",
            reason: format!(
                "no candidate of `{}` ran: {}",
                key.kernel,
                reasons.join("; ")
            ),
        });
    };
    let entry = Entry {
        key: key.clone(),
        winner,
        winner_ms,
        trials,
    };
    store.save(&entry)?;
    Ok(entry)
}

/// The trials of an entry as a table (fastest first, dropped candidates last).
pub fn table(entry: &Entry) -> String {
    let mut trials = entry.trials.clone();
    trials.sort_by(|a, b| match (&a.outcome, &b.outcome) {
        (Ok(x), Ok(y)) => x.total_cmp(y),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => a.point.cmp(&b.point),
    });
    let mut out = format!(
        "{} on {} ({}), bucket {:?}\n",
        entry.key.kernel, entry.key.device, entry.key.arch, entry.key.bucket
    );
    for t in trials {
        let result = match &t.outcome {
            Ok(ms) => format!(
                "{ms:>10.4} ms{}",
                if t.point == entry.winner {
                    "  <- winner"
                } else {
                    ""
                }
            ),
            Err(e) => format!("    dropped: {e}"),
        };
        out.push_str(&format!("  {:<40} {result}\n", t.point.describe()));
    }
    out
}
