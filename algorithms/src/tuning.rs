//! What the algorithm autotuning searches share: a cache of compiled variants and the
//! output comparison of candidates.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use kiln::{Kernel, RuntimeError};

/// Compiled variants of a kernel by their comptime choice (tile sizes, layout): each is
/// built once, outside the lock, so the tuner's parallel compiles really run in parallel.
pub struct Variants<V> {
    built: Mutex<HashMap<V, Arc<Kernel>>>,
}

impl<V: Hash + Eq + Clone> Default for Variants<V> {
    fn default() -> Self {
        Variants {
            built: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: Hash + Eq + Clone> Variants<V> {
    /// The kernel for `variant`, built with `build` the first time.
    pub fn get(
        &self,
        variant: &V,
        build: impl FnOnce() -> Result<Kernel, RuntimeError>,
    ) -> Result<Arc<Kernel>, RuntimeError> {
        let lock = || self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = lock().get(variant) {
            return Ok(k.clone());
        }
        let k = Arc::new(build()?);
        Ok(lock().entry(variant.clone()).or_insert(k).clone())
    }
}

/// The tuned choice per call bucket, remembered after the first look into the tuning store
/// so that a call costs no file read (a decode step is tens of microseconds).
pub struct Choices<K, V> {
    known: Mutex<HashMap<K, V>>,
}

impl<K: Hash + Eq, V: Copy> Default for Choices<K, V> {
    fn default() -> Self {
        Choices {
            known: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq, V: Copy> Choices<K, V> {
    /// The choice for `key`, looked up with `find` the first time.
    pub fn get(&self, key: K, find: impl FnOnce() -> V) -> V {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        *known.entry(key).or_insert_with(find)
    }

    /// Replaces the choice for `key` (after a search found a new winner).
    pub fn set(&self, key: K, value: V) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.insert(key, value);
    }
}

/// Whether a candidate's f32 output matches the reference candidate's within relative norm
/// error `tol` (candidates differ only in summation order).
pub fn close(want: &[f32], got: &[f32], tol: f64) -> Result<(), String> {
    if want.len() != got.len() {
        return Err(format!("{} values, expected {}", got.len(), want.len()));
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&w, &g) in want.iter().zip(got) {
        let (w, g) = (w as f64, g as f64);
        diff += (g - w) * (g - w);
        norm += w * w;
    }
    let err = (diff / norm.max(f64::MIN_POSITIVE)).sqrt();
    if err.is_finite() && err <= tol {
        Ok(())
    } else {
        Err(format!(
            "relative error {err:.2e} against the first candidate (bound {tol:.0e})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::close;

    #[test]
    fn close_accepts_rounding_and_rejects_wrong_or_nan_outputs() {
        let want = [1.0f32, -2.0, 3.0];
        assert!(close(&want, &[1.0, -2.0, 3.000_001], 1e-5).is_ok());
        assert!(close(&want, &[1.0, 2.0, 3.0], 1e-5).is_err());
        assert!(close(&want, &[1.0, f32::NAN, 3.0], 1e-5).is_err());
        assert!(close(&want, &[1.0, -2.0], 1e-5).is_err());
    }
}
