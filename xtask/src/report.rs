//! `cargo xtask bench --report`: the benchmark results as documents people
//! can look at. Every side-by-side bench records its medians with their
//! provenance (through `strata_testkit::bench::record`) in
//! `target/strata-bench/<group>.json`; the report merges them into
//! `docs/benchmarks/results.json` (a newer figure replaces the one for the
//! same group, case and peer, the rest are kept), draws one SVG bar chart
//! per group in `docs/benchmarks/` (and removes the charts of groups with
//! no figure), rewrites the tables between the markers in
//! `docs/benchmarks.md`, each group's beside the provenance of its
//! figures, and the figures README.md quotes between its markers.
//!
//! It refuses, naming it, any figure without full provenance: the commit
//! and whether the tree was dirty, the time (UTC), the kernel, the file
//! system written to, root or not, cores, and the tool's version. A group
//! with no figure is simply absent; a figure README quotes that is not
//! recorded says so instead of a number.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

const BEGIN: &str = "<!-- results: written by `cargo xtask bench --report` -->";
const END: &str = "<!-- end of results -->";
const README_BEGIN: &str =
    "<!-- figures: written by `cargo xtask bench --report` from docs/benchmarks/results.json -->";
const README_END: &str = "<!-- end of figures -->";

/// Where a figure comes from.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Provenance {
    commit: String,
    dirty: bool,
    utc: String,
    kernel: String,
    fs: String,
    root: bool,
    cores: u64,
}

/// What a peer's entry says of a case.
#[derive(Clone, Debug)]
enum Outcome {
    Measured {
        runs: u64,
        returned: f64,
        durable: Option<f64>,
        peak_kib: Option<u64>,
    },
    /// Left out of the case, and why.
    Excluded(String),
}

/// One recorded entry: a figure, or a peer left out.
#[derive(Clone, Debug)]
struct Entry {
    group: String,
    case: String,
    peer: String,
    tool: String,
    outcome: Outcome,
    provenance: Provenance,
    /// As recorded, written back unchanged.
    raw: Value,
}

impl Provenance {
    /// The provenance `p` as recorded, or `refuse(what is missing)`.
    pub(crate) fn parse(p: &Value, refuse: impl Fn(&str) -> anyhow::Error) -> anyhow::Result<Self> {
        if !p.is_object() {
            return Err(refuse("no provenance at all"));
        }
        let field = |k: &str| {
            p[k].as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| refuse(&format!("no {k}")))
        };
        let flag = |k: &str| p[k].as_bool().ok_or_else(|| refuse(&format!("no {k}")));
        Ok(Provenance {
            commit: field("commit")?,
            dirty: flag("dirty")?,
            utc: field("utc")?,
            kernel: field("kernel")?,
            fs: field("fs")?,
            root: flag("root")?,
            cores: p["cores"]
                .as_u64()
                .filter(|&c| c > 0)
                .ok_or_else(|| refuse("no cores"))?,
        })
    }
}

/// A table of where the rows came from: one line per distinct (name,
/// provenance), in first-seen order, `what` heading the name column.
pub(crate) fn provenance_table<'a>(
    what: &str,
    rows: impl IntoIterator<Item = (&'a str, &'a Provenance)>,
) -> String {
    let mut md = format!(
        "| {what} | commit | recorded (UTC) | kernel | file system written | as root | cores |\n|---|---|---|---|---|---|---|\n"
    );
    let mut seen: Vec<(&str, &Provenance)> = Vec::new();
    for row in rows {
        if !seen.contains(&row) {
            seen.push(row);
        }
    }
    for (name, p) in seen {
        let _ = writeln!(
            md,
            "| {} | {}{} | {} | {} | {} | {} | {} |",
            cell(name),
            p.commit.get(..12).unwrap_or(&p.commit),
            if p.dirty {
                " (uncommitted changes)"
            } else {
                ""
            },
            p.utc,
            cell(&p.kernel),
            cell(&p.fs),
            if p.root { "yes" } else { "no" },
            p.cores
        );
    }
    md
}

impl Entry {
    /// The time compared: durable where the case writes, else returned.
    fn compared(&self) -> Option<f64> {
        match self.outcome {
            Outcome::Measured {
                returned, durable, ..
            } => Some(durable.unwrap_or(returned)),
            Outcome::Excluded(_) => None,
        }
    }

    fn is_strata(&self) -> bool {
        self.peer.starts_with("strata")
    }
}

/// Parses one entry of `source`, refusing it, by name, unless it has full
/// provenance.
fn entry(f: &Value, source: &Path) -> anyhow::Result<Entry> {
    let src = source.display();
    let text = |v: &Value, k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let name = match (text(f, "group"), text(f, "case"), text(f, "peer")) {
        (Some(g), Some(c), Some(p)) => format!("{g} / {c} / {p}"),
        _ => bail!("{src}: a figure without a group, case and peer: {f}"),
    };
    let refuse = |what: &str| {
        anyhow::anyhow!(
            "{src}: figure \"{name}\" lacks provenance ({what}); every figure must come from a recorded run (cargo xtask bench NAME), none may be typed in"
        )
    };
    let provenance = Provenance::parse(&f["provenance"], refuse)?;
    let tool = text(f, "tool").ok_or_else(|| refuse("no tool version"))?;
    let outcome = match (text(f, "excluded"), f["returned"].as_f64()) {
        (Some(why), _) => Outcome::Excluded(why),
        (None, Some(returned)) => Outcome::Measured {
            runs: f["runs"]
                .as_u64()
                .with_context(|| format!("{src}: figure \"{name}\" has no runs"))?,
            returned,
            durable: f["durable"].as_f64(),
            peak_kib: f["peak_kib"].as_u64(),
        },
        (None, None) => bail!("{src}: figure \"{name}\" has no time"),
    };
    Ok(Entry {
        group: text(f, "group").unwrap_or_default(),
        case: text(f, "case").unwrap_or_default(),
        peer: text(f, "peer").unwrap_or_default(),
        tool,
        outcome,
        provenance,
        raw: f.clone(),
    })
}

/// The entries of the JSON `text` read from `source`.
fn parse(text: &str, source: &Path) -> anyhow::Result<Vec<Entry>> {
    let value: Value =
        serde_json::from_str(text).with_context(|| format!("parse {}", source.display()))?;
    value
        .as_array()
        .with_context(|| format!("{}: not a list of figures", source.display()))?
        .iter()
        .map(|f| entry(f, source))
        .collect()
}

fn read(path: &Path) -> anyhow::Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    parse(&text, path)
}

/// The entries of every `*.json` in `dir` (none when it does not exist).
fn read_dir(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut files: Vec<_> = listing.filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        out.extend(read(f)?);
    }
    Ok(out)
}

/// Checks that everything recorded in `dir` has full provenance (what a
/// quick run recorded in its scratch directory); the number of entries.
pub fn check(dir: &Path) -> anyhow::Result<usize> {
    let entries = read_dir(dir)?;
    if entries.is_empty() {
        bail!("nothing was recorded in {}", dir.display());
    }
    Ok(entries.len())
}

impl Provenance {
    /// True when a record made at `self` replaces one made at `kept`: it
    /// is newer (a stale record left in a build directory never undoes a
    /// newer one, and the same record read again changes nothing).
    pub(crate) fn supersedes(&self, kept: &Provenance) -> bool {
        // RFC 3339 UTC times order as strings.
        self.utc > kept.utc
    }
}

/// `old` then `new`, an entry replacing one of the same group, case and
/// peer in its place when it is newer; the merged entries and how many of
/// `new` were taken.
fn merge(old: Vec<Entry>, new: Vec<Entry>) -> (Vec<Entry>, usize) {
    let mut out: Vec<Entry> = old;
    let mut taken = 0;
    for e in new {
        match out
            .iter_mut()
            .find(|o| o.group == e.group && o.case == e.case && o.peer == e.peer)
        {
            Some(o) if e.provenance.supersedes(&o.provenance) => {
                *o = e;
                taken += 1;
            }
            Some(_) => {}
            None => {
                out.push(e);
                taken += 1;
            }
        }
    }
    (out, taken)
}

pub fn run() -> anyhow::Result<()> {
    let ws = crate::workspace();
    let store = ws.join("docs/benchmarks/results.json");
    let old = if store.exists() {
        read(&store)?
    } else {
        Vec::new()
    };
    let fresh = read_dir(&ws.join("target/strata-bench"))?;
    let (entries, new) = merge(old, fresh);
    let raw: Vec<&Value> = entries.iter().map(|e| &e.raw).collect();
    std::fs::create_dir_all(store.parent().expect("docs/benchmarks"))?;
    std::fs::write(&store, serde_json::to_string_pretty(&raw)? + "\n")?;

    let groups = groups(&entries);
    let charts = ws.join("docs/benchmarks");
    for (g, mine) in &groups {
        let svg = charts.join(format!("{g}.svg"));
        std::fs::write(&svg, chart(g, mine)).with_context(|| format!("write {}", svg.display()))?;
    }
    // A chart of a group with no figure would show figures no record holds.
    for f in std::fs::read_dir(&charts)?.filter_map(Result::ok) {
        let path = f.path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if path.extension().is_some_and(|e| e == "svg") && !groups.iter().any(|(g, _)| g == stem) {
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    rewrite(&ws.join("docs/benchmarks.md"), BEGIN, END, &tables(&groups))?;
    rewrite(
        &ws.join("README.md"),
        README_BEGIN,
        README_END,
        &readme(&entries),
    )?;
    eprintln!(
        "bench report: {} entries ({new} new) in {} groups: docs/benchmarks.md, docs/benchmarks/*.svg, README.md",
        entries.len(),
        groups.len()
    );
    Ok(())
}

/// Replaces what lies between `begin` and `end` in the file at `path`.
pub(crate) fn rewrite(path: &Path, begin: &str, end: &str, with: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let (head, rest) = text
        .split_once(begin)
        .with_context(|| format!("{} lacks the marker {begin}", path.display()))?;
    let (_, tail) = rest
        .split_once(end)
        .with_context(|| format!("{} lacks the marker {end}", path.display()))?;
    std::fs::write(path, format!("{head}{begin}\n{with}{end}{tail}"))
        .with_context(|| format!("write {}", path.display()))
}

/// The entries by group, groups in first-seen order.
fn groups(entries: &[Entry]) -> Vec<(String, Vec<&Entry>)> {
    let mut out: Vec<(String, Vec<&Entry>)> = Vec::new();
    for e in entries {
        match out.iter_mut().find(|(g, _)| *g == e.group) {
            Some((_, v)) => v.push(e),
            None => out.push((e.group.clone(), vec![e])),
        }
    }
    out
}

/// Cases of a group in first-seen order, each with its entries.
fn cases<'a>(entries: &[&'a Entry]) -> Vec<(String, Vec<&'a Entry>)> {
    let mut out: Vec<(String, Vec<&Entry>)> = Vec::new();
    for e in entries {
        match out.iter_mut().find(|(c, _)| *c == e.case) {
            Some((_, v)) => v.push(e),
            None => out.push((e.case.clone(), vec![e])),
        }
    }
    out
}

/// Strata's figure of a case: the first measured peer whose name starts
/// with "strata".
fn baseline(entries: &[&Entry]) -> Option<f64> {
    entries
        .iter()
        .find(|e| e.is_strata())
        .and_then(|e| e.compared())
}

/// A ratio with two decimals, or two significant digits when it is
/// smaller than 0.1 (a thousandfold speed-up must not read 0.00).
fn ratio(r: f64) -> String {
    if r >= 0.1 || r <= 0.0 || !r.is_finite() {
        return format!("{r:.2}");
    }
    let digits = (1.0 - r.log10().floor()) as usize;
    format!("{r:.digits$}")
}

fn seconds(s: f64) -> String {
    if s < 0.01 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// docs/benchmarks.md's results: per group a chart, the table, the peers
/// left out, the tools' versions and the provenance of every case.
fn tables(groups: &[(String, Vec<&Entry>)]) -> String {
    if groups.is_empty() {
        return "\nNo figure has been recorded yet: run `cargo xtask bench NAME`, then `cargo xtask bench --report`.\n\n".to_owned();
    }
    let mut md = String::new();
    for (g, entries) in groups {
        md += &table(g, entries);
    }
    md
}

fn table(group: &str, entries: &[&Entry]) -> String {
    let mut md = format!(
        "\n### {group}\n\n![{group}](benchmarks/{group}.svg)\n\n| case | peer | runs | returned | durable | peak memory | Strata / peer |\n|---|---|---|---|---|---|---|\n"
    );
    let mut left_out = String::new();
    for (case, es) in cases(entries) {
        let base = baseline(&es);
        for e in es {
            match &e.outcome {
                Outcome::Measured {
                    runs,
                    returned,
                    durable,
                    peak_kib,
                } => {
                    let ratio = match (base, e.compared()) {
                        (Some(b), Some(t)) if !e.is_strata() => ratio(b / t),
                        _ => String::new(),
                    };
                    // A figure timed inside the bench process has no
                    // process of its own; another without a durable time or
                    // peak memory had them left unmeasured.
                    let absent = if e.tool.contains("in process") {
                        "(in process)"
                    } else {
                        "(not measured)"
                    };
                    let _ = writeln!(
                        md,
                        "| {} | {} | {runs} | {} | {} | {} | {ratio} |",
                        cell(&case),
                        cell(&match e.raw["detail"].as_str() {
                            Some(detail) => format!("{} ({detail})", e.peer),
                            None => e.peer.clone(),
                        }),
                        seconds(*returned),
                        durable.map_or(absent.to_owned(), seconds),
                        peak_kib.map_or(absent.to_owned(), |k| format!("{} MiB", k.div_ceil(1024))),
                    );
                }
                Outcome::Excluded(why) => {
                    let _ = writeln!(left_out, "- {} in {case}: {why}", e.peer);
                }
            }
        }
    }
    md += "\nStrata / peer: Strata's median over the peer's, durable times where the case writes (below 1: Strata is faster).\n";
    if !left_out.is_empty() {
        md += "\nNot counted as peers (their result differs from Strata's):\n\n";
        md += &left_out;
    }
    let mut tools: Vec<(&str, &str)> = Vec::new();
    for e in entries {
        if !tools.contains(&(e.peer.as_str(), e.tool.as_str())) {
            tools.push((&e.peer, &e.tool));
        }
    }
    md += "\nVersions:\n\n";
    for (peer, tool) in tools {
        let _ = writeln!(md, "- {peer}: {tool}");
    }
    md += "\nProvenance:\n\n";
    md += &provenance_table(
        "case",
        entries.iter().map(|e| (e.case.as_str(), &e.provenance)),
    );
    md.push('\n');
    md
}

/// What README.md quotes: (what, group, case, Strata's peer, the peer it
/// is compared with).
const QUOTED: &[(&str, &str, &str, &str, &str)] = &[
    (
        "import of debian-python (gzip) from its OCI archive",
        "import",
        "debian-python from its OCI archive",
        "strata image import (layers in parallel)",
        "ctr images import (containerd)",
    ),
    (
        "import of debian-python (zstd) from its OCI archive",
        "import",
        "debian-python-zstd from its OCI archive",
        "strata image import (layers in parallel)",
        "ctr images import (containerd)",
    ),
    (
        "import of debian-python (gzip) from its OCI archive",
        "import",
        "debian-python from its OCI archive",
        "strata image import (layers in parallel)",
        "skopeo copy to containers-storage (podman, buildah)",
    ),
    (
        "pull of debian-python (gzip) from a registry on 127.0.0.1",
        "pull",
        "debian-python from a registry on 127.0.0.1",
        "strata image pull",
        "ctr images pull (containerd)",
    ),
    (
        "pull of debian-python (zstd) from a registry on 127.0.0.1",
        "pull",
        "debian-python-zstd from a registry on 127.0.0.1",
        "strata image pull",
        "ctr images pull (containerd)",
    ),
    (
        "containerd importing debian-python (gzip) into `strata serve`",
        "containerd",
        "ctr images import debian-python",
        "strata serve (proxy snapshotter)",
        "overlayfs snapshotter",
    ),
    (
        "containerd importing debian-python (zstd) into `strata serve`",
        "containerd",
        "ctr images import debian-python-zstd",
        "strata serve (proxy snapshotter)",
        "overlayfs snapshotter",
    ),
    (
        "applying debian-python's gzip layers onto a directory",
        "apply",
        "debian-python",
        "strata layer apply",
        "umoci unpack",
    ),
    (
        "a layer of a one-file change over 100 directories of 1,000 files, through the overlay upper directory",
        "diff",
        "a one-file change over 100 directories of 1000 files",
        "strata, overlay upper directory",
        "double walk (containerd's method)",
    ),
];

/// README.md's figures: one row per quoted comparison, "not recorded yet"
/// where the record lacks a figure.
fn readme(entries: &[Entry]) -> String {
    let find = |group: &str, case: &str, peer: &str| {
        entries.iter().find(|e| {
            e.group == group && e.case == case && e.peer == peer && e.compared().is_some()
        })
    };
    let shown = |e: Option<&Entry>| match e.map(|e| &e.outcome) {
        Some(Outcome::Measured {
            returned,
            durable: Some(d),
            ..
        }) => format!("{} ({} durable)", seconds(*returned), seconds(*d)),
        Some(Outcome::Measured { returned, .. }) => seconds(*returned),
        _ => "not recorded yet".to_owned(),
    };
    let mut md = String::from(
        "\nIn short: Strata's median time against its peer's, from the recorded runs; the time in brackets adds a `sync -f` of the file system written (the durable time), which the ratio compares where there is one (below 1: Strata is faster). Each figure's commit, kernel, file system and tool versions are in `docs/benchmarks.md`.\n\n| comparison | peer | Strata | peer's | Strata / peer |\n|---|---|---|---|---|\n",
    );
    for (what, group, case, ours, theirs) in QUOTED {
        let (a, b) = (find(group, case, ours), find(group, case, theirs));
        let ratio = match (a.and_then(Entry::compared), b.and_then(Entry::compared)) {
            (Some(x), Some(y)) => ratio(x / y),
            _ => "not recorded yet".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {ratio} |",
            cell(what),
            cell(theirs),
            shown(a),
            shown(b)
        );
    }
    md.push('\n');
    md
}

/// Horizontal bars, one per measured peer, grouped by case, each case
/// scaled to its slowest peer: a pale bar to the durable time, a strong one
/// to the returned time.
fn chart(group: &str, entries: &[&Entry]) -> String {
    const W: f64 = 980.0;
    const LABEL: f64 = 360.0;
    const BAR: f64 = 18.0;
    let cases = cases(entries);
    let rows: usize = cases.iter().map(|(_, v)| v.len() + 1).sum();
    let height = 40.0 + rows as f64 * (BAR + 6.0) + 10.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{} (median; strong: returned, pale: durable; shorter is better)</text>\n",
        escape(group)
    );
    let mut y = 40.0;
    for (case, es) in &cases {
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{:.0}\" font-weight=\"bold\">{}</text>",
            y + BAR * 0.75,
            escape(case)
        );
        y += BAR + 6.0;
        let max = es
            .iter()
            .filter_map(|e| e.compared())
            .fold(0.0, f64::max)
            .max(1e-9);
        let base = baseline(es);
        for e in es {
            let Outcome::Measured {
                returned, durable, ..
            } = e.outcome
            else {
                continue;
            };
            let scale = (W - LABEL - 230.0) / max;
            let (strong, pale) = if e.is_strata() {
                ("#2b6cb0", "#bee3f8")
            } else {
                ("#4a5568", "#e2e8f0")
            };
            let total = durable.unwrap_or(returned);
            let ratio = match base {
                Some(b) if !e.is_strata() => format!(" (Strata {:.2}x)", b / total),
                _ => String::new(),
            };
            let text = match durable {
                Some(d) => format!("{} / {}", seconds(returned), seconds(d)),
                None => seconds(returned),
            };
            let _ = writeln!(
                svg,
                "<text x=\"20\" y=\"{:.0}\">{}</text>\n<rect x=\"{LABEL}\" y=\"{y:.0}\" width=\"{:.1}\" height=\"{BAR}\" fill=\"{pale}\"/>\n<rect x=\"{LABEL}\" y=\"{y:.0}\" width=\"{:.1}\" height=\"{BAR}\" fill=\"{strong}\"/>\n<text x=\"{:.1}\" y=\"{:.0}\">{}{}</text>",
                y + BAR * 0.75,
                escape(&e.peer),
                total * scale,
                returned * scale,
                LABEL + total * scale + 6.0,
                y + BAR * 0.75,
                text,
                ratio
            );
            y += BAR + 6.0;
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// A markdown table cell: pipes escaped.
pub(crate) fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(peer: &str, provenance: Value) -> Value {
        serde_json::json!({
            "group": "import", "case": "debian-python from its OCI archive", "peer": peer,
            "tool": "some 1.0", "runs": 3, "returned": 1.5, "durable": 2.0, "peak_kib": 2048,
            "provenance": provenance,
        })
    }

    fn full() -> Value {
        serde_json::json!({
            "commit": "5e4d17b0c0ffee", "dirty": false, "utc": "2026-01-02T03:04:05Z",
            "kernel": "6.1.0-30-amd64", "fs": "ext4 on /dev/loop0", "root": true, "cores": 2,
        })
    }

    /// A record left in the build directory from an older run never
    /// replaces a newer one; a newer one does, and a new case is added.
    #[test]
    fn older_records_never_replace_newer_ones() {
        let at = |utc: &str, returned: f64, peer: &str| {
            let mut p = full();
            p["utc"] = utc.into();
            let mut f = figure(peer, p);
            f["returned"] = returned.into();
            f
        };
        let parse_one = |v: Value| {
            parse(&serde_json::to_string(&[v]).unwrap(), Path::new("t.json"))
                .unwrap()
                .remove(0)
        };
        let kept = vec![parse_one(at("2026-12-05T15:00:00Z", 1.0, "strata"))];
        let stale = vec![
            parse_one(at("2026-12-05T12:00:00Z", 9.0, "strata")),
            parse_one(at("2026-12-05T12:00:00Z", 3.0, "peer")),
        ];
        let (merged, taken) = merge(kept.clone(), stale);
        assert_eq!(taken, 1, "only the new case");
        assert_eq!(merged[0].raw["returned"], 1.0);
        let (merged, taken) = merge(
            kept,
            vec![parse_one(at("2026-12-05T16:00:00Z", 2.0, "strata"))],
        );
        assert_eq!(taken, 1);
        assert_eq!(merged[0].raw["returned"], 2.0);
    }

    #[test]
    fn small_ratios_keep_two_significant_digits() {
        assert_eq!(ratio(0.33), "0.33");
        assert_eq!(ratio(1.57), "1.57");
        assert_eq!(ratio(0.0035), "0.0035");
        assert_eq!(ratio(0.042), "0.042");
    }

    #[test]
    fn a_figure_without_provenance_is_refused_by_name() {
        let source = Path::new("results.json");
        let typed_in = serde_json::json!([{
            "group": "ingest", "case": "a 1 GiB file on tmpfs", "peer": "sha256sum + cp",
            "seconds": 3.44, "measured": "2026-11",
        }]);
        let err = parse(&typed_in.to_string(), source)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"ingest / a 1 GiB file on tmpfs / sha256sum + cp\" lacks provenance"),
            "{err}"
        );
        // Each field counts.
        for key in ["commit", "dirty", "utc", "kernel", "fs", "root", "cores"] {
            let mut p = full();
            p.as_object_mut().unwrap().remove(key);
            let list = Value::Array(vec![figure("ctr images import (containerd)", p)]);
            let err = parse(&list.to_string(), source).unwrap_err().to_string();
            assert!(err.contains(&format!("(no {key})")), "{key}: {err}");
        }
        let mut no_tool = figure("strata image pull", full());
        no_tool.as_object_mut().unwrap().remove("tool");
        let err = parse(&Value::Array(vec![no_tool]).to_string(), source)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no tool version"), "{err}");
    }

    #[test]
    fn recorded_figures_make_tables_and_readme_rows() {
        let list = Value::Array(vec![
            figure("strata image import (layers in parallel)", full()),
            figure("ctr images import (containerd)", full()),
        ]);
        let entries = parse(&list.to_string(), Path::new("x.json")).unwrap();
        let md = tables(&groups(&entries));
        assert!(md.contains("| 2.00 s | 2 MiB | 1.00 |"), "{md}");
        assert!(md.contains("| 5e4d17b0c0ff | 2026-01-02T03:04:05Z | 6.1.0-30-amd64 | ext4 on /dev/loop0 | yes | 2 |"), "{md}");
        let quoted = readme(&entries);
        assert!(quoted.contains("| ctr images import (containerd) | 1.50 s (2.00 s durable) | 1.50 s (2.00 s durable) | 1.00 |"), "{quoted}");
        assert!(quoted.contains("not recorded yet"), "{quoted}");
        // Nothing recorded is no failure.
        assert!(tables(&[]).contains("No figure has been recorded yet"));
        assert!(!readme(&[]).contains(" s |"));
    }
}
