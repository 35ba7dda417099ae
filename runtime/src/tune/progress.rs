//! The search's progress on stderr: an `indicatif` bar with the `progress-bar` feature (on by
//! default), otherwise one plain line per finished stage, so a library user who turns the
//! feature off still sees that a long search is moving without pulling in a terminal crate.

/// Progress of one search: `len` steps (compiles, then timings).
#[derive(Clone)]
pub(super) struct Progress {
    #[cfg(feature = "progress-bar")]
    bar: indicatif::ProgressBar,
    #[cfg(not(feature = "progress-bar"))]
    plain: std::sync::Arc<Plain>,
}

#[cfg(not(feature = "progress-bar"))]
struct Plain {
    prefix: String,
    len: u64,
    done: std::sync::atomic::AtomicU64,
}

impl Progress {
    /// Starts showing a search of `len` steps, labelled `prefix`.
    pub(super) fn new(len: u64, prefix: String) -> Progress {
        #[cfg(feature = "progress-bar")]
        {
            let bar = indicatif::ProgressBar::new(len);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_prefix(prefix);
            Progress { bar }
        }
        #[cfg(not(feature = "progress-bar"))]
        {
            eprintln!("{prefix}: {len} steps");
            Progress {
                plain: std::sync::Arc::new(Plain {
                    prefix,
                    len,
                    done: std::sync::atomic::AtomicU64::new(0),
                }),
            }
        }
    }

    /// One step done; `message` (the best so far) is shown where there is room for it.
    pub(super) fn step(&self, message: Option<String>) {
        #[cfg(feature = "progress-bar")]
        {
            self.bar.inc(1);
            if let Some(m) = message {
                self.bar.set_message(m);
            }
        }
        #[cfg(not(feature = "progress-bar"))]
        {
            let p = &self.plain;
            let done = p.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            // a line at each half of the search and at its end, not one per candidate
            if done == p.len || done * 2 == p.len {
                match message {
                    Some(m) => eprintln!("{}: {done}/{} {m}", p.prefix, p.len),
                    None => eprintln!("{}: {done}/{}", p.prefix, p.len),
                }
            }
        }
    }

    /// The search is over.
    pub(super) fn finish(&self) {
        #[cfg(feature = "progress-bar")]
        self.bar.finish_and_clear();
    }
}
