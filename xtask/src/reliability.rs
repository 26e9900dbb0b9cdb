//! The reliability half of `cargo xtask report`: the rows the long runs
//! recorded (`strata_testkit::reliability`, in
//! `target/strata-reliability/<table>.json`) merged into
//! `docs/reliability/results.json` (a newer row replaces the one of the
//! same table and key, in its place) and drawn as the tables between the
//! markers of `docs/reliability.md`, each beside the provenance of its
//! rows. A row without full provenance is refused by name; a marked table
//! with no row says it is not recorded yet; a recorded table with no marker
//! is an error (its figures would be quoted nowhere).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::report::{Provenance, cell, provenance_table, rewrite};

/// One recorded row.
struct Row {
    table: String,
    key: String,
    cells: Vec<(String, String)>,
    provenance: Provenance,
    /// As recorded, written back unchanged.
    raw: Value,
}

/// Where `cargo xtask` itself records rows (the suite under load, the fuzz
/// target, the property tests, power cuts), and where the testkit's go
/// when xtask asks them to.
pub fn results_dir() -> PathBuf {
    crate::workspace().join("target/strata-reliability")
}

/// Records row `key` of `table` in [`results_dir`], run on the workspace's
/// file system.
pub fn record(table: &str, key: &str, cells: &[(&str, String)]) {
    crate::record::record_in(&results_dir(), table, key, &crate::workspace(), cells);
}

fn row(v: &Value, source: &Path) -> anyhow::Result<Row> {
    let src = source.display();
    let text = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let (Some(table), Some(key)) = (text("table"), text("key")) else {
        bail!("{src}: a row without a table and key: {v}");
    };
    let refuse = |what: &str| {
        anyhow::anyhow!(
            "{src}: row \"{table} / {key}\" lacks provenance ({what}); every figure must come from a recorded run (cargo xtask stress, under-load), none may be typed in"
        )
    };
    let provenance = Provenance::parse(&v["provenance"], refuse)?;
    let cells = v["cells"]
        .as_array()
        .filter(|c| !c.is_empty())
        .with_context(|| format!("{src}: row \"{table} / {key}\" has no cells"))?
        .iter()
        .map(|c| match (c[0].as_str(), c[1].as_str()) {
            (Some(name), Some(value)) => Ok((name.to_owned(), value.to_owned())),
            _ => bail!("{src}: row \"{table} / {key}\": a cell is not [name, value]: {c}"),
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Row {
        table,
        key,
        cells,
        provenance,
        raw: v.clone(),
    })
}

fn read(path: &Path) -> anyhow::Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    value
        .as_array()
        .with_context(|| format!("{}: not a list of rows", path.display()))?
        .iter()
        .map(|v| row(v, path))
        .collect()
}

/// The rows of every `*.json` in `dir` (none when it does not exist).
fn read_dir(dir: &Path) -> anyhow::Result<Vec<Row>> {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut files: Vec<PathBuf> = listing
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in &files {
        out.extend(read(f)?);
    }
    Ok(out)
}

fn marker(table: &str) -> (String, String) {
    (
        format!("<!-- reliability {table}: written by `cargo xtask report` -->"),
        format!("<!-- end of reliability {table} -->"),
    )
}

/// The tables `docs/reliability.md` marks, in its order.
fn marked(doc: &str) -> Vec<String> {
    doc.match_indices("<!-- reliability ")
        .filter_map(|(at, m)| {
            let rest = &doc[at + m.len()..];
            rest.split_once(':').map(|(t, _)| t.to_owned())
        })
        .collect()
}

fn render(rows: &[&Row]) -> String {
    if rows.is_empty() {
        return "\nNot recorded yet: `cargo xtask stress` (or `under-load`) records it.\n\n"
            .to_owned();
    }
    let mut columns: Vec<&str> = Vec::new();
    for r in rows {
        for (c, _) in &r.cells {
            if !columns.contains(&c.as_str()) {
                columns.push(c);
            }
        }
    }
    let mut md = format!(
        "\n| {} |\n|{}\n",
        columns.join(" | "),
        "---|".repeat(columns.len())
    );
    for r in rows {
        let values: Vec<String> = columns
            .iter()
            .map(|c| {
                r.cells
                    .iter()
                    .find(|(name, _)| name == c)
                    .map_or(String::new(), |(_, v)| cell(v))
            })
            .collect();
        md += &format!("| {} |\n", values.join(" | "));
    }
    md += "\nRecorded by:\n\n";
    md += &provenance_table("row", rows.iter().map(|r| (r.key.as_str(), &r.provenance)));
    md.push('\n');
    md
}

/// Merges what the runs recorded into `docs/reliability/results.json` and
/// redraws the tables of `docs/reliability.md`.
pub fn run() -> anyhow::Result<()> {
    let ws = crate::workspace();
    let store = ws.join("docs/reliability/results.json");
    let mut rows = if store.exists() {
        read(&store)?
    } else {
        Vec::new()
    };
    let fresh = read_dir(&results_dir())?;
    let mut new = 0;
    for r in fresh {
        match rows
            .iter_mut()
            .find(|o| o.table == r.table && o.key == r.key)
        {
            Some(o) if r.provenance.supersedes(&o.provenance) => {
                *o = r;
                new += 1;
            }
            Some(_) => {}
            None => {
                rows.push(r);
                new += 1;
            }
        }
    }
    let raw: Vec<&Value> = rows.iter().map(|r| &r.raw).collect();
    std::fs::create_dir_all(store.parent().expect("docs/reliability"))?;
    std::fs::write(&store, serde_json::to_string_pretty(&raw)? + "\n")?;

    let doc_path = ws.join("docs/reliability.md");
    let doc = std::fs::read_to_string(&doc_path)
        .with_context(|| format!("read {}", doc_path.display()))?;
    let tables = marked(&doc);
    if let Some(r) = rows.iter().find(|r| !tables.contains(&r.table)) {
        let (begin, end) = marker(&r.table);
        bail!(
            "{} has no table \"{}\" for the recorded row \"{}\": add {begin} ... {end}",
            doc_path.display(),
            r.table,
            r.key
        );
    }
    for t in &tables {
        let mine: Vec<&Row> = rows.iter().filter(|r| &r.table == t).collect();
        let (begin, end) = marker(t);
        rewrite(&doc_path, &begin, &end, &render(&mine))?;
    }
    eprintln!(
        "reliability report: {} rows ({new} new) in {} tables: docs/reliability.md",
        rows.len(),
        tables.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn provenance() -> Value {
        json!({"commit": "0123456789abcdef", "dirty": false, "utc": "2026-12-05T12:00:00Z",
            "kernel": "6.1.0", "fs": "ext4 on /dev/vda", "root": true, "cores": 2})
    }

    #[test]
    fn a_row_without_provenance_is_refused_by_name() {
        let mut v = json!({"table": "crash", "key": "content", "cells": [["kills", "200"]],
            "provenance": provenance()});
        assert!(row(&v, Path::new("x.json")).is_ok());
        v["provenance"].as_object_mut().unwrap().remove("kernel");
        let err = row(&v, Path::new("x.json")).err().unwrap().to_string();
        assert!(
            err.contains("crash / content") && err.contains("no kernel"),
            "{err}"
        );
        v["provenance"] = Value::Null;
        let err = row(&v, Path::new("x.json")).err().unwrap().to_string();
        assert!(err.contains("no provenance at all"), "{err}");
    }

    #[test]
    fn rows_make_a_table_with_their_provenance() {
        let a = row(
            &json!({"table": "soak", "key": "overlay", "cells": [["backend", "overlay"], ["rounds", "9"]],
                "provenance": provenance()}),
            Path::new("x.json"),
        )
        .unwrap();
        let b = row(
            &json!({"table": "soak", "key": "native", "cells": [["backend", "native"], ["rounds", "8"], ["extra", "x|y"]],
                "provenance": provenance()}),
            Path::new("x.json"),
        )
        .unwrap();
        let md = render(&[&a, &b]);
        assert!(md.contains("| backend | rounds | extra |"), "{md}");
        assert!(md.contains("| overlay | 9 |  |"), "{md}");
        assert!(md.contains("| native | 8 | x\\|y |"), "{md}");
        assert!(
            md.contains("| overlay | 0123456789ab | 2026-12-05T12:00:00Z | 6.1.0 |"),
            "{md}"
        );
        assert!(render(&[]).contains("Not recorded yet"));
        let doc = "a\n<!-- reliability crash: written by `cargo xtask report` -->\n<!-- end of reliability crash -->\n<!-- reliability soak: x -->";
        assert_eq!(marked(doc), ["crash", "soak"]);
    }
}
