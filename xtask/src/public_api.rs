//! `cargo xtask public-api [--check]`: the public API of the library crates
//! others build on, one item a line, checked in under `api/<crate>.txt`.
//! A changed public signature, a removed item or a new enum variant shows
//! up as a diff in review, and CI (`--check`) fails while a listing is
//! stale.
//!
//! The source of truth is rustdoc's JSON output, built with the nightly
//! toolchain (the one the fuzz target uses) into `target/public-api`. The
//! JSON is read with serde_json generically rather than through the
//! `rustdoc-types` crate, whose version would have to follow the nightly's
//! `format_version`: a field this renderer needs and does not find is an
//! error naming it and the format version; a type shape it does not know
//! renders as `_`.
//!
//! Every public item reachable from the crate root is listed (modules
//! walked from the root, `pub use` re-exports followed, only `public`
//! visibility), under the public path it is reached by: functions with
//! their signatures, structs with their public fields, enums with their
//! variants, traits with their methods (provided ones marked), associated
//! types and constants, the inherent methods of public types, and the trait
//! impls of public types as `impl Trait for Type` lines. Impls of auto
//! traits (`Send`, `Sync`, ...) and blanket impls from other crates
//! (`From<T> for T`, `Any`, ...) are left out as noise. Types in signatures
//! are written with their full paths (a local type by its public path).
//! Lines are sorted and deduplicated, so the output does not depend on the
//! order rustdoc emits items in.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

/// The crates whose API is listed: the cache library, the snapshot layer
/// (the `Backend` trait and `Snapshotter`), the core types both use, and
/// the daemon library.
pub const CRATES: &[&str] = &[
    "strata-cache",
    "strata-core",
    "strata-daemon",
    "strata-snapshot",
];

/// Where the listings live, relative to the workspace root.
pub const DIR: &str = "api";

pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let check = match args {
        [] => false,
        ["--check"] => true,
        _ => bail!("usage: cargo xtask public-api [--check]"),
    };
    let found = Command::new("cargo")
        .args(["+nightly", "--version"])
        .output();
    if !found.is_ok_and(|o| o.status.success()) {
        bail!("rustdoc's JSON needs the nightly toolchain: rustup toolchain install nightly");
    }
    let started = std::time::Instant::now();
    let dir = crate::workspace().join(DIR);
    let mut stale = Vec::new();
    for (krate, json) in CRATES.iter().zip(rustdoc_json()?) {
        let text =
            std::fs::read_to_string(&json).with_context(|| format!("read {}", json.display()))?;
        let doc: Value =
            serde_json::from_str(&text).with_context(|| format!("parse {}", json.display()))?;
        let lines = render(&doc).with_context(|| format!("list the public API of {krate}"))?;
        let fresh = listing(krate, &lines);
        let path = dir.join(format!("{krate}.txt"));
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == fresh {
            eprintln!("public-api: {krate}: {} lines, current", lines.len());
            continue;
        }
        stale.push(format!("{DIR}/{krate}.txt"));
        if check {
            print!("{}", diff(&format!("{DIR}/{krate}.txt"), &current, &fresh));
        } else {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(&path, &fresh).with_context(|| format!("write {}", path.display()))?;
            eprintln!("public-api: {krate}: {} lines, rewritten", lines.len());
        }
    }
    let took = started.elapsed().as_secs_f32();
    if check && !stale.is_empty() {
        bail!(
            "the public API differs from the checked-in listing ({}): if the change is deliberate, run `cargo xtask public-api` and commit the result",
            stale.join(", ")
        );
    }
    eprintln!("public-api: {} crates in {took:.1} s", CRATES.len());
    Ok(())
}

/// Builds the rustdoc JSON of every crate in [`CRATES`] (all features, so
/// the whole surface is listed) with the nightly toolchain, in its own
/// target directory so the stable builds' artefacts stay untouched;
/// returns the JSON files' paths in [`CRATES`]' order.
///
/// One `cargo doc` for the four, not one `cargo rustdoc` each: their
/// dependencies are checked once, in one feature set, where four
/// invocations each checked them again in their own. `--all-features` of several packages turns on
/// every feature of each, so each crate's surface is what it was alone.
fn rustdoc_json() -> anyhow::Result<Vec<PathBuf>> {
    let target = crate::target_dir().join("public-api");
    let jsons: Vec<PathBuf> = CRATES
        .iter()
        .map(|krate| {
            target
                .join("doc")
                .join(format!("{}.json", krate.replace('-', "_")))
        })
        .collect();
    // A listing read from a JSON file an earlier run left would hide a
    // crate this run failed to document.
    for json in &jsons {
        if json.exists() {
            std::fs::remove_file(json).with_context(|| format!("remove {}", json.display()))?;
        }
    }
    // The nightly is called the way the fuzz target calls it; it is the
    // only toolchain whose rustdoc writes JSON. `--no-deps` documents the
    // listed crates alone, so the JSON flags reach only their rustdoc.
    let mut cmd = Command::new("cargo");
    cmd.args([
        "+nightly",
        "doc",
        "-q",
        "--no-deps",
        "--lib",
        "--all-features",
    ]);
    for krate in CRATES {
        cmd.args(["-p", krate]);
    }
    cmd.arg("--target-dir")
        .arg(&target)
        // Flags meant for the stable rustdoc (`api-docs`) are replaced.
        .env("RUSTDOCFLAGS", "-Z unstable-options --output-format json");
    crate::run(&mut cmd)?;
    if let Some(missing) = jsons.iter().find(|j| !j.exists()) {
        bail!("rustdoc wrote no {}", missing.display());
    }
    Ok(jsons)
}

/// The checked-in file: a header, then the lines.
fn listing(krate: &str, lines: &[String]) -> String {
    let mut out = format!(
        "# The public API of {krate} (all features), one item a line.\n\
         # Generated by `cargo xtask public-api` from rustdoc's JSON; CI fails while it is stale.\n\n"
    );
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The changed lines between the checked-in listing and the fresh one: a
/// unified diff without context lines, each hunk headed by its line
/// numbers in the old and the new file (a longest-common-subsequence diff;
/// the listings are a few hundred lines).
fn diff(name: &str, old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // common[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut common = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            common[i][j] = if a[i] == b[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let mut out = format!("--- {name} (checked in)\n+++ {name} (fresh)\n");
    let (mut i, mut j, mut in_hunk) = (0, 0, false);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            (i, j, in_hunk) = (i + 1, j + 1, false);
            continue;
        }
        if !in_hunk {
            out.push_str(&format!("@@ -{} +{} @@\n", i + 1, j + 1));
            in_hunk = true;
        }
        if j == b.len() || (i < a.len() && common[i + 1][j] >= common[i][j + 1]) {
            out.push_str(&format!("-{}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+{}\n", b[j]));
            j += 1;
        }
    }
    out
}

/// The sorted, deduplicated listing of the crate in rustdoc JSON `doc`.
pub fn render(doc: &Value) -> anyhow::Result<Vec<String>> {
    let version = doc.get("format_version").and_then(Value::as_u64);
    let cx = Cx::new(doc, version)?;
    let root = cx.field(doc, "root")?;
    let root = id_of(root).with_context(|| cx.missing("root"))?;
    let root_item = cx.item(&root)?;
    let name = cx.str_field(root_item, "name")?.to_owned();

    // First the walk: every public item with the public paths it is
    // reached by, so types in signatures can be written by those paths.
    let mut found: Vec<(String, String)> = Vec::new();
    cx.walk(&root, &name, &mut Vec::new(), &mut found)?;
    let mut public: HashMap<String, String> = HashMap::new();
    for (id, path) in &found {
        let e = public.entry(id.clone()).or_insert_with(|| path.clone());
        // The shortest path, then the first in order: the same every run.
        if (path.len(), path) < (e.len(), &*e) {
            *e = path.clone();
        }
    }
    let cx = Cx { public, ..cx };
    let mut lines = Lines::default();
    for (id, path) in &found {
        cx.item_lines(id, path, &mut lines)?;
    }
    Ok(lines.sorted())
}

/// The lines of a listing, each with the path it is filed under and its
/// rank there (0 the item, 1 its fields, variants and methods, 2 its trait
/// impls), so a type's lines sit together. A line reached twice (an impl
/// of a local trait for a local type) is filed under the smaller key.
#[derive(Default)]
struct Lines(BTreeMap<String, (String, u8)>);

impl Lines {
    fn add(&mut self, owner: &str, rank: u8, line: String) {
        let key = (owner.to_owned(), rank);
        match self.0.get_mut(&line) {
            Some(k) if *k <= key => {}
            Some(k) => *k = key,
            None => {
                self.0.insert(line, key);
            }
        }
    }

    fn sorted(self) -> Vec<String> {
        let mut v: Vec<((String, u8), String)> =
            self.0.into_iter().map(|(line, key)| (key, line)).collect();
        v.sort();
        v.into_iter().map(|(_, line)| line).collect()
    }
}

/// An id as a string key of the index (numbers in recent formats, strings
/// in older ones).
fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

struct Cx<'a> {
    index: &'a serde_json::Map<String, Value>,
    paths: Option<&'a serde_json::Map<String, Value>>,
    version: Option<u64>,
    /// Item id to the public path it is listed under.
    public: HashMap<String, String>,
}

impl<'a> Cx<'a> {
    fn new(doc: &'a Value, version: Option<u64>) -> anyhow::Result<Self> {
        let index = doc
            .get("index")
            .and_then(Value::as_object)
            .with_context(|| missing(version, "`index` object"))?;
        Ok(Cx {
            index,
            paths: doc.get("paths").and_then(Value::as_object),
            version,
            public: HashMap::new(),
        })
    }

    fn missing(&self, what: &str) -> String {
        missing(self.version, what)
    }

    fn field<'v>(&self, v: &'v Value, key: &str) -> anyhow::Result<&'v Value> {
        v.get(key)
            .with_context(|| self.missing(&format!("`{key}`")))
    }

    fn str_field<'v>(&self, v: &'v Value, key: &str) -> anyhow::Result<&'v str> {
        self.field(v, key)?
            .as_str()
            .with_context(|| self.missing(&format!("`{key}` string")))
    }

    fn item(&self, id: &str) -> anyhow::Result<&'a Value> {
        self.index
            .get(id)
            .with_context(|| format!("item {id} is not in rustdoc's index"))
    }

    /// The kind of an item (`module`, `struct`, ...) and its inner object.
    fn inner<'v>(&self, item: &'v Value) -> anyhow::Result<(&'v str, &'v Value)> {
        let inner = self
            .field(item, "inner")?
            .as_object()
            .with_context(|| self.missing("`inner` object"))?;
        let (kind, body) = inner
            .iter()
            .next()
            .with_context(|| self.missing("item kind in `inner`"))?;
        Ok((kind, body))
    }

    fn ids(&self, v: &Value, key: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .field(v, key)?
            .as_array()
            .with_context(|| self.missing(&format!("`{key}` list")))?
            .iter()
            .filter_map(id_of)
            .collect())
    }

    /// Collects every public item under module `id` (reached as `path`)
    /// into `found`, following `pub use`; `stack` guards against a glob
    /// re-export cycle.
    fn walk(
        &self,
        id: &str,
        path: &str,
        stack: &mut Vec<String>,
        found: &mut Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        if stack.iter().any(|s| s == id) {
            return Ok(());
        }
        stack.push(id.to_owned());
        found.push((id.to_owned(), path.to_owned()));
        let (_, module) = self.inner(self.item(id)?)?;
        for child in self.ids(module, "items")? {
            let item = self.item(&child)?;
            if !is_public(item) {
                continue;
            }
            let (kind, body) = self.inner(item)?;
            if kind == "use" {
                let target = body.get("id").and_then(id_of);
                let glob = body.get("is_glob").and_then(Value::as_bool) == Some(true);
                let name = self.str_field(body, "name")?;
                match target.filter(|t| self.index.contains_key(t)) {
                    Some(t) if glob => {
                        let (kind, m) = self.inner(self.item(&t)?)?;
                        if kind == "module" {
                            // The module's items as if they were this one's.
                            self.walk_items(m, path, stack, found)?;
                        } else {
                            found.push((format!("use:{child}"), format!("{path}::*")));
                        }
                    }
                    Some(t) => self.visit(&t, &format!("{path}::{name}"), stack, found)?,
                    // An item of another crate, not inlined: the
                    // re-export itself is the API.
                    None => {
                        let shown = if glob {
                            format!("{path}::*")
                        } else {
                            format!("{path}::{name}")
                        };
                        found.push((format!("use:{child}"), shown));
                    }
                }
            } else {
                let name = self.str_field(item, "name")?;
                self.visit(&child, &format!("{path}::{name}"), stack, found)?;
            }
        }
        stack.pop();
        Ok(())
    }

    /// The items of a glob-imported module, walked under `path`.
    fn walk_items(
        &self,
        module: &Value,
        path: &str,
        stack: &mut Vec<String>,
        found: &mut Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        for child in self.ids(module, "items")? {
            let item = self.item(&child)?;
            if !is_public(item) || self.inner(item)?.0 == "use" {
                continue;
            }
            let name = self.str_field(item, "name")?;
            self.visit(&child, &format!("{path}::{name}"), stack, found)?;
        }
        Ok(())
    }

    fn visit(
        &self,
        id: &str,
        path: &str,
        stack: &mut Vec<String>,
        found: &mut Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        if self.inner(self.item(id)?)?.0 == "module" {
            self.walk(id, path, stack, found)
        } else {
            found.push((id.to_owned(), path.to_owned()));
            Ok(())
        }
    }

    /// The lines of item `id`, listed under `path`.
    fn item_lines(&self, id: &str, path: &str, out: &mut Lines) -> anyhow::Result<()> {
        if let Some(use_id) = id.strip_prefix("use:") {
            let (_, body) = self.inner(self.item(use_id)?)?;
            let source = body
                .get("id")
                .and_then(id_of)
                .and_then(|t| self.external_path(&t))
                .unwrap_or_else(|| {
                    body.get("source")
                        .and_then(Value::as_str)
                        .unwrap_or("_")
                        .to_owned()
                });
            let glob = if body.get("is_glob").and_then(Value::as_bool) == Some(true) {
                "::*"
            } else {
                ""
            };
            out.add(path, 0, format!("pub use {path} = {source}{glob}"));
            return Ok(());
        }
        let item = self.item(id)?;
        let attrs = attrs(item);
        let (kind, body) = self.inner(item)?;
        let generics = |b: &Value| self.generics(b.get("generics"));
        let wheres = |b: &Value| self.where_clause(b.get("generics"));
        match kind {
            "module" => {
                out.add(path, 0, format!("pub mod {path}"));
            }
            "function" => {
                out.add(path, 0, format!("{attrs}pub {}", self.function(path, body)));
            }
            "struct" | "union" => {
                out.add(
                    path,
                    0,
                    format!("{attrs}pub {kind} {path}{}{}", generics(body), wheres(body)),
                );
                let fields = match body.get("kind") {
                    Some(k) => k,
                    None => body,
                };
                for (name, ty) in self.fields(fields, false)? {
                    out.add(path, 1, format!("pub {path}.{name}: {ty}"));
                }
                self.impls(body, path, out)?;
            }
            "enum" => {
                out.add(
                    path,
                    0,
                    format!("{attrs}pub enum {path}{}{}", generics(body), wheres(body)),
                );
                for v in self.ids(body, "variants")? {
                    let variant = self.item(&v)?;
                    let name = self.str_field(variant, "name")?;
                    let (_, vb) = self.inner(variant)?;
                    out.add(
                        path,
                        1,
                        format!(
                            "{}pub {path}::{name}{}",
                            self::attrs(variant),
                            self.variant(vb)?
                        ),
                    );
                }
                self.impls(body, path, out)?;
            }
            "trait" => {
                let mut head = String::new();
                if body.get("is_unsafe").and_then(Value::as_bool) == Some(true) {
                    head.push_str("unsafe ");
                }
                if body.get("is_auto").and_then(Value::as_bool) == Some(true) {
                    head.push_str("auto ");
                }
                let bounds = self.bounds(body.get("bounds"));
                let bounds = if bounds.is_empty() {
                    String::new()
                } else {
                    format!(": {bounds}")
                };
                let dyn_ok = match body
                    .get("is_dyn_compatible")
                    .or_else(|| body.get("is_object_safe"))
                    .and_then(Value::as_bool)
                {
                    Some(false) => " // not dyn-compatible",
                    _ => "",
                };
                out.add(
                    path,
                    0,
                    format!(
                        "{attrs}pub {head}trait {path}{}{bounds}{}{dyn_ok}",
                        generics(body),
                        wheres(body)
                    ),
                );
                for member in self.ids(body, "items")? {
                    self.assoc_line(&member, path, true, out)?;
                }
                for i in self.ids(body, "implementations").unwrap_or_default() {
                    self.impl_line(&i, path, out)?;
                }
            }
            "type_alias" | "typedef" => {
                let ty = self.ty(body.get("type"));
                out.add(
                    path,
                    0,
                    format!(
                        "{attrs}pub type {path}{}{} = {ty}",
                        generics(body),
                        wheres(body)
                    ),
                );
            }
            "constant" => {
                let ty = self.ty(body.get("type"));
                out.add(path, 0, format!("{attrs}pub const {path}: {ty}"));
            }
            "static" => {
                let ty = self.ty(body.get("type"));
                let m = if body.get("is_mutable").and_then(Value::as_bool) == Some(true) {
                    "mut "
                } else {
                    ""
                };
                out.add(path, 0, format!("{attrs}pub static {m}{path}: {ty}"));
            }
            "macro" => {
                out.add(path, 0, format!("pub macro {path}!"));
            }
            "proc_macro" => {
                let k = body.get("kind").and_then(Value::as_str).unwrap_or("bang");
                out.add(path, 0, format!("pub proc_macro({k}) {path}"));
            }
            other => {
                out.add(path, 0, format!("{attrs}pub {other} {path}"));
            }
        }
        Ok(())
    }

    /// The impls of a struct, enum or union: inherent items as lines under
    /// the type's path, trait impls as `impl` lines.
    fn impls(&self, body: &Value, path: &str, out: &mut Lines) -> anyhow::Result<()> {
        for i in self.ids(body, "impls")? {
            let imp = self.item(&i)?;
            let (_, ib) = self.inner(imp)?;
            if ib.get("trait").is_some_and(|t| !t.is_null()) {
                self.impl_line(&i, path, out)?;
                continue;
            }
            // An inherent impl with generics of its own is listed too, so
            // a changed bound shows.
            let g = self.generics(ib.get("generics"));
            if !g.is_empty() {
                out.add(
                    path,
                    1,
                    format!(
                        "impl{g} {}{}",
                        self.ty(ib.get("for")),
                        self.where_clause(ib.get("generics"))
                    ),
                );
            }
            for member in self.ids(ib, "items")? {
                if is_public(self.item(&member)?) {
                    self.assoc_line(&member, path, false, out)?;
                }
            }
        }
        Ok(())
    }

    /// `impl Trait for Type` of impl `id`, unless it is an auto trait's or
    /// a blanket impl; the associated types it sets are part of the line.
    fn impl_line(&self, id: &str, owner: &str, out: &mut Lines) -> anyhow::Result<()> {
        let imp = self.item(id)?;
        let (_, ib) = self.inner(imp)?;
        let flag = |k: &str| ib.get(k).and_then(Value::as_bool) == Some(true);
        if flag("is_synthetic") || ib.get("blanket_impl").is_some_and(|b| !b.is_null()) {
            return Ok(());
        }
        let Some(tr) = ib.get("trait").filter(|t| !t.is_null()) else {
            return Ok(());
        };
        // The unstable marker `derive(PartialEq)` adds beside the impl.
        if tr
            .get("id")
            .and_then(id_of)
            .and_then(|t| self.external_path(&t))
            .as_deref()
            == Some("core::marker::StructuralPartialEq")
        {
            return Ok(());
        }
        let mut line = String::new();
        if flag("is_unsafe") {
            line.push_str("unsafe ");
        }
        line.push_str("impl");
        line.push_str(&self.generics(ib.get("generics")));
        line.push(' ');
        if flag("is_negative") {
            line.push('!');
        }
        line.push_str(&self.path(tr));
        line.push_str(" for ");
        line.push_str(&self.ty(ib.get("for")));
        line.push_str(&self.where_clause(ib.get("generics")));
        let mut assoc = Vec::new();
        for member in self.ids(ib, "items").unwrap_or_default() {
            let m = self.item(&member)?;
            if let ("assoc_type", ab) = self.inner(m)? {
                let name = self.str_field(m, "name")?;
                let ty = ab.get("type").or_else(|| ab.get("default"));
                assoc.push(format!("type {name} = {}", self.ty(ty)));
            }
        }
        if !assoc.is_empty() {
            assoc.sort();
            line.push_str(&format!(" {{ {} }}", assoc.join("; ")));
        }
        out.add(owner, 2, line);
        Ok(())
    }

    /// A trait's member (`in_trait`) or an inherent impl's, under `owner`.
    fn assoc_line(
        &self,
        id: &str,
        owner: &str,
        in_trait: bool,
        out: &mut Lines,
    ) -> anyhow::Result<()> {
        let item = self.item(id)?;
        let name = self.str_field(item, "name")?;
        let path = format!("{owner}::{name}");
        let attrs = attrs(item);
        let (kind, body) = self.inner(item)?;
        let line = match kind {
            "function" => {
                let provided =
                    if in_trait && body.get("has_body").and_then(Value::as_bool) == Some(true) {
                        " // provided"
                    } else {
                        ""
                    };
                format!("{attrs}pub {}{provided}", self.function(&path, body))
            }
            "assoc_type" => {
                let bounds = self.bounds(body.get("bounds"));
                let bounds = if bounds.is_empty() {
                    String::new()
                } else {
                    format!(": {bounds}")
                };
                let default = match body.get("type").or_else(|| body.get("default")) {
                    Some(t) if !t.is_null() => format!(" = {}", self.ty(Some(t))),
                    _ => String::new(),
                };
                format!(
                    "{attrs}pub type {path}{}{bounds}{}{default}",
                    self.generics(body.get("generics")),
                    self.where_clause(body.get("generics"))
                )
            }
            "assoc_const" => {
                let ty = self.ty(body.get("type"));
                format!("{attrs}pub const {path}: {ty}")
            }
            other => format!("{attrs}pub {other} {path}"),
        };
        out.add(owner, 1, line);
        Ok(())
    }

    /// `fn path<G>(params) -> Ret where ...`, with its qualifiers.
    fn function(&self, path: &str, body: &Value) -> String {
        let mut s = String::new();
        if let Some(h) = body.get("header") {
            let flag = |k: &str| h.get(k).and_then(Value::as_bool) == Some(true);
            if flag("is_const") || flag("const_") {
                s.push_str("const ");
            }
            if flag("is_async") || flag("async_") {
                s.push_str("async ");
            }
            if flag("is_unsafe") || flag("unsafe_") {
                s.push_str("unsafe ");
            }
            match h.get("abi") {
                Some(Value::String(a)) if a == "Rust" => {}
                Some(Value::String(a)) => s.push_str(&format!("extern {a:?} ")),
                Some(Value::Object(o)) => {
                    if let Some(k) = o.keys().next() {
                        s.push_str(&format!("extern {k:?} "));
                    }
                }
                _ => {}
            }
        }
        let sig = body.get("sig").or_else(|| body.get("decl"));
        s.push_str(&format!(
            "fn {path}{}({}){}{}",
            self.generics(body.get("generics")),
            self.params(sig),
            self.output(sig.and_then(|d| d.get("output"))),
            self.where_clause(body.get("generics"))
        ));
        s
    }

    fn params(&self, sig: Option<&Value>) -> String {
        let Some(inputs) = sig.and_then(|d| d.get("inputs")).and_then(Value::as_array) else {
            return "_".to_owned();
        };
        let mut out = Vec::new();
        for p in inputs {
            let (Some(name), ty) = (p.get(0).and_then(Value::as_str), p.get(1)) else {
                out.push("_".to_owned());
                continue;
            };
            out.push(if name == "self" {
                self.self_param(ty)
            } else {
                format!("{name}: {}", self.ty(ty))
            });
        }
        if sig
            .and_then(|d| d.get("is_c_variadic"))
            .and_then(Value::as_bool)
            == Some(true)
        {
            out.push("...".to_owned());
        }
        out.join(", ")
    }

    /// `self`, `&self`, `&mut self`, `&'a self` or `self: Type`.
    fn self_param(&self, ty: Option<&Value>) -> String {
        let is_self = |t: &Value| t.get("generic").and_then(Value::as_str) == Some("Self");
        match ty {
            Some(t) if is_self(t) => "self".to_owned(),
            Some(t) => match t.get("borrowed_ref") {
                Some(r) if r.get("type").is_some_and(is_self) => {
                    let mut s = "&".to_owned();
                    if let Some(l) = r.get("lifetime").and_then(Value::as_str) {
                        s.push_str(l);
                        s.push(' ');
                    }
                    if r.get("is_mutable")
                        .or_else(|| r.get("mutable"))
                        .and_then(Value::as_bool)
                        == Some(true)
                    {
                        s.push_str("mut ");
                    }
                    s + "self"
                }
                _ => format!("self: {}", self.ty(Some(t))),
            },
            None => "self".to_owned(),
        }
    }

    fn output(&self, out: Option<&Value>) -> String {
        match out {
            None | Some(Value::Null) => String::new(),
            Some(t) => format!(" -> {}", self.ty(Some(t))),
        }
    }

    /// The fields of a struct's `kind` (or of a union): `(name, type)`;
    /// a tuple struct's fields are named by position, private ones left out
    /// unless `all` (a variant's fields, public with their enum).
    fn fields(&self, kind: &Value, all: bool) -> anyhow::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let list: Vec<(Option<String>, Option<String>)> = if let Some(t) = kind.get("tuple") {
            t.as_array()
                .map(|a| {
                    a.iter()
                        .enumerate()
                        .map(|(n, f)| (Some(n.to_string()), id_of(f)))
                        .collect()
                })
                .unwrap_or_default()
        } else if let Some(p) = kind.get("plain") {
            self.ids(p, "fields")?
                .into_iter()
                .map(|f| (None, Some(f)))
                .collect()
        } else if kind.get("fields").is_some() {
            self.ids(kind, "fields")?
                .into_iter()
                .map(|f| (None, Some(f)))
                .collect()
        } else {
            Vec::new()
        };
        for (pos, f) in list {
            // A stripped (private) tuple field has no id.
            let Some(f) = f else { continue };
            let field = self.item(&f)?;
            if !all && !is_public(field) {
                continue;
            }
            let name = match pos {
                Some(p) => p,
                None => self.str_field(field, "name")?.to_owned(),
            };
            let (_, ty) = self.inner(field)?;
            out.push((name, self.ty(Some(ty))));
        }
        Ok(out)
    }

    /// What follows a variant's name: `(T, U)`, ` { a: T }` or ` = 3`.
    fn variant(&self, body: &Value) -> anyhow::Result<String> {
        let kind = self.field(body, "kind")?;
        let mut s = match kind {
            Value::Object(o) if o.contains_key("tuple") => {
                let ids = o["tuple"].as_array().cloned().unwrap_or_default();
                let mut tys = Vec::new();
                for f in &ids {
                    match id_of(f) {
                        Some(f) => tys.push(self.ty(self.inner(self.item(&f)?).ok().map(|x| x.1))),
                        None => tys.push("_".to_owned()),
                    }
                }
                format!("({})", tys.join(", "))
            }
            Value::Object(o) if o.contains_key("struct") => {
                let fields = self.fields(
                    &Value::Object(
                        [("plain".to_owned(), o["struct"].clone())]
                            .into_iter()
                            .collect(),
                    ),
                    true,
                )?;
                let fields: Vec<String> = fields
                    .into_iter()
                    .map(|(n, t)| format!("{n}: {t}"))
                    .collect();
                format!(" {{ {} }}", fields.join(", "))
            }
            _ => String::new(),
        };
        if let Some(d) = body.get("discriminant").filter(|d| !d.is_null()) {
            let v = d
                .get("value")
                .or_else(|| d.get("expr"))
                .and_then(Value::as_str)
                .unwrap_or("_");
            s.push_str(&format!(" = {v}"));
        }
        Ok(s)
    }

    /// The full path of an item of another crate (or of this one, when it
    /// is not public), from rustdoc's `paths` table.
    fn external_path(&self, id: &str) -> Option<String> {
        let segs = self.paths?.get(id)?.get("path")?.as_array()?;
        let segs: Vec<&str> = segs.iter().filter_map(Value::as_str).collect();
        (!segs.is_empty()).then(|| segs.join("::"))
    }

    /// A path (`resolved_path`, a trait in a bound): by its public path in
    /// this crate, else its full path, else as written; then its arguments.
    fn path(&self, p: &Value) -> String {
        let id = p.get("id").and_then(id_of);
        let name = id
            .as_ref()
            .and_then(|id| {
                self.public
                    .get(id)
                    .cloned()
                    .or_else(|| self.external_path(id))
            })
            .or_else(|| {
                p.get("path")
                    .or_else(|| p.get("name"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "_".to_owned());
        name + &self.generic_args(p.get("args"))
    }

    fn generic_args(&self, args: Option<&Value>) -> String {
        let Some(args) = args.filter(|a| !a.is_null()) else {
            return String::new();
        };
        if let Some(ab) = args.get("angle_bracketed") {
            let mut parts = Vec::new();
            for a in ab
                .get("args")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                parts.push(self.generic_arg(a));
            }
            for c in ab
                .get("constraints")
                .or_else(|| ab.get("bindings"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("_");
                let cargs = self.generic_args(c.get("args"));
                let binding = c.get("binding");
                let rhs = match binding {
                    Some(b) if b.get("equality").is_some() => {
                        format!(" = {}", self.term(b.get("equality")))
                    }
                    Some(b) if b.get("constraint").is_some() => {
                        format!(": {}", self.bounds(b.get("constraint")))
                    }
                    _ => String::new(),
                };
                parts.push(format!("{name}{cargs}{rhs}"));
            }
            if parts.is_empty() {
                String::new()
            } else {
                format!("<{}>", parts.join(", "))
            }
        } else if let Some(pb) = args.get("parenthesized") {
            let inputs: Vec<String> = pb
                .get("inputs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|t| self.ty(Some(t)))
                .collect();
            format!("({}){}", inputs.join(", "), self.output(pb.get("output")))
        } else if args.get("return_type_notation").is_some() || args == "return_type_notation" {
            "(..)".to_owned()
        } else {
            "<_>".to_owned()
        }
    }

    fn generic_arg(&self, a: &Value) -> String {
        if let Some(l) = a.get("lifetime").and_then(Value::as_str) {
            l.to_owned()
        } else if let Some(t) = a.get("type") {
            self.ty(Some(t))
        } else if let Some(c) = a.get("const") {
            c.get("expr")
                .and_then(Value::as_str)
                .unwrap_or("_")
                .to_owned()
        } else {
            "_".to_owned()
        }
    }

    fn term(&self, t: Option<&Value>) -> String {
        match t {
            Some(t) if t.get("type").is_some() => self.ty(t.get("type")),
            Some(t) if t.get("constant").is_some() => t["constant"]
                .get("expr")
                .and_then(Value::as_str)
                .unwrap_or("_")
                .to_owned(),
            _ => "_".to_owned(),
        }
    }

    /// A type from rustdoc's type tree; a shape this does not know (a new
    /// one in a later format) renders as `_`.
    fn ty(&self, t: Option<&Value>) -> String {
        let Some(Value::Object(o)) = t else {
            return "_".to_owned();
        };
        let Some((kind, v)) = o.iter().next() else {
            return "_".to_owned();
        };
        let mutable = |v: &Value| {
            v.get("is_mutable")
                .or_else(|| v.get("mutable"))
                .and_then(Value::as_bool)
                == Some(true)
        };
        match kind.as_str() {
            "resolved_path" => self.path(v),
            "generic" | "primitive" => v.as_str().unwrap_or("_").to_owned(),
            "tuple" => {
                let items: Vec<String> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| self.ty(Some(t)))
                    .collect();
                if items.len() == 1 {
                    format!("({},)", items[0])
                } else {
                    format!("({})", items.join(", "))
                }
            }
            "slice" => format!("[{}]", self.ty(Some(v))),
            "array" => format!(
                "[{}; {}]",
                self.ty(v.get("type")),
                v.get("len").and_then(Value::as_str).unwrap_or("_")
            ),
            "borrowed_ref" => {
                let mut s = "&".to_owned();
                if let Some(l) = v.get("lifetime").and_then(Value::as_str) {
                    s.push_str(l);
                    s.push(' ');
                }
                if mutable(v) {
                    s.push_str("mut ");
                }
                s + &self.pointee(v.get("type"))
            }
            "raw_pointer" => format!(
                "*{} {}",
                if mutable(v) { "mut" } else { "const" },
                self.pointee(v.get("type"))
            ),
            "impl_trait" => format!("impl {}", self.bounds(Some(v))),
            "dyn_trait" => {
                let mut parts: Vec<String> = v
                    .get("traits")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|pt| self.poly_trait(pt))
                    .collect();
                if let Some(l) = v.get("lifetime").and_then(Value::as_str) {
                    parts.push(l.to_owned());
                }
                format!("dyn {}", parts.join(" + "))
            }
            "function_pointer" => {
                let hrtb = self.hrtb(v.get("generic_params"));
                let sig = v.get("sig").or_else(|| v.get("decl"));
                let inputs: Vec<String> = sig
                    .and_then(|d| d.get("inputs"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|p| self.ty(p.get(1)))
                    .collect();
                format!(
                    "{hrtb}fn({}){}",
                    inputs.join(", "),
                    self.output(sig.and_then(|d| d.get("output")))
                )
            }
            "qualified_path" => {
                let self_ty = self.ty(v.get("self_type"));
                let name = v.get("name").and_then(Value::as_str).unwrap_or("_");
                let args = self.generic_args(v.get("args"));
                match v.get("trait").filter(|t| !t.is_null()) {
                    Some(tr) => format!("<{self_ty} as {}>::{name}{args}", self.path(tr)),
                    None => format!("{self_ty}::{name}{args}"),
                }
            }
            "infer" => "_".to_owned(),
            "pat" => self.ty(v.get("type")),
            _ => "_".to_owned(),
        }
    }

    /// The type behind `&` or `*`: a `dyn` or `impl` with several bounds
    /// in parentheses, as Rust writes it.
    fn pointee(&self, t: Option<&Value>) -> String {
        let ty = self.ty(t);
        let bare = t
            .and_then(Value::as_object)
            .is_some_and(|o| o.contains_key("dyn_trait") || o.contains_key("impl_trait"));
        if bare && ty.contains(" + ") {
            format!("({ty})")
        } else {
            ty
        }
    }

    /// `for<'a> Trait<..>`.
    fn poly_trait(&self, pt: &Value) -> String {
        let hrtb = self.hrtb(pt.get("generic_params"));
        format!(
            "{hrtb}{}",
            pt.get("trait").map_or("_".into(), |t| self.path(t))
        )
    }

    fn hrtb(&self, params: Option<&Value>) -> String {
        let names: Vec<String> = params
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| self.generic_param(p))
            .collect();
        if names.is_empty() {
            String::new()
        } else {
            format!("for<{}> ", names.join(", "))
        }
    }

    /// Bounds joined with ` + `: traits (with `?` and `~const`),
    /// lifetimes, `use<..>`.
    fn bounds(&self, b: Option<&Value>) -> String {
        let parts: Vec<String> = b
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|b| {
                if let Some(tb) = b.get("trait_bound") {
                    let modifier = match tb.get("modifier").and_then(Value::as_str) {
                        Some("maybe") => "?",
                        Some("maybe_const") => "~const ",
                        _ => "",
                    };
                    let hrtb = self.hrtb(tb.get("generic_params"));
                    let tr = tb.get("trait").map_or("_".into(), |t| self.path(t));
                    format!("{hrtb}{modifier}{tr}")
                } else if let Some(l) = b.get("outlives").and_then(Value::as_str) {
                    l.to_owned()
                } else if let Some(u) = b.get("use").and_then(Value::as_array) {
                    let names: Vec<String> = u
                        .iter()
                        .map(|a| match a {
                            Value::String(s) => s.clone(),
                            Value::Object(o) => o
                                .values()
                                .next()
                                .and_then(Value::as_str)
                                .unwrap_or("_")
                                .to_owned(),
                            _ => "_".to_owned(),
                        })
                        .collect();
                    format!("use<{}>", names.join(", "))
                } else {
                    "_".to_owned()
                }
            })
            .collect();
        parts.join(" + ")
    }

    /// `<'a, T: Bound, const N: usize>`, without the synthetic parameters
    /// an `impl Trait` argument makes.
    fn generics(&self, g: Option<&Value>) -> String {
        let params: Vec<String> = g
            .and_then(|g| g.get("params"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|p| {
                p.get("kind")
                    .and_then(|k| k.get("type"))
                    .and_then(|t| t.get("is_synthetic").or_else(|| t.get("synthetic")))
                    .and_then(Value::as_bool)
                    != Some(true)
            })
            .map(|p| self.generic_param(p))
            .collect();
        if params.is_empty() {
            String::new()
        } else {
            format!("<{}>", params.join(", "))
        }
    }

    fn generic_param(&self, p: &Value) -> String {
        let name = p.get("name").and_then(Value::as_str).unwrap_or("_");
        let kind = p.get("kind");
        if let Some(l) = kind.and_then(|k| k.get("lifetime")) {
            let outlives: Vec<&str> = l
                .get("outlives")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if outlives.is_empty() {
                name.to_owned()
            } else {
                format!("{name}: {}", outlives.join(" + "))
            }
        } else if let Some(t) = kind.and_then(|k| k.get("type")) {
            let bounds = self.bounds(t.get("bounds"));
            let mut s = name.to_owned();
            if !bounds.is_empty() {
                s.push_str(&format!(": {bounds}"));
            }
            if let Some(d) = t.get("default").filter(|d| !d.is_null()) {
                s.push_str(&format!(" = {}", self.ty(Some(d))));
            }
            s
        } else if let Some(c) = kind.and_then(|k| k.get("const")) {
            let mut s = format!("const {name}: {}", self.ty(c.get("type")));
            if let Some(d) = c.get("default").and_then(Value::as_str) {
                s.push_str(&format!(" = {d}"));
            }
            s
        } else {
            name.to_owned()
        }
    }

    fn where_clause(&self, g: Option<&Value>) -> String {
        let preds: Vec<String> = g
            .and_then(|g| g.get("where_predicates"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                if let Some(b) = p.get("bound_predicate") {
                    format!(
                        "{}{}: {}",
                        self.hrtb(b.get("generic_params")),
                        self.ty(b.get("type")),
                        self.bounds(b.get("bounds"))
                    )
                } else if let Some(l) = p.get("lifetime_predicate") {
                    let outlives: Vec<&str> = l
                        .get("outlives")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    format!(
                        "{}: {}",
                        l.get("lifetime").and_then(Value::as_str).unwrap_or("_"),
                        outlives.join(" + ")
                    )
                } else if let Some(e) = p.get("eq_predicate") {
                    format!("{} = {}", self.ty(e.get("lhs")), self.term(e.get("rhs")))
                } else {
                    "_".to_owned()
                }
            })
            .collect();
        if preds.is_empty() {
            String::new()
        } else {
            format!(" where {}", preds.join(", "))
        }
    }
}

/// The error for a field this renderer needs and rustdoc's JSON lacks.
fn missing(version: Option<u64>, what: &str) -> String {
    format!(
        "rustdoc JSON (format_version {}) has no {what}: the nightly's format changed; adapt xtask/src/public_api.rs",
        version.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
    )
}

fn is_public(item: &Value) -> bool {
    item.get("visibility").and_then(Value::as_str) == Some("public")
}

/// The attributes that are API: `#[non_exhaustive]` and `#[deprecated]`,
/// as a prefix of the item's line.
fn attrs(item: &Value) -> String {
    let mut s = String::new();
    let non_exhaustive = item
        .get("attrs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|a| a.to_string().contains("non_exhaustive"));
    if non_exhaustive {
        s.push_str("#[non_exhaustive] ");
    }
    if item.get("deprecation").is_some_and(|d| !d.is_null()) {
        s.push_str("#[deprecated] ");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-written crate in rustdoc's JSON (format 57's shapes): a
    /// function re-exported from a private module, a struct with a public
    /// and a private field, a method, derived and auto-trait and blanket
    /// impls, a `#[non_exhaustive]` enum and a trait.
    fn doc() -> Value {
        let path = |p: &str, id: u32| serde_json::json!({"resolved_path": {"path": p, "id": id, "args": null}});
        let str_ref = serde_json::json!({"borrowed_ref": {"lifetime": null, "is_mutable": false, "type": {"primitive": "str"}}});
        let self_ref = serde_json::json!({"borrowed_ref": {"lifetime": null, "is_mutable": false, "type": {"generic": "Self"}}});
        let no_generics = serde_json::json!({"params": [], "where_predicates": []});
        let header = serde_json::json!({"is_const": false, "is_unsafe": false, "is_async": false, "abi": "Rust"});
        let item = |id: u32, name: Option<&str>, vis: &str, inner: Value| {
            (
                id.to_string(),
                serde_json::json!({"id": id, "crate_id": 0, "name": name, "visibility": vis, "attrs": [], "deprecation": null, "inner": inner}),
            )
        };
        let mut index = serde_json::Map::new();
        for (k, v) in [
            item(
                0,
                Some("demo"),
                "public",
                serde_json::json!({"module": {"is_crate": true, "items": [1, 2, 10, 20, 30], "is_stripped": false}}),
            ),
            // `pub use inner::open;`
            item(
                1,
                None,
                "public",
                serde_json::json!({"use": {"source": "inner::open", "name": "open", "id": 3, "is_glob": false}}),
            ),
            // `mod private` is not listed: not public.
            item(
                2,
                Some("private"),
                "crate",
                serde_json::json!({"module": {"is_crate": false, "items": [], "is_stripped": false}}),
            ),
            item(
                3,
                Some("open"),
                "public",
                serde_json::json!({"function": {
                "sig": {"inputs": [["name", str_ref], ["items", {"borrowed_ref": {"lifetime": null, "is_mutable": false, "type": {"slice": path("Store", 10)}}}]],
                        "output": path("std::io::Result", 90), "is_c_variadic": false},
                "generics": no_generics, "header": header, "has_body": true}}),
            ),
            item(
                10,
                Some("Store"),
                "public",
                serde_json::json!({"struct": {
                "kind": {"plain": {"fields": [11, 12], "has_stripped_fields": false}},
                "generics": no_generics, "impls": [13, 15, 16, 17]}}),
            ),
            item(
                11,
                Some("size"),
                "public",
                serde_json::json!({"struct_field": {"primitive": "u64"}}),
            ),
            item(
                12,
                Some("secret"),
                "default",
                serde_json::json!({"struct_field": {"primitive": "u8"}}),
            ),
            item(
                13,
                None,
                "default",
                serde_json::json!({"impl": {"is_unsafe": false, "generics": no_generics, "provided_trait_methods": [], "trait": null, "for": path("Store", 10), "items": [14], "is_negative": false, "is_synthetic": false, "blanket_impl": null}}),
            ),
            item(
                14,
                Some("len"),
                "public",
                serde_json::json!({"function": {
                "sig": {"inputs": [["self", self_ref]], "output": {"primitive": "usize"}, "is_c_variadic": false},
                "generics": no_generics, "header": header, "has_body": true}}),
            ),
            item(
                15,
                None,
                "default",
                serde_json::json!({"impl": {"is_unsafe": false, "generics": no_generics, "provided_trait_methods": [], "trait": {"path": "Clone", "id": 91, "args": null}, "for": path("Store", 10), "items": [], "is_negative": false, "is_synthetic": false, "blanket_impl": null}}),
            ),
            item(
                16,
                None,
                "default",
                serde_json::json!({"impl": {"is_unsafe": false, "generics": no_generics, "provided_trait_methods": [], "trait": {"path": "Send", "id": 92, "args": null}, "for": path("Store", 10), "items": [], "is_negative": false, "is_synthetic": true, "blanket_impl": null}}),
            ),
            item(
                17,
                None,
                "default",
                serde_json::json!({"impl": {"is_unsafe": false, "generics": no_generics, "provided_trait_methods": [], "trait": {"path": "Into", "id": 93, "args": null}, "for": {"generic": "T"}, "items": [], "is_negative": false, "is_synthetic": false, "blanket_impl": {"generic": "T"}}}),
            ),
            (
                20.to_string(),
                serde_json::json!({"id": 20, "crate_id": 0, "name": "Mode", "visibility": "public", "attrs": ["non_exhaustive"], "deprecation": null,
                "inner": {"enum": {"generics": no_generics, "has_stripped_variants": false, "variants": [21, 22], "impls": []}}}),
            ),
            item(
                21,
                Some("Fast"),
                "default",
                serde_json::json!({"variant": {"kind": "plain", "discriminant": null}}),
            ),
            item(
                22,
                Some("Limit"),
                "default",
                serde_json::json!({"variant": {"kind": {"tuple": [23]}, "discriminant": null}}),
            ),
            item(
                23,
                Some("0"),
                "default",
                serde_json::json!({"struct_field": {"borrowed_ref": {"lifetime": "'static", "is_mutable": false, "type": {"dyn_trait": {"traits": [
                {"trait": {"path": "Fn", "id": 94, "args": {"parenthesized": {"inputs": [{"primitive": "u32"}], "output": {"primitive": "bool"}}}}, "generic_params": []},
                {"trait": {"path": "Send", "id": 92, "args": null}, "generic_params": []}], "lifetime": null}}}}}),
            ),
            item(
                30,
                Some("Backend"),
                "public",
                serde_json::json!({"trait": {"is_auto": false, "is_unsafe": false, "is_dyn_compatible": true, "items": [31, 32],
                "generics": no_generics, "bounds": [{"trait_bound": {"trait": {"path": "Send", "id": 92, "args": null}, "generic_params": [], "modifier": "none"}}], "implementations": []}}),
            ),
            item(
                31,
                Some("name"),
                "default",
                serde_json::json!({"function": {
                "sig": {"inputs": [["self", self_ref]], "output": {"borrowed_ref": {"lifetime": "'static", "is_mutable": false, "type": {"primitive": "str"}}}, "is_c_variadic": false},
                "generics": no_generics, "header": header, "has_body": false}}),
            ),
            item(
                32,
                Some("sync"),
                "default",
                serde_json::json!({"function": {
                "sig": {"inputs": [["self", self_ref], ["what", {"impl_trait": [{"trait_bound": {"trait": {"path": "AsRef", "id": 95, "args": {"angle_bracketed": {"args": [{"type": path("Path", 96)}], "constraints": []}}}, "generic_params": [], "modifier": "none"}}]}]],
                        "output": null, "is_c_variadic": false},
                "generics": {"params": [{"name": "impl AsRef<Path>", "kind": {"type": {"bounds": [], "default": null, "is_synthetic": true}}}], "where_predicates": []},
                "header": header, "has_body": true}}),
            ),
        ] {
            index.insert(k, v);
        }
        let ext = |p: &[&str]| serde_json::json!({"crate_id": 1, "path": p, "kind": "struct"});
        serde_json::json!({
            "root": 0,
            "format_version": 57,
            "index": index,
            "paths": {
                "90": ext(&["std", "io", "error", "Result"]),
                "91": ext(&["core", "clone", "Clone"]),
                "92": ext(&["core", "marker", "Send"]),
                "94": ext(&["core", "ops", "function", "Fn"]),
                "95": ext(&["core", "convert", "AsRef"]),
                "96": ext(&["std", "path", "Path"]),
                "10": {"crate_id": 0, "path": ["demo", "store", "Store"], "kind": "struct"},
            },
        })
    }

    #[test]
    fn renders_a_small_crate() {
        let lines = render(&doc()).unwrap();
        assert_eq!(
            lines,
            [
                "pub mod demo",
                "pub trait demo::Backend: core::marker::Send",
                "pub fn demo::Backend::name(&self) -> &'static str",
                "pub fn demo::Backend::sync(&self, what: impl core::convert::AsRef<std::path::Path>) // provided",
                "#[non_exhaustive] pub enum demo::Mode",
                "pub demo::Mode::Fast",
                "pub demo::Mode::Limit(&'static (dyn core::ops::function::Fn(u32) -> bool + core::marker::Send))",
                "pub struct demo::Store",
                "pub demo::Store.size: u64",
                "pub fn demo::Store::len(&self) -> usize",
                "impl core::clone::Clone for demo::Store",
                "pub fn demo::open(name: &str, items: &[demo::Store]) -> std::io::error::Result",
            ]
        );
    }

    #[test]
    fn a_missing_field_names_the_format_version() {
        let mut d = doc();
        d.as_object_mut().unwrap().remove("index");
        let e = render(&d).unwrap_err().to_string();
        assert!(
            e.contains("format_version 57") && e.contains("index"),
            "{e}"
        );
    }

    #[test]
    fn diff_shows_the_changed_lines() {
        let old = "# head\na\nb\nc\n";
        let new = "# head\na\nb2\nc\nd\n";
        assert_eq!(
            diff("api/x.txt", old, new),
            "--- api/x.txt (checked in)\n+++ api/x.txt (fresh)\n@@ -3 +3 @@\n-b\n+b2\n@@ -5 +5 @@\n+d\n"
        );
    }
}
