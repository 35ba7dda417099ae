//! The tuning store: the winner of each search and all its timings, kept on disk per
//! (kernel, device name, architecture, shape bucket) so later runs reuse it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::space::Point;
use crate::error::RuntimeError;

/// What a search is for. Shapes are bucketed to powers of two, so nearby sizes share a result.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TuneKey {
    /// The kernel (and specialisation, if the search does not vary it).
    pub kernel: String,
    /// Device name, e.g. "NVIDIA H200".
    pub device: String,
    /// `sm_90`, …
    pub arch: String,
    /// Problem sizes, each rounded up to a power of two.
    pub bucket: Vec<u64>,
}

impl TuneKey {
    /// A key for `kernel` on a device, with the problem sizes `shape` bucketed.
    pub fn new(kernel: &str, device: &str, arch: &str, shape: &[u64]) -> TuneKey {
        TuneKey {
            kernel: kernel.into(),
            device: device.into(),
            arch: arch.into(),
            bucket: shape
                .iter()
                .map(|s| s.max(&1).next_power_of_two())
                .collect(),
        }
    }

    fn text(&self) -> String {
        let bucket: Vec<String> = self.bucket.iter().map(u64::to_string).collect();
        format!(
            "{} | {} | {} | {}",
            self.kernel,
            self.device,
            self.arch,
            bucket.join("x")
        )
    }
}

/// How one candidate fared.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Trial {
    /// The candidate.
    pub point: Point,
    /// Median time in milliseconds, or why the candidate was dropped.
    pub outcome: Result<f64, String>,
}

/// The result of one search.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// What was tuned.
    pub key: TuneKey,
    /// The fastest candidate.
    pub winner: Point,
    /// Its median time in milliseconds.
    pub winner_ms: f64,
    /// Every candidate tried (pruned ones included, with their reason).
    pub trials: Vec<Trial>,
}

/// The store file: entries by key.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct File {
    entries: BTreeMap<String, Entry>,
}

/// A tuning store backed by a JSON file.
pub struct Store {
    path: Option<PathBuf>,
}

impl Store {
    /// The store in `dir` (`tune.json`); `None` keeps nothing.
    pub fn in_dir(dir: Option<&Path>) -> Store {
        Store {
            path: dir.map(|d| d.join("tune.json")),
        }
    }

    /// The store in the compile-cache folder (`KILN_CACHE_DIR`, …).
    pub fn default_location() -> Store {
        Store::in_dir(crate::cache::cache_dir().as_deref())
    }

    fn read(&self) -> File {
        self.path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// The stored entry for `key`, if any (an unreadable store counts as empty).
    pub fn lookup(&self, key: &TuneKey) -> Option<Entry> {
        self.read().entries.get(&key.text()).cloned()
    }

    /// Every stored entry.
    pub fn entries(&self) -> Vec<Entry> {
        self.read().entries.into_values().collect()
    }

    /// Stores `entry`, replacing any entry with its key; written atomically.
    pub fn save(&self, entry: &Entry) -> Result<(), RuntimeError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |e: std::io::Error| RuntimeError::InvalidInput {
            what: "tuning store",
            reason: format!("{}: {e}", path.display()),
        };
        let mut file = self.read();
        file.entries.insert(entry.key.text(), entry.clone());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let json = serde_json::to_vec_pretty(&file).map_err(|e| RuntimeError::InvalidInput {
            what: "tuning store",
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, json).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}
