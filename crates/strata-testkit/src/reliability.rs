//! Records of the long reliability runs: where the crash tests' kills
//! landed and what they verified, how many faulty runs the fault sweep
//! made, how long the soak ran and what it held, how many inputs the fuzz
//! target took, how the whole suite fared under load. Each run writes one
//! row with its provenance (`provenance.rs`), and `cargo xtask report`
//! turns the rows into `docs/reliability.md`'s tables: no figure there is
//! typed in.
//!
//! Only a run asked to record does (`STRATA_RELIABILITY_RESULTS` names the
//! directory; `cargo xtask stress` sets it), so the short runs of the
//! ordinary suite never replace a long run's row.
//!
//! std and serde_json only: xtask compiles this same file for the rows it
//! writes itself (the suite under load, the fuzz target, the property
//! tests).

use std::io::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use crate::provenance;

/// Where rows go, when this run records at all.
pub const RESULTS_ENV: &str = "STRATA_RELIABILITY_RESULTS";

/// The build profile of the code that runs this: "debug" or "release".
pub fn build() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// Records row `key` of table `table` when `STRATA_RELIABILITY_RESULTS` is
/// set: `cells` are (column, value) in the table's order, and the run
/// wrote to the file system holding `fs`.
pub fn record(table: &str, key: &str, fs: &Path, cells: &[(&str, String)]) {
    if let Some(dir) = std::env::var_os(RESULTS_ENV) {
        record_in(Path::new(&dir), table, key, fs, cells);
    }
}

/// Records row `key` of `table` in `dir/<table>.json`, replacing the row of
/// the same key. Rows may come from many tests at once (the fault sweep's
/// run in parallel): a lock on the directory keeps each update whole.
pub fn record_in(dir: &Path, table: &str, key: &str, fs: &Path, cells: &[(&str, String)]) {
    let row = json!({
        "table": table,
        "key": key,
        "cells": cells.iter().map(|(c, v)| json!([c, v])).collect::<Vec<_>>(),
        "provenance": provenance::here(fs),
    });
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("make {}: {e}", dir.display()));
    let lock = std::fs::File::create(dir.join(".lock"))
        .unwrap_or_else(|e| panic!("open {}/.lock: {e}", dir.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("lock {}/.lock: {e}", dir.display()));
    let file = dir.join(format!("{table}.json"));
    let mut rows: Vec<Value> = match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{} is not a list of rows: {e}", file.display())),
        Err(_) => Vec::new(),
    };
    rows.retain(|r| r["key"] != key);
    rows.push(row);
    let text = serde_json::to_string_pretty(&rows).expect("rows as JSON") + "\n";
    let partial = dir.join(format!(".{table}.json.partial"));
    let mut out = std::fs::File::create(&partial)
        .unwrap_or_else(|e| panic!("create {}: {e}", partial.display()));
    out.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", partial.display()));
    std::fs::rename(&partial, &file)
        .unwrap_or_else(|e| panic!("rename into {}: {e}", file.display()));
    eprintln!("recorded {table} / {key} in {}", file.display());
}
