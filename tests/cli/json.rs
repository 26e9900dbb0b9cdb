//! The `--json` contract: every command whose help documents a JSON shape
//! is run on a real root (a registry on loopback for push and pull), and
//! what it prints must have exactly the documented fields, nested objects
//! and lists included. The set of commands exercised must equal the set
//! `docs/cli.md` documents, so a new command cannot slip past.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use strata_testkit::cli::Env;
use strata_testkit::json_shape;
use strata_testkit::layer_tar::{archive, entry};
use strata_testkit::oci_layout::Layout;
use strata_testkit::registry::Registry;
use tar::EntryType;

/// The heading `strata CMD --help` puts before the shape.
const HEADING: &str = "JSON output (--json):";

/// The shape `strata PATH --help` documents, if any.
fn documented(env: &Env, path: &str) -> Option<json_shape::Shape> {
    let args: Vec<&str> = path.split_whitespace().chain(["--help"]).collect();
    let help = env.run(&args).expect(0).text();
    let (_, after) = help.split_once(HEADING)?;
    let text: Vec<&str> = after.lines().map(str::trim).collect();
    Some(json_shape::parse(&text.join(" ")).unwrap_or_else(|e| panic!("{path}: {e}")))
}

/// Commands whose JSON docs/cli.md documents.
fn documented_in_cli_md() -> BTreeSet<String> {
    let md = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md"))
        .expect("read docs/cli.md");
    md.split("\n## strata")
        .skip(1)
        .filter(|section| section.contains(HEADING))
        .map(|section| section.lines().next().unwrap_or("").trim().to_owned())
        .collect()
}

struct Audit<'a> {
    env: &'a Env,
    seen: BTreeSet<String>,
}

impl Audit<'_> {
    /// Runs `strata --json PATH ARGS...`, checks its output against the
    /// shape `PATH --help` documents and returns the output.
    #[track_caller]
    fn run(&mut self, path: &str, args: &[&str]) -> Value {
        let shape = documented(self.env, path)
            .unwrap_or_else(|| panic!("`strata {path} --help` documents no JSON shape"));
        let mut argv: Vec<&str> = vec!["--json"];
        argv.extend(path.split_whitespace());
        argv.extend(args);
        let value = self.env.run(&argv).expect(0).json();
        if let Err(e) = shape.check(&value) {
            panic!("strata {path}: {e}\nprinted: {value:#}");
        }
        self.seen.insert(path.to_owned());
        value
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn sample_layout(dir: &Path) {
    let none: &[u8] = b"";
    let layout = Layout::new(dir);
    let manifest = layout.image(&[
        archive(&[
            entry("etc/", EntryType::Directory, none, ""),
            entry("etc/os-release", EntryType::Regular, b"NAME=json\n", ""),
        ]),
        archive(&[entry("etc/extra", EntryType::Regular, b"x", "")]),
    ]);
    layout.tag(&manifest, "1");
}

#[test]
fn every_documented_json_shape_is_what_the_command_prints() {
    let env = Env::strata();
    let mut a = Audit {
        env: &env,
        seen: BTreeSet::new(),
    };
    let file = env.path("blob");
    std::fs::write(&file, b"some bytes").unwrap();

    // Content.
    let blob = a.run("content ingest", &[&s(&file), "--label", "k=v"]);
    let digest = blob["digest"].as_str().unwrap().to_owned();
    a.run("content ls", &[]);
    a.run("content info", &[&digest]);
    a.run("content label", &[&digest, "team=build"]);
    // A partial ingest, left by a process killed mid-stream.
    let (mut child, _stdin) = env.ingest_in_progress(b"half a blob");
    child.kill().unwrap();
    child.wait().unwrap();
    let active = a.run("content active", &[]);
    assert_eq!(active.as_array().unwrap().len(), 1, "{active}");
    a.run("content abort", &[active[0]["reference"].as_str().unwrap()]);

    // Leases.
    a.run("lease create", &["--id", "keep", "--label", "owner=test"]);
    a.run("lease ls", &[]);
    a.run("lease add", &["keep", "content", &digest]);
    a.run("lease resources", &["keep"]);
    a.run("content rm", &[&digest]);

    // Snapshots.
    a.run("snapshot prepare", &["work"]);
    a.run("snapshot mounts", &["work"]);
    a.run("snapshot commit", &["base", "work"]);
    a.run("snapshot prepare", &["work2", "base"]);
    a.run("snapshot commit", &["upper", "work2"]);
    a.run("snapshot view", &["look", "base"]);
    a.run("snapshot ls", &[]);
    a.run("snapshot info", &["base"]);
    a.run("snapshot usage", &[]);
    a.run("snapshot tree", &[]);
    a.run("snapshot merge", &["both", "base", "upper"]);
    a.run("snapshot diff", &["delta", "base", "upper"]);
    a.run("snapshot rm", &["look"]);

    // Layers on plain directories.
    let (lower, upper) = (env.path("lower"), env.path("upper"));
    std::fs::create_dir_all(&lower).unwrap();
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    std::fs::write(upper.join("etc/conf"), b"c").unwrap();
    let layer = env.path("layer.tar.gz");
    a.run("layer diff", &[&s(&lower), &s(&upper), "-o", &s(&layer)]);
    std::fs::create_dir_all(env.path("applied")).unwrap();
    a.run("layer apply", &[&s(&layer), &s(&env.path("applied"))]);

    // Images and refs.
    let layout = env.path("layout");
    sample_layout(&layout);
    let image = a.run(
        "image import",
        &[&format!("oci:{}:1", s(&layout)), "--name", "app"],
    );
    let top = image["ref"].as_str().unwrap().to_owned();
    a.run("image ls", &[]);
    let inspected = a.run("image inspect", &["app"]);
    assert_eq!(inspected["layers"].as_array().unwrap().len(), 2);
    // Nothing to fill in an image pulled whole: nothing fetched.
    let unlazied = a.run("image unlazy", &["app"]);
    assert_eq!(unlazied["fetched"], 0, "{unlazied}");
    a.run(
        "image export",
        &["app", &format!("oci:{}:copy", s(&env.path("out")))],
    );
    // Push and pull need a registry to talk to.
    let registry = strata_testkit::require_tools(
        "every_documented_json_shape::push-pull",
        strata_testkit::REGISTRY_TOOLS,
    );
    if registry {
        let reg = Registry::start(None);
        let pushed = a.run("image push", &["app", &format!("{}/json:1", reg.addr)]);
        assert_eq!(pushed["uploaded"], 3, "two layers and the config: {pushed}");
        let copied = a.run(
            "lazy copy",
            &[
                &format!("{}/json:1", reg.addr),
                &format!("{}/copy:1", reg.addr),
            ],
        );
        assert_eq!(copied["mounted"], 3, "two layers and the config: {copied}");
        a.run(
            "image pull",
            &[&format!("{}/json:1", reg.addr), "--name", "pulled"],
        );
    } else {
        a.seen
            .extend(["image push", "image pull", "lazy copy"].map(str::to_owned));
    }
    let cache = env.path("lazy-cache");
    std::fs::create_dir_all(cache.join("chunks")).unwrap();
    a.run("lazy prune", &["--cache", &s(&cache)]);
    a.run("ref ls", &[]);
    a.run("ref info", &[&top]);
    let open = a.run("ref new", &[&top, "--description", "json audit"]);
    let committed = a.run("ref commit", &[open.as_str().unwrap()]);
    let committed = committed.as_str().unwrap().to_owned();
    a.run("ref merge", &[&top, &committed]);
    let diff = a.run("ref diff", &[&top, &committed]);
    a.run("du", &[]);
    a.run("ref rm", &[diff.as_str().unwrap()]);
    let dry = a.run("prune", &["--dry-run"]);
    assert!(!dry["removed"].as_array().unwrap().is_empty(), "{dry}");
    a.run("prune", &[]);
    a.run("image rm", &[if registry { "pulled" } else { "app" }]);
    a.run("lease rm", &["keep"]);
    let gc = a.run("gc", &["--dry-run", "--explain"]);
    assert!(!gc["pins"].as_array().unwrap().is_empty(), "{gc}");
    a.run("gc", &[]);
    a.run("check", &[]);
    // The daemon's health (`serve --check`), asked of a running daemon.
    let daemon = env.serve(&[]);
    let health = a.run("serve", &["--check"]);
    assert_eq!(health["pid"], daemon.pid(), "{health}");
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");

    // Mounting needs privilege; the rest of the audit does not.
    if strata_testkit::require_root("every_documented_json_shape::mount") {
        let dir = env.path("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        a.run("mount", &[&top, &s(&dir)]);
        a.run("umount", &[&s(&dir)]);
    } else {
        a.seen.extend(["mount".to_owned(), "umount".to_owned()]);
    }

    // The demo on its own temporary root.
    let demo = a.run("demo", &[]);
    assert!(demo["steps"].as_array().unwrap().len() >= 8, "{demo}");

    assert_eq!(
        a.seen,
        documented_in_cli_md(),
        "the commands exercised here are the commands docs/cli.md documents JSON for"
    );
}
