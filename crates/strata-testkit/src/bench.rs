//! What the side-by-side benchmarks share: medians, and warm pages before
//! a timed run (these VMs hand freed memory back to the host, and touching
//! it again is slow).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The median of ratios.
pub fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Touches and frees about 2 GiB under `dir` so a timed run gets warm
/// pages.
pub fn warm(dir: &Path) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 2G /dev/zero > {0}/warm && rm {0}/warm",
            dir.display()
        ))
        .status()
        .expect("run sh")
        .success();
    assert!(ok, "warming pages in {}", dir.display());
}
