//! `cargo xtask bench oci`: images into a fresh root against containerd
//! 1.6 and containers/storage (the store of podman and buildah), on the
//! real Debian images (`cargo xtask bench-images`; a small image in a
//! quick run) and the scratch file system `STRATA_BENCH_DIR`, side by side
//! (`strata_testkit::bench`: cache dropped before each run, order rotated,
//! returned and durable times, peak memory), every contender a process:
//!
//! * import of debian-python (gzip, then zstd) from the same OCI archive
//!   (an OCI layout in a tar): `strata image import docker-archive:FILE`
//!   into a fresh root as shipped (layers unpacked in parallel, the
//!   headline) and with `--jobs 1` (one layer at a time), against `ctr
//!   images import FILE` into containerd's overlayfs snapshotter (a private
//!   containerd on the scratch directory, content isolated per namespace
//!   so every run ingests everything) and `skopeo copy oci-archive:FILE
//!   containers-storage:[overlay@ROOT+RUNROOT]NAME` into a fresh ROOT;
//! * as root with btrfs-progs, the same import on a fresh loop-mounted
//!   btrfs: `strata --backend btrfs image import` (every layer a subvolume
//!   snapshot of its parent) against `ctr images import --snapshotter
//!   btrfs` (containerd's btrfs snapshotter, a second private containerd
//!   whose root is on that btrfs);
//! * pull of the same images from a registry on 127.0.0.1 (Debian's
//!   docker-registry; pushed there by `strata image push`): `strata image
//!   pull` into a fresh root against `ctr images pull --plain-http`.
//!
//! containerd's peak memory is `ctr`'s plus the daemon's.

// This program reports on stdout by design.
#![allow(clippy::print_stdout)]

use std::path::Path;

use strata_testkit::bench::{self, Contender, Images};
use strata_testkit::containerd::Containerd;
use strata_testkit::registry::Registry;

fn bench_import(dir: &Path, images: &Images, ctrd: &Containerd) {
    let (par, seq, storage) = (dir.join("par"), dir.join("seq"), dir.join("storage"));
    let strata = bench::strata_version();
    let containerd = bench::version("containerd");
    for name in &images.names {
        let archive = images.archive(name);
        let import = |root: &Path, jobs: Option<&str>| {
            bench::remove(root);
            let mut cmd = bench::strata(root);
            cmd.args(["image", "import", "--name", "bench"])
                .arg(format!("docker-archive:{}", archive.display()));
            if let Some(n) = jobs {
                cmd.args(["--jobs", n]);
            }
            cmd
        };
        let mut contenders = [
            Contender::new("strata image import (layers in parallel)", &strata, |_| {
                import(&par, None)
            }),
            Contender::new(
                "strata image import --jobs 1 (one layer at a time)",
                &strata,
                |_| import(&seq, Some("1")),
            ),
            Contender::new("ctr images import (containerd)", &containerd, |r| {
                ctrd.import(&format!("{name}-{r}"), &archive, "overlayfs")
            })
            .daemons(&[ctrd.pid()]),
            Contender::new(
                "skopeo copy to containers-storage (podman, buildah)",
                &bench::version("skopeo"),
                |_| {
                    bench::remove(&storage);
                    let tmp = storage.join("tmp");
                    std::fs::create_dir_all(&tmp).unwrap();
                    let mut cmd = std::process::Command::new("skopeo");
                    cmd.arg("copy")
                        .arg(format!("oci-archive:{}", archive.display()))
                        .arg(format!(
                            "containers-storage:[overlay@{0}/root+{0}/run]bench/{name}:latest",
                            storage.display()
                        ))
                        // It unpacks the archive there first, on the file
                        // system measured (not /var/tmp).
                        .env("TMPDIR", &tmp);
                    cmd
                },
            ),
        ];
        let times = bench::side_by_side(dir, true, &mut contenders);
        for d in [&par, &seq, &storage] {
            bench::remove(d);
        }
        let figures: Vec<_> = times.iter().map(bench::Times::figure).collect();
        bench::record(
            "import",
            &format!("{name} from its OCI archive"),
            dir,
            &figures,
            &[],
        );
    }
}

/// A loop btrfs and a containerd whose root is on it.
struct OnBtrfs {
    // Stopped before the file system under it is unmounted.
    ctrd: Containerd,
    fs: strata_testkit::loopfs::LoopFs,
}

impl OnBtrfs {
    fn start() -> Option<OnBtrfs> {
        if !strata_testkit::loopfs::usable("bench oci: btrfs", "btrfs", "btrfs-progs") {
            println!("  (no loop btrfs here: btrfs figures skipped)");
            return None;
        }
        // Sparse; containerd keeps every run's import (one namespace each).
        let fs = strata_testkit::loopfs::LoopFs::new("btrfs", &["-q"], 64 << 30);
        let dir = fs.mnt_path().join("containerd");
        std::fs::create_dir_all(&dir).unwrap();
        let ctrd = Containerd::start(&dir);
        Some(OnBtrfs { ctrd, fs })
    }
}

fn bench_import_btrfs(images: &Images, on: &OnBtrfs) {
    let fs = on.fs.mnt_path();
    let root = fs.join("strata");
    for name in &images.names {
        let archive = images.archive(name);
        let mut contenders = [
            Contender::new(
                "strata --backend btrfs image import",
                &bench::strata_version(),
                |_| {
                    bench::remove(&root);
                    let mut cmd = bench::strata(&root);
                    cmd.args(["--backend", "btrfs", "image", "import", "--name", "bench"])
                        .arg(format!("docker-archive:{}", archive.display()));
                    cmd
                },
            ),
            Contender::new(
                "ctr images import --snapshotter btrfs (containerd)",
                &bench::version("containerd"),
                |r| on.ctrd.import(&format!("{name}-{r}"), &archive, "btrfs"),
            )
            .daemons(&[on.ctrd.pid()]),
        ];
        let times = bench::side_by_side(fs, true, &mut contenders);
        bench::remove(&root);
        let figures: Vec<_> = times.iter().map(bench::Times::figure).collect();
        bench::record(
            "import",
            &format!("{name} from its OCI archive, on btrfs"),
            fs,
            &figures,
            &[],
        );
    }
}

fn bench_pull(dir: &Path, images: &Images, ctrd: &Containerd) {
    let registry = Registry::start(None);
    // The images go into the registry through a staging root, blobs as
    // they are.
    let staging = dir.join("staging");
    for name in &images.names {
        bench::ok(
            bench::strata(&staging)
                .args(["image", "import", "--name", name])
                .arg(format!("oci:{}", images.layout(name).display())),
        );
        bench::ok(bench::strata(&staging).args([
            "image",
            "push",
            name,
            &format!("{}/bench/{name}:latest", registry.addr),
        ]));
    }
    bench::remove(&staging);
    let root = dir.join("pull");
    for name in &images.names {
        let reference = format!("{}/bench/{name}:latest", registry.addr);
        let mut contenders = [
            Contender::new("strata image pull", &bench::strata_version(), |_| {
                bench::remove(&root);
                let mut cmd = bench::strata(&root);
                cmd.args(["image", "pull", &reference]);
                cmd
            }),
            Contender::new(
                "ctr images pull (containerd)",
                &bench::version("containerd"),
                |r| ctrd.pull(&format!("pull-{name}-{r}"), &reference),
            )
            .daemons(&[ctrd.pid()]),
        ];
        let times = bench::side_by_side(dir, true, &mut contenders);
        bench::remove(&root);
        let figures: Vec<_> = times.iter().map(bench::Times::figure).collect();
        bench::record(
            "pull",
            &format!("{name} from a registry on 127.0.0.1"),
            dir,
            &figures,
            &[],
        );
    }
}

fn main() {
    let dir = bench::scratch();
    let images = bench::images(&dir);
    let ctrd_dir = dir.join("containerd");
    std::fs::create_dir_all(&ctrd_dir).unwrap();
    let ctrd = Containerd::start(&ctrd_dir);
    // `STRATA_BENCH_ONLY=pull|import|btrfs` runs one part.
    let only = std::env::var("STRATA_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "pull" {
        bench_pull(&dir, &images, &ctrd);
    }
    if only.is_empty() || only == "import" {
        bench_import(&dir, &images, &ctrd);
    }
    drop(ctrd);
    if (only.is_empty() || only == "import" || only == "btrfs")
        && let Some(on) = OnBtrfs::start()
    {
        bench_import_btrfs(&images, &on);
    }
}
