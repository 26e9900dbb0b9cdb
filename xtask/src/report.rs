//! `cargo xtask bench --report`: the benchmark results as documents people
//! can look at. Every side-by-side bench records its medians (through
//! `strata_testkit::bench::record`) in `target/strata-bench/<group>.json`;
//! the report merges them into `docs/benchmarks/results.json` (a newer
//! figure replaces the one for the same group, case and peer, the rest are
//! kept), draws one SVG bar chart per group in `docs/benchmarks/`, and
//! rewrites the tables between the markers in `docs/benchmarks.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};

const BEGIN: &str = "<!-- results: written by `cargo xtask bench --report` -->";
const END: &str = "<!-- end of results -->";

/// One measured median.
#[derive(Clone, Debug)]
struct Figure {
    group: String,
    case: String,
    peer: String,
    seconds: f64,
    measured: String,
}

fn figures(value: &Value, source: &Path) -> anyhow::Result<Vec<Figure>> {
    let list = value
        .as_array()
        .with_context(|| format!("{}: not a list of figures", source.display()))?;
    list.iter()
        .map(|f| {
            let text = |k: &str| {
                f[k].as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("{}: a figure without {k}: {f}", source.display()))
            };
            Ok(Figure {
                group: text("group")?,
                case: text("case")?,
                peer: text("peer")?,
                seconds: f["seconds"]
                    .as_f64()
                    .with_context(|| format!("{}: no seconds in {f}", source.display()))?,
                measured: text("measured")?,
            })
        })
        .collect()
}

fn read(path: &Path) -> anyhow::Result<Vec<Figure>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    figures(
        &serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?,
        path,
    )
}

pub fn run() -> anyhow::Result<()> {
    let ws = crate::workspace();
    let store = ws.join("docs/benchmarks/results.json");
    let mut all: BTreeMap<(String, String, String), Figure> = BTreeMap::new();
    let mut order: Vec<(String, String, String)> = Vec::new();
    let mut add = |f: Figure| {
        let key = (f.group.clone(), f.case.clone(), f.peer.clone());
        if !order.contains(&key) {
            order.push(key.clone());
        }
        all.insert(key, f);
    };
    if store.exists() {
        read(&store)?.into_iter().for_each(&mut add);
    }
    let fresh = ws.join("target/strata-bench");
    let mut new = 0;
    if let Ok(dir) = std::fs::read_dir(&fresh) {
        let mut files: Vec<_> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for f in files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
        {
            for fig in read(f)? {
                new += 1;
                add(fig);
            }
        }
    }
    let figures: Vec<Figure> = order.iter().map(|k| all[k].clone()).collect();
    if figures.is_empty() {
        bail!("no results: run `cargo xtask bench NAME` first");
    }
    let json: Vec<Value> = figures
        .iter()
        .map(|f| {
            json!({"group": f.group, "case": f.case, "peer": f.peer,
                   "seconds": f.seconds, "measured": f.measured})
        })
        .collect();
    std::fs::create_dir_all(store.parent().expect("docs/benchmarks"))?;
    std::fs::write(&store, serde_json::to_string_pretty(&json)? + "\n")?;

    let mut groups: Vec<&str> = Vec::new();
    for f in &figures {
        if !groups.contains(&f.group.as_str()) {
            groups.push(&f.group);
        }
    }
    let mut tables = String::new();
    for g in &groups {
        let mine: Vec<&Figure> = figures.iter().filter(|f| f.group == *g).collect();
        let svg = ws.join(format!("docs/benchmarks/{g}.svg"));
        std::fs::write(&svg, chart(g, &mine))
            .with_context(|| format!("write {}", svg.display()))?;
        tables.push_str(&table(g, &mine));
    }
    let md_path = ws.join("docs/benchmarks.md");
    let md = std::fs::read_to_string(&md_path).context("read docs/benchmarks.md")?;
    let (head, rest) = md
        .split_once(BEGIN)
        .context("docs/benchmarks.md lacks the results marker")?;
    let (_, tail) = rest
        .split_once(END)
        .context("docs/benchmarks.md lacks the end-of-results marker")?;
    std::fs::write(&md_path, format!("{head}{BEGIN}\n{tables}{END}{tail}"))?;
    eprintln!(
        "bench report: {} figures ({new} new) in {} groups: docs/benchmarks.md, docs/benchmarks/*.svg",
        figures.len(),
        groups.len()
    );
    Ok(())
}

/// Cases of a group in first-seen order, each with its figures.
fn cases<'a>(figs: &[&'a Figure]) -> Vec<(String, Vec<&'a Figure>)> {
    let mut out: Vec<(String, Vec<&Figure>)> = Vec::new();
    for f in figs {
        match out.iter_mut().find(|(c, _)| *c == f.case) {
            Some((_, v)) => v.push(f),
            None => out.push((f.case.clone(), vec![f])),
        }
    }
    out
}

/// Strata's figure of a case: the first peer whose name starts with
/// "strata".
fn baseline(figs: &[&Figure]) -> Option<f64> {
    figs.iter()
        .find(|f| f.peer.starts_with("strata"))
        .map(|f| f.seconds)
}

fn seconds(s: f64) -> String {
    if s < 0.01 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn table(group: &str, figs: &[&Figure]) -> String {
    let mut md = format!(
        "\n### {group}\n\n![{group}](benchmarks/{group}.svg)\n\n| case | peer | median | Strata / peer |\n|---|---|---|---|\n"
    );
    for (case, fs) in cases(figs) {
        let base = baseline(&fs);
        for f in fs {
            let ratio = match base {
                Some(b) if !f.peer.starts_with("strata") => format!("{:.2}", b / f.seconds),
                _ => String::new(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {ratio} |",
                cell(&case),
                cell(&f.peer),
                seconds(f.seconds)
            );
        }
    }
    let dates: Vec<&str> = figs.iter().map(|f| f.measured.as_str()).collect();
    let (first, last) = (
        dates.iter().min().copied().unwrap_or(""),
        dates.iter().max().copied().unwrap_or(""),
    );
    let when = if first == last {
        first.to_owned()
    } else {
        format!("{first} to {last}")
    };
    let _ = writeln!(md, "\nMeasured {when}.\n");
    md
}

/// Horizontal bars, one per peer, grouped by case; each case scaled to its
/// slowest peer so cases of different sizes stay readable.
fn chart(group: &str, figs: &[&Figure]) -> String {
    const W: f64 = 760.0;
    const LABEL: f64 = 250.0;
    const BAR: f64 = 18.0;
    let cases = cases(figs);
    let rows: usize = cases.iter().map(|(_, v)| v.len() + 1).sum();
    let height = 40.0 + rows as f64 * (BAR + 6.0) + 10.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{} (median time, shorter is better)</text>\n",
        escape(group)
    );
    let mut y = 40.0;
    for (case, fs) in &cases {
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{:.0}\" font-weight=\"bold\">{}</text>",
            y + BAR * 0.75,
            escape(case)
        );
        y += BAR + 6.0;
        let max = fs.iter().map(|f| f.seconds).fold(0.0, f64::max).max(1e-9);
        let base = baseline(fs);
        for f in fs {
            let strata = f.peer.starts_with("strata");
            let len = (W - LABEL - 130.0) * f.seconds / max;
            let colour = if strata { "#2b6cb0" } else { "#a0aec0" };
            let ratio = match base {
                Some(b) if !strata => format!(" (Strata {:.2}x)", b / f.seconds),
                _ => String::new(),
            };
            let _ = writeln!(
                svg,
                "<text x=\"20\" y=\"{:.0}\">{}</text>\n<rect x=\"{LABEL}\" y=\"{y:.0}\" width=\"{len:.1}\" height=\"{BAR}\" fill=\"{colour}\"/>\n<text x=\"{:.1}\" y=\"{:.0}\">{}{}</text>",
                y + BAR * 0.75,
                escape(&f.peer),
                LABEL + len + 6.0,
                y + BAR * 0.75,
                seconds(f.seconds),
                ratio
            );
            y += BAR + 6.0;
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// A markdown table cell: pipes escaped.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
