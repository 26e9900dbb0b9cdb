//! `cargo xtask bench daemon`: several imports started at once on one
//! root, the way a build script pulls its base images in parallel, with
//! and without `strata serve` owning the root, against the same imports
//! one at a time. Each run gets a fresh root on the scratch file system
//! (`STRATA_BENCH_DIR`) but the daemon's: one daemon serves each case,
//! started before its first run and emptied after each (images removed,
//! everything collected), so its memory counts with the run's.
//!
//! - Four imports of one image (debian-python, `cargo xtask
//!   bench-images`; a small image in a quick run): through a daemon they
//!   share one fetch and one unpack; without one each process waits for
//!   the root's lock and then finds the work done.
//! - The gzip and zstd variants of the image at once: independent work
//!   that a daemon runs side by side.
//!
//! Peak memory counts the clients and, through a daemon, the daemon.
//! Overlay backend, as `--backend auto` picks for root.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use strata_testkit::bench::{self, Contender};

/// A daemon serving a case's root.
struct Served {
    child: Child,
    root: PathBuf,
}

impl Served {
    fn start(root: &Path) -> Served {
        bench::ok(bench::strata(root).args(["--backend", "overlay", "check"]));
        let child = bench::strata(root)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start strata serve");
        while !bench::strata(root)
            .args(["serve", "--check"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        Served {
            child,
            root: root.to_owned(),
        }
    }

    fn stop(mut self) {
        bench::sh(&format!("kill -TERM {}", self.child.id()));
        assert!(self.child.wait().unwrap().success(), "strata serve failed");
        bench::remove(&self.root);
    }
}

/// A script starting `imports` (image layout, name) on `root`, all at once
/// or one after another.
fn script(root: &Path, imports: &[(PathBuf, String)], at_once: bool) -> String {
    let strata = strata_testkit::cli::strata().display().to_string();
    let lines: Vec<String> = imports
        .iter()
        .map(|(layout, name)| {
            format!(
                "{strata} --root {} image import oci:{}:latest --name {name} >/dev/null{}",
                root.display(),
                layout.display(),
                if at_once { " &" } else { "" }
            )
        })
        .collect();
    // `wait PID` for each, so a failed import fails the script.
    if at_once {
        format!(
            "pids=(); {}; for p in \"${{pids[@]}}\"; do wait \"$p\"; done",
            lines
                .iter()
                .map(|l| format!("{l} pids+=($!)"))
                .collect::<Vec<_>>()
                .join("; ")
        )
    } else {
        lines.join(" && ")
    }
}

fn main() {
    let dir = bench::scratch();
    let images = bench::images(&dir);
    let version = bench::strata_version();
    let first = &images.names[0];
    let cases: Vec<(String, Vec<(PathBuf, String)>)> = vec![
        (
            format!("4 imports of {first} at once"),
            (0..4)
                .map(|i| (images.layout(first), format!("{first}-{i}")))
                .collect(),
        ),
        (
            format!("{} at once", images.names.join(" and ")),
            images
                .names
                .iter()
                .map(|n| (images.layout(n), n.clone()))
                .collect(),
        ),
    ];
    for (case, imports) in &cases {
        let root = |peer: &str, round: usize| dir.join(format!("root-{peer}-{round}"));
        // One daemon for the case, emptied after each run (images removed,
        // everything collected), so its memory is measured with the run's.
        let served = Served::start(&dir.join("root-daemon"));
        let empty = |_| {
            for (_, name) in imports {
                bench::ok(bench::strata(&served.root).args(["image", "rm", name]));
            }
            bench::ok(bench::strata(&served.root).arg("gc"));
            bench::ok(bench::strata(&served.root).arg("check"));
        };
        let mut contenders = [
            Contender::new("strata, at once through strata serve", &version, |_| {
                bench::bash(&script(&served.root, imports, true))
            })
            .daemons(&[served.child.id()])
            .after(empty),
            Contender::new("strata, at once without a daemon", &version, |r| {
                bench::bash(&script(&root("processes", r), imports, true))
            })
            .after(|r| bench::remove(&root("processes", r))),
            Contender::new("strata, one at a time", &version, |r| {
                bench::bash(&script(&root("sequential", r), imports, false))
            })
            .after(|r| bench::remove(&root("sequential", r))),
        ];
        let times = bench::side_by_side(&dir, true, &mut contenders);
        drop(contenders);
        served.stop();
        let figures: Vec<_> = times.iter().map(bench::Times::figure).collect();
        bench::record("daemon", case, &dir, &figures, &[]);
    }
}
