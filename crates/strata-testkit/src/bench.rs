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

/// Records the medians of one case of a side-by-side benchmark, for
/// `cargo xtask bench --report`: `(peer, median)` pairs, Strata's first
/// (its peer name starts with `strata`), appended to
/// `$STRATA_BENCH_RESULTS/<group>.json` (default `target/strata-bench/`).
pub fn record(group: &str, case: &str, medians: &[(&str, Duration)]) {
    let dir = std::env::var_os("STRATA_BENCH_RESULTS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/strata-bench"),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("make the bench results directory");
    let file = dir.join(format!("{group}.json"));
    let mut list: Vec<serde_json::Value> = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let today = today();
    for (peer, median) in medians {
        list.retain(|f| !(f["case"] == case && f["peer"] == *peer));
        list.push(serde_json::json!({
            "group": group,
            "case": case,
            "peer": peer,
            "seconds": median.as_secs_f64(),
            "measured": today,
        }));
    }
    let text = serde_json::to_string_pretty(&list).expect("figures as JSON");
    std::fs::write(&file, text).expect("write bench results");
}

/// Today's date (UTC) as YYYY-MM-DD, from `date`.
fn today() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .expect("run date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
