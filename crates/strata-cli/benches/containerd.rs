//! `cargo xtask bench containerd`: containerd 1.6 unpacking the real Debian
//! image (`cargo xtask bench-images`) into Strata through `strata serve`
//! (its proxy snapshotter) against containerd's own overlayfs snapshotter:
//! `ctr images import --snapshotter strata|overlayfs` of the same OCI
//! archive into a fresh namespace each run (content isolated, so each run
//! ingests and unpacks everything), alternating, on the scratch file system
//! `STRATA_BENCH_DIR`; one warm-up round, medians of the runs and the
//! median of the pairwise ratios.

// This program reports on stdout by design.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use strata_testkit::bench::{median, median_f, warm};
use strata_testkit::containerd::Containerd;

const RUNS: usize = 3;

fn main() {
    let dir = PathBuf::from(
        std::env::var_os("STRATA_BENCH_DIR").expect("run through cargo xtask bench containerd"),
    );
    let images = strata_testkit::bench_images();
    let socket = dir.join("strata.sock");
    let mut strata = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--root")
        .arg(dir.join("strata-root"))
        .args(["--backend", "overlay", "serve", "--containerd-socket"])
        .arg(&socket)
        .stdout(Stdio::null())
        .spawn()
        .expect("start strata serve");
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let cdir = dir.join("containerd");
    std::fs::create_dir_all(&cdir).unwrap();
    let ctrd = Containerd::start_with(
        &cdir,
        &format!(
            "[proxy_plugins]\n  [proxy_plugins.strata]\n    type = \"snapshot\"\n    address = \"{}\"\n",
            socket.display()
        ),
    );
    println!("bench containerd (scratch {}):", dir.display());
    for name in ["debian-python", "debian-python-zstd"] {
        let archive = images.join("archives").join(format!("{name}.oci.tar"));
        let (mut s, mut o, mut ratios) = (vec![], vec![], vec![]);
        for run in 0..=RUNS {
            warm(&dir);
            let a = ctrd.import(&format!("s-{name}-{run}"), &archive, "strata");
            warm(&dir);
            let b = ctrd.import(&format!("o-{name}-{run}"), &archive, "overlayfs");
            if run > 0 {
                s.push(a);
                o.push(b);
                ratios.push(a.as_secs_f64() / b.as_secs_f64());
            }
        }
        strata_testkit::bench::record(
            "containerd",
            &format!("ctr images import {name}"),
            &[
                ("strata serve (proxy snapshotter)", median(s.clone())),
                ("overlayfs snapshotter", median(o.clone())),
            ],
        );
        println!(
            "  ctr images import {name}: into strata {:.2}s, into overlayfs {:.2}s; strata / overlayfs {:.2}",
            median(s).as_secs_f64(),
            median(o).as_secs_f64(),
            median_f(ratios)
        );
    }
    drop(ctrd);
    let _ = Command::new("kill")
        .args(["-TERM", &strata.id().to_string()])
        .status();
    let _ = strata.wait();
}
