//! `strata serve` as containerd's proxy snapshotter, for real: a private
//! containerd (Debian's 1.6) whose `proxy_plugins` names Strata's socket
//! imports a multi-layer OCI archive into Strata, `ctr snapshots` lists,
//! inspects, mounts and removes, the mounted top equals what Strata's own
//! import makes, and removing the image in containerd empties Strata's
//! store. containerd runs real containers (runc, a busybox image) on
//! Strata's snapshots of either backend, commits one and starts another on
//! the commit. containerd's own snapshotter test suite (Go, from Debian's
//! containerd sources) runs against the socket beside containerd's
//! overlayfs snapshotter: every case overlayfs passes, Strata passes. And
//! the socket rules: stale replaced, live refused, 0600, SIGTERM exits 0.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use strata_testkit::cli::Env;
use strata_testkit::containerd::Containerd;
use strata_testkit::layer_tar::{archive, entry};
use strata_testkit::oci_layout::Layout;
use tar::EntryType;

fn env() -> Env {
    Env::strata()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `strata serve` on `socket`, stopped (SIGTERM) by [`Served::stop`].
struct Served {
    child: Child,
    socket: PathBuf,
}

impl Served {
    fn start(env: &Env, socket: &Path, backend: &str) -> Served {
        let mut child = env
            .cmd(&[
                "--backend",
                backend,
                "serve",
                "--containerd-socket",
                &s(socket),
            ])
            .stdout(Stdio::null())
            // A file, not a pipe nobody reads: a chatty server never blocks.
            .stderr(fs::File::create(env.path("serve.log")).expect("serve log"))
            .spawn()
            .expect("start strata serve");
        let log = || fs::read_to_string(env.path("serve.log")).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("strata serve exited with {status}: {}", log());
            }
            assert!(
                Instant::now() < deadline,
                "strata serve did not listen on {}: {}",
                socket.display(),
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Served {
            child,
            socket: socket.to_owned(),
        }
    }

    /// SIGTERM; the exit code.
    fn stop(mut self) -> i32 {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = self.child.wait().unwrap();
        assert!(!self.socket.exists(), "the socket is removed at exit");
        status.code().unwrap_or(-1)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private containerd (in `e`'s directory) whose `strata` proxy
/// snapshotter is the server on `socket`.
fn containerd_on(e: &Env, socket: &Path) -> Containerd {
    let cdir = e.path("containerd");
    fs::create_dir_all(&cdir).unwrap();
    Containerd::start_with(
        &cdir,
        &format!(
            "[proxy_plugins]\n  [proxy_plugins.strata]\n    type = \"snapshot\"\n    address = \"{}\"\n",
            s(socket)
        ),
    )
}

/// A three-layer image (a deletion, an opaque directory) as an OCI layout
/// and as the OCI archive `ctr images import` takes.
fn image(dir: &Path) -> (PathBuf, PathBuf) {
    let none: &[u8] = b"";
    let layout = dir.join("layout");
    let l = Layout::new(&layout);
    let m = l.image(&[
        archive(&[
            entry("etc/", EntryType::Directory, none, ""),
            entry("etc/gone", EntryType::Regular, b"x", ""),
            entry("usr/", EntryType::Directory, none, ""),
            entry("usr/doc/", EntryType::Directory, none, ""),
            entry("usr/doc/old", EntryType::Regular, b"old", ""),
            entry("bin/", EntryType::Directory, none, ""),
            entry("bin/tool", EntryType::Regular, b"#!/bin/sh\n", ""),
            entry("bin/alias", EntryType::Symlink, none, "tool"),
        ]),
        archive(&[
            entry("etc/.wh.gone", EntryType::Regular, none, ""),
            entry("etc/new", EntryType::Regular, b"new", ""),
        ]),
        archive(&[
            entry("usr/doc/", EntryType::Directory, none, ""),
            entry("usr/doc/.wh..wh..opq", EntryType::Regular, none, ""),
            entry("usr/doc/fresh", EntryType::Regular, b"fresh", ""),
        ]),
    ]);
    let mut d = m.desc("application/vnd.oci.image.manifest.v1+json");
    d["annotations"] = json!({
        "org.opencontainers.image.ref.name": "latest",
        "io.containerd.image.name": "localhost/strata/test:latest",
    });
    l.index(vec![d]);
    let tarball = tar_layout(&layout, &dir.join("image.oci.tar"));
    (layout, tarball)
}

/// Tars the OCI layout at `layout` into `tarball`, as `ctr images import`
/// reads it.
fn tar_layout(layout: &Path, tarball: &Path) -> PathBuf {
    let ok = Command::new("tar")
        .args(["-C", &s(layout), "-cf", &s(tarball), "."])
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar {}", tarball.display());
    tarball.to_path_buf()
}

fn below_root(tree: &str) -> String {
    tree.lines().skip(1).collect::<Vec<_>>().join("\n")
}

#[test]
fn containerd_unpacks_images_into_strata() {
    let name = "containerd_unpacks_images_into_strata";
    if !strata_testkit::require_root(name)
        || !strata_testkit::require_tools(name, strata_testkit::CONTAINERD_TOOLS)
    {
        return;
    }
    let e = env();
    let (layout, tarball) = image(e.tmp.path());
    let socket = e.path("strata.sock");
    let served = Served::start(&e, &socket, "overlay");
    let mode = fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let ctrd = containerd_on(&e, &socket);
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "ctr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(ctrd.ctr_out(&["images", "import", "--snapshotter", "strata", &s(&tarball)]));

    // Every layer is a committed snapshot in Strata.
    let listed = ok(ctrd.ctr_out(&["snapshots", "--snapshotter", "strata", "ls"]));
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{listed}");
    assert!(
        rows.iter().all(|r| r.trim_end().ends_with("Committed")),
        "{listed}"
    );
    // The top is the one no other names as parent.
    let keys: Vec<&str> = rows
        .iter()
        .map(|r| r.split_whitespace().next().unwrap())
        .collect();
    let parents: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.split_whitespace().nth(1))
        .collect();
    let top = keys
        .iter()
        .find(|k| !parents.contains(k))
        .unwrap()
        .to_string();
    let info = ok(ctrd.ctr_out(&["snapshots", "--snapshotter", "strata", "info", &top]));
    assert!(info.contains("\"Kind\": \"Committed\""), "{info}");
    let usage = ok(ctrd.ctr_out(&["snapshots", "--snapshotter", "strata", "usage", &top]));
    assert!(usage.contains(&top), "{usage}");

    // A snapshot over the top, mounted the way ctr says, is the tree
    // Strata's own import makes of the same image. `prepare` labels it
    // `containerd.io/gc.root`; a `view` has no label and no lease, so
    // containerd's own collector may take it whenever it runs.
    ok(ctrd.ctr_out(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "prepare",
        "strata-on-top",
        &top,
    ]));
    let target = e.path("view");
    fs::create_dir_all(&target).unwrap();
    let mount = ok(ctrd.ctr_out(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "mounts",
        &s(&target),
        "strata-on-top",
    ]));
    assert!(mount.starts_with("mount -t overlay"), "{mount}");
    assert!(
        Command::new("sh")
            .args(["-c", &mount])
            .status()
            .unwrap()
            .success(),
        "{mount}"
    );
    let via_containerd = strata_testkit::tree::render(&target);
    assert!(
        Command::new("umount")
            .arg(&target)
            .status()
            .unwrap()
            .success()
    );
    ok(ctrd.ctr_out(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "rm",
        "strata-on-top",
    ]));

    let own = env();
    let got = own
        .run(&["--json", "image", "import", &format!("oci:{}", s(&layout))])
        .expect(0)
        .json();
    let mnt = own.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    own.run(&["mount", got["ref"].as_str().unwrap(), &s(&mnt)])
        .expect(0);
    let via_strata = strata_testkit::tree::render(&mnt);
    own.run(&["umount", &s(&mnt)]).expect(0);
    assert_eq!(below_root(&via_containerd), below_root(&via_strata));
    assert!(via_strata.contains("/usr/doc/fresh") && !via_strata.contains("/usr/doc/old"));

    // containerd decides what goes: removing the image empties Strata.
    ok(ctrd.ctr_out(&["images", "rm", "--sync", "localhost/strata/test:latest"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = ok(ctrd.ctr_out(&["snapshots", "--snapshotter", "strata", "ls"]));
        if left.lines().nth(1).is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "containerd's GC left {left}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(ctrd);
    assert_eq!(served.stop(), 0);
    assert_eq!(
        e.run(&["--json", "snapshot", "ls"]).expect(0).json(),
        json!([])
    );
    e.run(&["check"]).expect(0);
    let left = fs::read_dir(e.root.join("snapshots")).unwrap().count();
    assert_eq!(left, 0, "no snapshot directory is left");
}

/// What a test that runs containers needs beside containerd: runc, and a
/// static busybox to be the image's shell.
const CONTAINER_TOOLS: &[(&str, &str)] = &[
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("busybox", "busybox-static"),
];

/// The image's name in containerd.
const BUSYBOX_IMAGE: &str = "localhost/strata/busybox:latest";

/// Whether the 64-bit little-endian ELF `bytes` asks for no program
/// interpreter: a dynamically linked busybox (Debian's `busybox` rather
/// than `busybox-static`) would not run in a root without libc, and would
/// fail inside runc with an error that names neither.
fn is_static_elf(bytes: &[u8]) -> bool {
    let int = |at: usize, len: usize| {
        bytes
            .get(at..at + len)
            .map(|b| b.iter().rev().fold(0usize, |n, &x| n << 8 | usize::from(x)))
    };
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (int(32, 8), int(54, 2), int(56, 2)) else {
        return false;
    };
    // PT_INTERP is program header type 3.
    (0..phnum).all(|i| int(phoff + i * phentsize, 4).is_some_and(|t| t != 3))
}

/// A two-layer image whose shell is the host's static busybox: `bin/`
/// (busybox, `sh`) and `data/seed`, with the platform of the host. Returns
/// the OCI archive `ctr images import` takes.
fn busybox_image(dir: &Path) -> PathBuf {
    let busybox = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("busybox"))
        .find(|p| p.is_file())
        .expect("busybox is on the PATH");
    let bytes = fs::read(&busybox).unwrap();
    assert!(
        is_static_elf(&bytes),
        "{} is not a static executable (install busybox-static)",
        busybox.display()
    );
    // The executable's mode matters here, which `entry`'s fixed modes
    // cannot give.
    let header = |kind, mode, size| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h
    };
    let mut bin = tar::Builder::new(Vec::new());
    let top = &mut header(EntryType::Directory, 0o755, 0);
    bin.append_data(top, "bin/", std::io::empty()).unwrap();
    let exe = &mut header(EntryType::Regular, 0o755, bytes.len() as u64);
    bin.append_data(exe, "bin/busybox", &bytes[..]).unwrap();
    let link = &mut header(EntryType::Symlink, 0o777, 0);
    bin.append_link(link, "bin/sh", "busybox").unwrap();
    let none: &[u8] = b"";
    let layers = [
        bin.into_inner().unwrap(),
        archive(&[
            entry("data/", EntryType::Directory, none, ""),
            entry("data/seed", EntryType::Regular, b"from the image\n", ""),
        ]),
    ];
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let layout = dir.join("busybox-layout");
    let l = Layout::new(&layout);
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| strata_testkit::oci_layout::sha256(l))
        .collect();
    let descs = layers
        .iter()
        .map(|t| {
            l.blob(&strata_testkit::oci_layout::gzip(t))
                .desc("application/vnd.oci.image.layer.v1.tar+gzip")
        })
        .collect();
    let config = l.json(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }));
    let mut d = l
        .manifest(&config, descs)
        .desc("application/vnd.oci.image.manifest.v1+json");
    d["annotations"] = json!({
        "org.opencontainers.image.ref.name": "latest",
        "io.containerd.image.name": BUSYBOX_IMAGE,
    });
    l.index(vec![d]);
    tar_layout(&layout, &dir.join("busybox.oci.tar"))
}

/// Strata's snapshots (`strata --json snapshot ls`), by name.
fn strata_snapshots(e: &Env) -> BTreeMap<String, serde_json::Value> {
    let listed = e.run(&["--json", "snapshot", "ls"]).expect(0).json();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_owned(), i.clone()))
        .collect()
}

/// containerd runs real containers (runc) on Strata's snapshots: an image
/// with a busybox shell is imported into `strata serve` on a fresh root of
/// `backend`; a first container writes a file and deletes one of the
/// image's; its active snapshot, read by Strata's own command line with the
/// server paused, holds both changes; `ctr snapshots commit` makes it a
/// committed snapshot, and a second container whose root is a snapshot
/// prepared on it sees the first one's write and deletion. Removing every
/// container, snapshot and the image through containerd leaves Strata
/// empty and `strata check` clean.
fn containerd_runs_containers_on(backend: &str) {
    let name = format!("containerd_runs_containers_on_strata_{backend}");
    if !strata_testkit::require_root(&name)
        || !strata_testkit::require_tools(&name, CONTAINER_TOOLS)
    {
        return;
    }
    let e = env();
    let tarball = busybox_image(e.tmp.path());
    let socket = e.path("strata.sock");
    let mut served = Served::start(&e, &socket, backend);
    let ctrd = containerd_on(&e, &socket);
    // A namespace and container ids of their own: runc's state directory
    // and the containers' cgroups are per namespace and id, shared by every
    // containerd on the machine, and the two backends' tests run at once.
    let ns = format!("strata-{backend}");
    let (first, second) = (format!("{ns}-first"), format!("{ns}-second"));
    let ctr = |args: &[&str]| {
        let mut all = vec!["-n", ns.as_str()];
        all.extend(args);
        let out = ctrd.ctr_out(&all);
        assert!(
            out.status.success(),
            "ctr {}: {}{}",
            all.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ctr(&["images", "import", "--snapshotter", "strata", &s(&tarball)]);

    // The first container writes a file and deletes one of the image's.
    let said = ctr(&[
        "run",
        "--snapshotter",
        "strata",
        BUSYBOX_IMAGE,
        &first,
        "/bin/sh",
        "-c",
        "echo written by the first container > /data/out && /bin/busybox rm /data/seed && echo ran",
    ]);
    assert_eq!(said.trim(), "ran", "the first container's output");

    // Strata's own view of the container's snapshot, with the server
    // paused (it owns the root): containerd's key for it (namespace, id,
    // key) names an active snapshot on the image's top layer, holding the
    // write and the deletion.
    assert_eq!(served.stop(), 0);
    let snapshots = strata_snapshots(&e);
    let (key, active) = snapshots
        .iter()
        .find(|(k, _)| k.ends_with(&format!("/{first}")))
        .unwrap_or_else(|| panic!("no snapshot of the container in Strata: {snapshots:#?}"));
    assert_eq!(active["kind"], "active", "{active}");
    let parent = active["parent"].as_str().expect("the container's parent");
    assert_eq!(snapshots[parent]["kind"], "committed");
    assert_eq!(
        snapshots.len(),
        3,
        "two layers and the container: {snapshots:#?}"
    );
    let mnt = e.path("first");
    fs::create_dir_all(&mnt).unwrap();
    e.run(&["mount", key, &s(&mnt)]).expect(0);
    let out = fs::read_to_string(mnt.join("data/out"));
    let seed_left = mnt.join("data/seed").exists();
    e.run(&["umount", &s(&mnt)]).expect(0);
    assert_eq!(out.unwrap(), "written by the first container\n");
    assert!(!seed_left, "the container's deletion is in its snapshot");
    e.run(&["check"]).expect(0);
    served = Served::start(&e, &socket, backend);
    // containerd's client reconnects with a backoff: it is back once a
    // call goes through.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ctrd
        .ctr(&["-n", &ns, "snapshots", "--snapshotter", "strata", "ls"])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(
            Instant::now() < deadline,
            "containerd did not reach the restarted server"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Committed under a name of containerd's, then the root of a second
    // container: a snapshot prepared on it, mounted as Strata says (1.6's
    // `ctr run` starts from an image or a root directory, never from a
    // snapshot key, so the mount is this test's and runc gets the
    // directory).
    let committed = format!("{ns}-committed");
    let rootfs_key = format!("{ns}-second-rootfs");
    ctr(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "commit",
        &committed,
        &first,
    ]);
    let info = ctr(&["snapshots", "--snapshotter", "strata", "info", &committed]);
    assert!(info.contains("\"Kind\": \"Committed\""), "{info}");
    ctr(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "prepare",
        &rootfs_key,
        &committed,
    ]);
    let rootfs = e.path("second");
    fs::create_dir_all(&rootfs).unwrap();
    let mount = ctr(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "mounts",
        &s(&rootfs),
        &rootfs_key,
    ]);
    let mounted = Command::new("sh").args(["-c", &mount]).status().unwrap();
    assert!(mounted.success(), "{mount}");
    let said = ctrd.ctr_out(&[
        "-n",
        &ns,
        "run",
        "--rm",
        "--rootfs",
        &s(&rootfs),
        &second,
        "/bin/sh",
        "-c",
        "/bin/busybox cat /data/out && test ! -e /data/seed && echo seed gone",
    ]);
    let unmounted = Command::new("umount").arg(&rootfs).status().unwrap();
    assert!(
        said.status.success(),
        "the second container: {}{}",
        String::from_utf8_lossy(&said.stdout),
        String::from_utf8_lossy(&said.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&said.stdout),
        "written by the first container\nseed gone\n"
    );
    assert!(unmounted.success());

    // containerd decides what goes: the container (whose key the commit
    // consumed), the snapshots and the image, then its collector.
    ctr(&["containers", "rm", &first]);
    ctr(&["snapshots", "--snapshotter", "strata", "rm", &rootfs_key]);
    ctr(&["snapshots", "--snapshotter", "strata", "rm", &committed]);
    ctr(&["images", "rm", "--sync", BUSYBOX_IMAGE]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = ctr(&["snapshots", "--snapshotter", "strata", "ls"]);
        if left.lines().nth(1).is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "containerd's GC left {left}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ctr(&["containers", "ls", "-q"]), "");
    drop(ctrd);
    assert_eq!(served.stop(), 0);
    assert_eq!(strata_snapshots(&e), BTreeMap::new());
    // What containerd leaves behind is the lease `strata serve` holds its
    // snapshots with, holding nothing.
    let leases = e.run(&["--json", "lease", "ls"]).expect(0).json();
    let ids: Vec<&str> = leases
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["containerd/snapshots"]);
    let held = e.run(&["--json", "lease", "resources", "containerd/snapshots"]);
    assert_eq!(held.expect(0).json(), json!([]));
    e.run(&["check"]).expect(0);
    let left = fs::read_dir(e.root.join("snapshots")).unwrap().count();
    assert_eq!(left, 0, "no snapshot directory is left");
}

#[test]
fn containerd_runs_containers_on_strata_overlay() {
    containerd_runs_containers_on("overlay");
}

#[test]
fn containerd_runs_containers_on_strata_native() {
    containerd_runs_containers_on("native");
}

/// The results of a `go test -v` run: (test, case) -> PASS|FAIL|SKIP.
fn results(out: &str) -> BTreeMap<(String, String), String> {
    let mut r = BTreeMap::new();
    for line in out.lines() {
        let t = line.trim_start();
        for verdict in ["PASS", "FAIL", "SKIP"] {
            if let Some(rest) = t.strip_prefix(&format!("--- {verdict}: ")) {
                let name = rest.split_whitespace().next().unwrap_or_default();
                if let Some((test, case)) = name.split_once('/') {
                    r.insert((test.to_owned(), case.to_owned()), verdict.to_owned());
                }
            }
        }
    }
    r
}

#[test]
fn containerds_snapshotter_suite_passes_against_strata() {
    let name = "containerds_snapshotter_suite_passes_against_strata";
    if !strata_testkit::require_root(name)
        || !strata_testkit::require_tools(
            name,
            &[
                ("go", "golang-go"),
                (
                    "/usr/share/gocode/src/github.com/containerd/containerd/snapshots/testsuite",
                    "golang-github-containerd-containerd-dev",
                ),
            ],
        )
    {
        return;
    }
    // Built over Debian's Go sources of containerd (GOPATH mode: nothing
    // is downloaded).
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let binary = target.join("containerd-suite.test");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/strata-containerd/go");
    let build = strata_testkit::go::go(&target.join("gocache"))
        .args(["test", "-c", "-o", &s(&binary), "."])
        .current_dir(&src)
        .output()
        .expect(
            "run go (golang-go and golang-github-containerd-containerd-dev; .ci/run installs them)",
        );
    assert!(
        build.status.success(),
        "go test -c: {}",
        String::from_utf8_lossy(&build.stderr)
    );

    let e = env();
    let socket = e.path("strata.sock");
    let served = Served::start(&e, &socket, "overlay");
    let run = Command::new(&binary)
        .args([
            "-test.v",
            "-test.root",
            "-test.parallel",
            "1",
            "-test.timeout",
            "10m",
        ])
        .current_dir(e.tmp.path())
        .env("STRATA_SOCKET", &socket)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    let verdicts = results(&out);
    let of = |test: &str, verdict: &str| -> Vec<String> {
        verdicts
            .iter()
            .filter(|((t, _), v)| t == test && *v == verdict)
            .map(|((_, c), _)| c.clone())
            .collect()
    };
    let (overlay_pass, strata_pass) = (of("TestOverlayfs", "PASS"), of("TestStrata", "PASS"));
    assert!(overlay_pass.len() >= 20, "containerd's suite ran: {out}");
    let missing: Vec<&String> = overlay_pass
        .iter()
        .filter(|c| !strata_pass.contains(c))
        .collect();
    assert!(
        missing.is_empty(),
        "cases overlayfs passes and Strata does not: {missing:?}\n{out}"
    );
    assert!(of("TestStrata", "FAIL").is_empty(), "{out}");
    eprintln!(
        "containerd's snapshotter suite: strata passed {} (skipped {:?}); overlayfs passed {}",
        strata_pass.len(),
        of("TestStrata", "SKIP"),
        overlay_pass.len()
    );
    assert_eq!(served.stop(), 0);
    assert_eq!(
        e.run(&["--json", "snapshot", "ls"]).expect(0).json(),
        json!([])
    );
}

#[test]
fn the_socket_is_replaced_when_stale_and_refused_when_live() {
    let e = env();
    let socket = e.path("strata.sock");
    // A socket nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let served = Served::start(&e, &socket, "native");
    // A second server on the same socket (another root) is refused.
    let other = env();
    let run = other.run(&[
        "--backend",
        "native",
        "serve",
        "--containerd-socket",
        &s(&socket),
    ]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stderr.contains("another server is listening"),
        "{}",
        run.stderr
    );
    assert_eq!(served.stop(), 0);
    // Something that is not a socket is never deleted.
    fs::write(&socket, "precious").unwrap();
    let run = other.run(&[
        "--backend",
        "native",
        "serve",
        "--containerd-socket",
        &s(&socket),
    ]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert_eq!(fs::read_to_string(&socket).unwrap(), "precious");
}

/// The daemon serves strata's own commands while containerd imports
/// through it: `du`, `prune --dry-run`, `image import` and `check` on the
/// root all succeed while `ctr images import` runs in a loop (each in a
/// namespace of its own, so each really unpacks), and the root checks
/// clean afterwards.
#[test]
fn strata_commands_run_while_containerd_imports_through_the_daemon() {
    let name = "strata_commands_run_while_containerd_imports_through_the_daemon";
    if !strata_testkit::require_root(name)
        || !strata_testkit::require_tools(name, strata_testkit::CONTAINERD_TOOLS)
    {
        return;
    }
    let e = env();
    let (layout, tarball) = image(e.tmp.path());
    let socket = e.path("strata.sock");
    let served = Served::start(&e, &socket, "native");
    let ctrd = containerd_on(&e, &socket);
    const IMPORTS: usize = 6;
    let importing = std::sync::atomic::AtomicBool::new(true);
    let rounds = std::thread::scope(|scope| {
        let imports = scope.spawn(|| {
            for i in 0..IMPORTS {
                let ns = format!("{name}-{i}");
                let out = ctrd.ctr_out(&[
                    "-n",
                    &ns,
                    "images",
                    "import",
                    "--snapshotter",
                    "strata",
                    &s(&tarball),
                ]);
                assert!(
                    out.status.success(),
                    "ctr import {i}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            importing.store(false, std::sync::atomic::Ordering::Release);
        });
        let mut rounds = 0;
        while importing.load(std::sync::atomic::Ordering::Acquire) || rounds == 0 {
            let source = format!("oci:{}:latest", s(&layout));
            let image = format!("side-{rounds}");
            for args in [
                &["du"][..],
                &["prune", "--dry-run"],
                &["image", "import", &source, "--name", &image],
                &["check"],
            ] {
                let out = e.run(args);
                assert_eq!(
                    out.code,
                    0,
                    "strata {}: {} {}",
                    args.join(" "),
                    out.stderr,
                    out.text()
                );
            }
            rounds += 1;
        }
        imports.join().unwrap();
        rounds
    });
    assert_eq!(e.run(&["check"]).expect(0).text().trim(), "clean");
    // containerd's snapshots are Strata's: every import's layers committed.
    let listed = ctrd.ctr_out(&[
        "-n",
        &format!("{name}-0"),
        "snapshots",
        "--snapshotter",
        "strata",
        "ls",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).lines().count(),
        4,
        "three layers and a header"
    );
    eprintln!("{rounds} rounds of strata commands beside {IMPORTS} containerd imports");
    drop(ctrd);
    assert_eq!(served.stop(), 0);
}
