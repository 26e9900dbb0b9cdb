//! Named, counted skips: a case that cannot run here (not root, a tool
//! missing) says so by name instead of passing without running.
//!
//! A skip prints `SKIPPED <test>: <reason>` on stderr and appends the same
//! line to the file [`SKIP_LOG`] names, when it is set (`cargo xtask test`
//! sets it, then lists and counts the lines). With [`REQUIRE_PRIVILEGED`]
//! set to `1` a skip is a failure, so a privileged case can never pass by
//! not running. A backend crate outside this workspace gets the same
//! contract: its conformance cases report their skips the same way.

use std::io::Write;
use std::path::PathBuf;

/// Environment variable that turns skips into failures (when `1`).
pub const REQUIRE_PRIVILEGED: &str = "STRATA_REQUIRE_PRIVILEGED";

/// Environment variable naming the file skips are appended to.
pub const SKIP_LOG: &str = "STRATA_SKIP_LOG";

/// True when the test may go on as root. Otherwise records the skip of
/// `test` (or panics when skips are forbidden) and returns false.
pub fn require_root(test: &str) -> bool {
    if strata_sys::effective_uid() == 0 {
        return true;
    }
    skip(test, "needs root")
}

/// Records that `test` did not run because of `reason`; panics when
/// [`REQUIRE_PRIVILEGED`] is set to `1`. Always returns false.
pub fn skip(test: &str, reason: &str) -> bool {
    let line = format!("SKIPPED {test}: {reason}");
    assert!(
        std::env::var_os(REQUIRE_PRIVILEGED).is_none_or(|v| v != "1"),
        "{line}, and {REQUIRE_PRIVILEGED}=1 forbids skipping"
    );
    eprintln!("{line}");
    if let Some(log) = std::env::var_os(SKIP_LOG).map(PathBuf::from) {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            eprintln!("could not record the skip in {}: {e}", log.display());
        }
    }
    false
}
