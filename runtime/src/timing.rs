//! Timing device work: CUDA events around each repetition after a warm-up, median of the
//! repetitions (host clock on the emulator). Compilation happens at `build`, never here.

use std::time::Instant;

use cudarc::driver::sys;

use crate::device::{Backend, Device};
use crate::error::{driver, RuntimeError};

/// The times of repeated runs, in milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// Median of the repetitions.
    pub median_ms: f64,
    /// Fastest repetition.
    pub min_ms: f64,
    /// Slowest repetition.
    pub max_ms: f64,
    /// Number of timed repetitions.
    pub reps: usize,
}

impl Timing {
    fn from_samples(mut samples: Vec<f64>) -> Timing {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2.0
        };
        Timing {
            median_ms: median,
            min_ms: samples[0],
            max_ms: samples[n - 1],
            reps: n,
        }
    }

    /// Throughput in GB/s for `bytes` moved per repetition, at the median time.
    pub fn gb_per_s(&self, bytes: f64) -> f64 {
        bytes / (self.median_ms * 1e-3) / 1e9
    }
}

/// Runs `work` `warmup` times untimed, then `reps` times, each between two events on the
/// device's stream; returns the median. `work` must only enqueue work on that stream.
pub fn time(
    device: &Device,
    warmup: usize,
    reps: usize,
    mut work: impl FnMut() -> Result<(), RuntimeError>,
) -> Result<Timing, RuntimeError> {
    if reps == 0 {
        return Err(RuntimeError::InvalidInput {
            what: "repetitions",
            reason: "time at least one repetition".into(),
        });
    }
    for _ in 0..warmup {
        work()?;
    }
    device.synchronize()?;
    let mut samples = Vec::with_capacity(reps);
    match device.backend() {
        Backend::Gpu(g) => {
            for _ in 0..reps {
                let start = g
                    .ctx
                    .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                    .map_err(driver)?;
                let end = g
                    .ctx
                    .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                    .map_err(driver)?;
                start.record(&g.stream).map_err(driver)?;
                work()?;
                end.record(&g.stream).map_err(driver)?;
                end.synchronize().map_err(driver)?;
                samples.push(start.elapsed_ms(&end).map_err(driver)? as f64);
            }
        }
        Backend::Emulator(_) => {
            for _ in 0..reps {
                let t = Instant::now();
                work()?;
                samples.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    Ok(Timing::from_samples(samples))
}
