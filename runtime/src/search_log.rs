//! The record of a library search: every candidate path tried, where it came from and why it
//! was rejected, and how that record is printed in the not-found error. Shared by the search
//! (`locate`) and the error type (`error`), so neither depends on the other for it.

use std::fmt;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Which search root a candidate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchOrigin {
    /// The spec's environment variable (`KILN_NVRTC_PATH`).
    EnvVar,
    /// An `LD_LIBRARY_PATH` entry.
    LoaderPath,
    /// A CUDA toolkit root (`CUDA_HOME`, `CUDA_PATH`).
    Toolkit,
    /// A fixed system folder.
    SystemDir,
    /// A pip wheel folder in Python's site-packages.
    PythonWheel,
    /// The system loader's search by bare file name.
    SystemLoader,
}

impl fmt::Display for SearchOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SearchOrigin::EnvVar => "explicit path",
            SearchOrigin::LoaderPath => "LD_LIBRARY_PATH",
            SearchOrigin::Toolkit => "CUDA_HOME/CUDA_PATH",
            SearchOrigin::SystemDir => "system folder",
            SearchOrigin::PythonWheel => "Python wheel",
            SearchOrigin::SystemLoader => "system loader search",
        })
    }
}

/// Why a candidate was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TryOutcome {
    /// No such file.
    NotFound,
    /// The file exists (or the name resolved) but loading it failed; the loader's message.
    LoadFailed(String),
}

/// One candidate that was tried, for the not-found error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriedPath {
    /// Full path, or a bare file name for [`SearchOrigin::SystemLoader`].
    pub path: PathBuf,
    /// The search root it came from.
    pub origin: SearchOrigin,
    /// Why it was rejected.
    pub outcome: TryOutcome,
}

impl fmt::Display for TriedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]: ", self.path.display(), self.origin)?;
        match &self.outcome {
            TryOutcome::NotFound => f.write_str("not found"),
            TryOutcome::LoadFailed(why) => write!(f, "failed to load: {why}"),
        }
    }
}

/// One line per candidate, except that consecutive "not found" files of one folder and origin
/// share a line: `- /usr/local/cuda/lib64/{libnvrtc.so.13, libnvrtc.so} [system folder]: not found`.
pub(crate) fn render_tried(tried: &[TriedPath]) -> String {
    let mut s = String::new();
    if tried.is_empty() {
        s.push_str("  (no candidate paths: every search root was unavailable)\n");
    }
    let mut i = 0;
    while i < tried.len() {
        let key = group_key(&tried[i]);
        let mut j = i + 1;
        while key.is_some() && j < tried.len() && group_key(&tried[j]) == key {
            j += 1;
        }
        match key {
            Some((dir, origin)) if j - i > 1 => {
                let names: Vec<String> = tried[i..j]
                    .iter()
                    .filter_map(|t| t.path.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect();
                let _ = writeln!(
                    s,
                    "  - {}/{{{}}} [{origin}]: not found",
                    dir.display(),
                    names.join(", ")
                );
            }
            _ => {
                let _ = writeln!(s, "  - {}", tried[i]);
            }
        }
        i = j;
    }
    s
}

/// Entries with the same key are printed on one line: missing files of one folder and origin.
fn group_key(t: &TriedPath) -> Option<(PathBuf, SearchOrigin)> {
    if t.outcome != TryOutcome::NotFound || t.origin == SearchOrigin::SystemLoader {
        return None;
    }
    Some((t.path.parent()?.to_path_buf(), t.origin))
}
