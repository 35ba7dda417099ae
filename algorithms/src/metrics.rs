//! Error measures shared by the tests, the tuner's output checks and fidelity reports.

/// ‖got − want‖ / ‖want‖ in f64; a NaN anywhere, or different lengths, give infinity.
pub fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() || got.iter().any(|v| v.is_nan()) {
        return f64::INFINITY;
    }
    let num: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}
