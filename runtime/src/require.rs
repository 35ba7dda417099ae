//! The skip-or-fail decision for tests that need NVRTC, shared by every crate's tests.
//!
//! On a machine without NVRTC such tests skip (with a printed reason) so that `cargo test` passes
//! on a bare laptop. In CI, `KILN_REQUIRE_NVRTC=1` turns that skip into a failure, so a missing
//! library can never pass for a success.

use crate::locate::{locate_nvrtc, NvrtcLocation};

/// Environment variable that turns "NVRTC not found, skipped" into a test failure.
pub const REQUIRE_NVRTC_ENV: &str = "KILN_REQUIRE_NVRTC";

/// Whether `KILN_REQUIRE_NVRTC` is set to a true value (`1`, `true`, `yes`, `on`).
pub fn nvrtc_required() -> bool {
    std::env::var(REQUIRE_NVRTC_ENV)
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// For tests that need NVRTC: returns its location when it is available. Otherwise prints why
/// the test is skipped and returns `None` (the test should `return`), or, when
/// `KILN_REQUIRE_NVRTC=1`, panics with the full search report so the test fails.
///
/// ```no_run
/// let Some(_nvrtc) = kiln_runtime::require::nvrtc_or_skip() else { return };
/// ```
#[track_caller]
pub fn nvrtc_or_skip() -> Option<&'static NvrtcLocation> {
    match locate_nvrtc() {
        Ok(loc) => Some(loc),
        Err(err) if nvrtc_required() => {
            panic!("{REQUIRE_NVRTC_ENV}=1 but NVRTC is unavailable: {err}")
        }
        Err(err) => {
            eprintln!(
                "SKIPPED ({}): NVRTC is unavailable (set {REQUIRE_NVRTC_ENV}=1 to make this a failure): {err}",
                std::panic::Location::caller()
            );
            None
        }
    }
}
