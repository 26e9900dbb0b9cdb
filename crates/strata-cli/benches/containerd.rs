//! `cargo xtask bench containerd`: containerd 1.6 unpacking the real Debian
//! image (`cargo xtask bench-images`; a small image in a quick run) into
//! Strata through `strata serve` (its proxy snapshotter) against
//! containerd's own overlayfs snapshotter: `ctr images import --snapshotter
//! strata|overlayfs` of the same OCI archive into a fresh namespace each
//! run (content isolated, so each run ingests and unpacks everything), on
//! the scratch file system `STRATA_BENCH_DIR`, side by side
//! (`strata_testkit::bench`: cache dropped before each run, order rotated,
//! returned and durable times). Peak memory is `ctr`'s plus containerd's,
//! plus `strata serve`'s for Strata.

use std::process::Stdio;
use std::time::Duration;

use strata_testkit::bench::{self, Contender};
use strata_testkit::containerd::Containerd;

fn main() {
    let dir = bench::scratch();
    let images = bench::images(&dir);
    let socket = dir.join("strata.sock");
    let mut strata = bench::strata(&dir.join("strata-root"))
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
    let containerd = bench::version("containerd");
    let through_strata = format!("{}; {containerd}", bench::strata_version());
    for name in &images.names {
        let archive = images.archive(name);
        let mut contenders = [
            Contender::new("strata serve (proxy snapshotter)", &through_strata, |r| {
                ctrd.import(&format!("s-{name}-{r}"), &archive, "strata")
            })
            .daemons(&[ctrd.pid(), strata.id()]),
            Contender::new("overlayfs snapshotter", &containerd, |r| {
                ctrd.import(&format!("o-{name}-{r}"), &archive, "overlayfs")
            })
            .daemons(&[ctrd.pid()]),
        ];
        let times = bench::side_by_side(&dir, true, &mut contenders);
        let figures: Vec<_> = times.iter().map(bench::Times::figure).collect();
        bench::record(
            "containerd",
            &format!("ctr images import {name}"),
            &dir,
            &figures,
            &[],
        );
    }
    drop(ctrd);
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &strata.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(stopped, "stop strata serve");
    assert!(strata.wait().unwrap().success(), "strata serve failed");
}
