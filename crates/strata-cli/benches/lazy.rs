//! `cargo xtask bench lazy`: how soon an image can be used when pulled
//! over a realistic network. debian-python (`cargo xtask bench-images`; a
//! small image in a quick run) is pushed to a registry on 127.0.0.1 twice,
//! as its gzip layers and as eStargz (`strata image push --compression
//! estargz --force-compression`, untimed), and reached through a proxy on
//! loopback that holds the link to 100 Mbit/s with 10 ms each way
//! (`strata_testkit::throttle`). Timed, side by side, order rotated, the
//! page cache dropped before each run, each from nothing (a fresh root or
//! chunk cache):
//!
//! * `strata lazy mount` of the eStargz image (prefetch on, as by
//!   default), until `python3 --version` has run in it (chroot; in a quick
//!   run, the small image's tool read whole), and the same with
//!   `--no-prefetch` (only what the probe reads);
//! * `strata image pull --lazy` of the eStargz image into a fresh root
//!   (manifest, config and the layers' TOCs), then `strata image mount` of it (prefetch
//!   on), until the same probe has run;
//! * a build step's start in a root: `strata image pull --lazy`, then
//!   `strata image attach` of the image (prefetch on), `strata ref new` on
//!   its top ref and `strata mount --rw` of that, until the same probe has
//!   run in the writable mount;
//! * `strata image pull` of the gzip image, `strata mount` of its ref, and
//!   the same probe;
//! * the stargz snapshotter, containerd's remote snapshotter for eStargz
//!   (`tests/go/stargz-peer`, built from Debian's sources, as containerd's
//!   proxy snapshotter, with its defaults: background fetch on): `ctr-remote
//!   images rpull` of the eStargz image, a view of its top snapshot mounted
//!   (what `ctr images mount` would mount, had it not insisted on unpacking
//!   blobs a lazy pull never fetched), and the same probe. containerd and the snapshotter are started before the
//!   clock and stopped after it, fresh each run.
//!
//! A second case times `strata image pull` of the eStargz image into a
//! fresh root, from nothing and with `--lazy-cache` after a lazy mount
//! (prefetch on, left until it says prefetch has finished, untimed)
//! has read the image: what the mount fetched and kept is not fetched
//! again. The pulled ref is mounted and probed after the clock.
//!
//! Each figure's detail gives the bytes the proxy had sent when the probe
//! returned, or during the pull (the median run's). The probe's output is checked (Python's version line), so a
//! mount that serves wrong bytes fails the run.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use strata_testkit::bench::{self, Figure};
use strata_testkit::containerd::Containerd;
use strata_testkit::registry::Registry;
use strata_testkit::throttle::Throttle;

/// 100 Mbit/s.
const BYTES_PER_SEC: u64 = 12_500_000;
/// Each way.
const DELAY: Duration = Duration::from_millis(10);

/// Runs the probe in the image mounted on `dir`: Python's version, or in
/// a quick run the small image's tool read whole.
fn probe(dir: &Path) {
    if bench::quick() {
        let tool = std::fs::read(dir.join("usr/bin/tool")).expect("read the tool");
        assert_eq!(tool, vec![7u8; 100_000], "the tool's bytes");
        return;
    }
    let out = Command::new("chroot")
        .arg(dir)
        .args(["/usr/bin/python3", "--version"])
        .output()
        .expect("run chroot");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("Python 3."),
        "python3 --version in the mounted image: {text:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The next JSON value `out` prints.
fn next_value(out: &mut BufReader<std::process::ChildStdout>) -> Value {
    serde_json::Deserializer::from_reader(out)
        .into_iter::<Value>()
        .next()
        .expect("strata lazy mount printed nothing")
        .expect("strata lazy mount printed JSON")
}

fn stop(mut child: Child) {
    bench::ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let status = child.wait().expect("wait for strata lazy mount");
    assert!(status.success(), "strata lazy mount ended with {status}");
}

/// `strata lazy mount` of `reference`.
fn lazy_mount(reference: &str) -> Command {
    let mut cmd = Command::new(strata_testkit::cli::strata());
    cmd.args(["--json", "lazy", "mount", reference]);
    cmd
}

/// `mount` (`strata lazy mount` or `image mount` of an image) on `mnt`,
/// once it serves, and its output (kept open until it stops: it prints
/// its report then).
fn serve(
    mut mount: Command,
    mnt: &Path,
    cache: &Path,
    prefetch: bool,
) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = mount
        .arg(mnt)
        .arg("--cache")
        .arg(cache)
        .args(if prefetch {
            &[][..]
        } else {
            &["--no-prefetch"][..]
        })
        .stdout(Stdio::piped())
        .spawn()
        .expect("start strata lazy mount");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    next_value(&mut out);
    (child, out)
}

/// A lazy round: until the probe ran, and the bytes sent by then.
fn lazy_round(
    reference: &str,
    mnt: &Path,
    cache: &Path,
    proxy: &Throttle,
    prefetch: bool,
) -> (Duration, u64) {
    std::fs::create_dir_all(mnt).unwrap();
    let before = proxy.bytes_down();
    let start = Instant::now();
    let (child, _out) = serve(lazy_mount(reference), mnt, cache, prefetch);
    probe(mnt);
    let took = start.elapsed();
    let bytes = proxy.bytes_down() - before;
    stop(child);
    bench::remove(cache);
    (took, bytes)
}

/// A round in a root: `strata image pull --lazy` into a fresh one, then
/// `strata image mount` of the image (prefetch on), until the probe ran,
/// and the bytes sent by then.
fn root_round(reference: &str, mnt: &Path, state: &Path, proxy: &Throttle) -> (Duration, u64) {
    std::fs::create_dir_all(mnt).unwrap();
    let root = state.join("root");
    let before = proxy.bytes_down();
    let start = Instant::now();
    bench::ok(bench::strata(&root).args(["image", "pull", reference, "--lazy", "--name", "img"]));
    let mut mount = bench::strata(&root);
    mount.args(["--json", "image", "mount", "img"]);
    let (child, _out) = serve(mount, mnt, &state.join("cache"), true);
    probe(mnt);
    let took = start.elapsed();
    let bytes = proxy.bytes_down() - before;
    stop(child);
    bench::remove(state);
    (took, bytes)
}

/// A build step's round in a root: `strata image pull --lazy` into a
/// fresh one, `strata image attach` of the image (prefetch on), a new ref
/// on its top ref mounted writable, until the probe ran in that mount, and
/// the bytes sent by then.
fn step_round(reference: &str, mnt: &Path, state: &Path, proxy: &Throttle) -> (Duration, u64) {
    std::fs::create_dir_all(mnt).unwrap();
    let root = state.join("root");
    let text = |cmd: &mut Command| {
        let out = cmd.output().expect("run strata");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    };
    let before = proxy.bytes_down();
    let start = Instant::now();
    let pulled: Value = serde_json::from_str(&text(bench::strata(&root).args([
        "--json", "image", "pull", reference, "--lazy", "--name", "img",
    ])))
    .unwrap();
    let top = pulled["ref"].as_str().expect("a ref id").to_owned();
    let mut child = bench::strata(&root)
        .args(["--json", "image", "attach", "img", "--cache"])
        .arg(state.join("cache"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start strata image attach");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    next_value(&mut out);
    let step = text(bench::strata(&root).args(["ref", "new", &top]));
    bench::ok(
        bench::strata(&root)
            .arg("mount")
            .arg(step.trim())
            .arg(mnt)
            .arg("--rw"),
    );
    probe(mnt);
    let took = start.elapsed();
    let bytes = proxy.bytes_down() - before;
    bench::ok(bench::strata(&root).arg("umount").arg(mnt));
    stop(child);
    bench::remove(state);
    (took, bytes)
}

/// A pull round: `strata image pull` of the eStargz image into a fresh
/// root, timed, with the bytes the proxy sent meanwhile. With
/// `after_mount`, a lazy mount (prefetch on) first reads the image and is
/// left until it says its prefetch has finished, then
/// stopped, untimed, and the pull takes its cache (`--lazy-cache`). The
/// pulled ref is mounted and probed afterwards, untimed.
fn pull_round(
    reference: &str,
    mnt: &Path,
    state: &Path,
    proxy: &Throttle,
    after_mount: bool,
) -> (Duration, u64) {
    std::fs::create_dir_all(mnt).unwrap();
    let cache = state.join("cache");
    let root = state.join("root");
    if after_mount {
        let (child, mut out) = serve(lazy_mount(reference), mnt, &cache, true);
        probe(mnt);
        let limit = strata_testkit::cli::KillAfter::new(child.id(), Duration::from_secs(600));
        let prefetched = next_value(&mut out);
        drop(limit);
        assert_eq!(
            prefetched["prefetched"], true,
            "lazy mount said {prefetched}"
        );
        stop(child);
    }
    let mut pull = bench::strata(&root);
    pull.args(["--json", "image", "pull", reference, "--name", "img"]);
    if after_mount {
        pull.arg("--lazy-cache").arg(&cache);
    }
    // Both pulls start from a cold page cache, the kept blobs included.
    bench::drop_caches();
    let before = proxy.bytes_down();
    let start = Instant::now();
    let out = pull.output().expect("run strata image pull");
    let took = start.elapsed();
    let bytes = proxy.bytes_down() - before;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pulled: Value = serde_json::from_slice(&out.stdout).unwrap();
    if after_mount {
        assert!(
            pulled["lazy_cache"]["blobs"].as_u64() > Some(0),
            "nothing taken from the cache: {pulled}"
        );
    }
    let id = pulled["ref"].as_str().expect("a ref id").to_owned();
    bench::ok(bench::strata(&root).arg("mount").arg(&id).arg(mnt));
    probe(mnt);
    bench::ok(bench::strata(&root).arg("umount").arg(mnt));
    bench::remove(state);
    (took, bytes)
}

/// An eager round: pull, mount, probe.
fn eager_round(reference: &str, mnt: &Path, root: &Path, proxy: &Throttle) -> (Duration, u64) {
    std::fs::create_dir_all(mnt).unwrap();
    let before = proxy.bytes_down();
    let start = Instant::now();
    let out = bench::strata(root)
        .args(["--json", "image", "pull", reference, "--name", "img"])
        .output()
        .expect("run strata image pull");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pulled: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = pulled["ref"].as_str().expect("a ref id").to_owned();
    bench::ok(bench::strata(root).arg("mount").arg(&id).arg(mnt));
    probe(mnt);
    let took = start.elapsed();
    let bytes = proxy.bytes_down() - before;
    bench::ok(bench::strata(root).arg("umount").arg(mnt));
    bench::remove(root);
    (took, bytes)
}

/// A stargz snapshotter round: rpull, mount, probe.
fn stargz_round(
    reference: &str,
    mnt: &Path,
    state: &Path,
    proxy: &Throttle,
    peer: &Path,
) -> (Duration, u64) {
    std::fs::create_dir_all(mnt).unwrap();
    std::fs::create_dir_all(state).unwrap();
    let socket = state.join("stargz.sock");
    let mut snapshotter = Peer {
        child: Command::new(peer)
            .arg("-root")
            .arg(state.join("peer"))
            .arg("-address")
            .arg(&socket)
            .stderr(std::fs::File::create(state.join("peer.log")).unwrap())
            .spawn()
            .expect("start the stargz snapshotter"),
        state: state.to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline && snapshotter.child.try_wait().unwrap().is_none(),
            "the stargz snapshotter did not start: {}",
            std::fs::read_to_string(state.join("peer.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::create_dir_all(state.join("containerd")).unwrap();
    let containerd = Containerd::start_with(
        &state.join("containerd"),
        &format!(
            "[proxy_plugins]\n  [proxy_plugins.stargz]\n    type = \"snapshot\"\n    address = \"{}\"\n",
            socket.display()
        ),
    );
    let before = proxy.bytes_down();
    let start = Instant::now();
    let pulled = Command::new("ctr-remote")
        .arg("--address")
        .arg(containerd.socket())
        .args([
            "images",
            "rpull",
            "--plain-http",
            "--snapshotter",
            "stargz",
            reference,
        ])
        .output()
        .expect("run ctr-remote (stargz-snapshotter)");
    assert!(
        pulled.status.success(),
        "ctr-remote images rpull: {}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    // `ctr images mount` unpacks first, which needs the blobs a lazy pull
    // never fetched; a view of the image's top snapshot (named by the
    // chain ID of its config's diffIDs) is what it would mount.
    let top = top_chain_id(&containerd, reference);
    // The view's mounts are printed as it is made: the view has no lease,
    // so containerd's collector may remove its record at any moment (it
    // did, between a view and a later `mounts`); the mount outlives it.
    let mounts = containerd.ctr_out(&[
        "snapshots",
        "--snapshotter",
        "stargz",
        "view",
        "--target",
        &mnt.display().to_string(),
        "probe",
        &top,
    ]);
    let script = String::from_utf8_lossy(&mounts.stdout);
    assert!(
        mounts.status.success() && script.contains("mount"),
        "ctr snapshots view: {script} {}",
        String::from_utf8_lossy(&mounts.stderr)
    );
    bench::ok(&mut bench::bash(&script));
    probe(mnt);
    let took = start.elapsed();
    let bytes = proxy.bytes_down() - before;
    bench::ok(Command::new("umount").arg(mnt));
    drop(containerd);
    drop(snapshotter);
    bench::remove(state);
    (took, bytes)
}

/// The chain ID of image `reference`'s layers, from the manifest and
/// config containerd fetched: the snapshot that holds the whole image.
fn top_chain_id(containerd: &Containerd, reference: &str) -> String {
    let get = |digest: &str| -> Value {
        let out = containerd.ctr_out(&["content", "get", digest]);
        assert!(out.status.success(), "ctr content get {digest}");
        serde_json::from_slice(&out.stdout).expect("a JSON document")
    };
    let listed = containerd.ctr_out(&["images", "ls"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    let manifest = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reference))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("{reference} is not in: {text}"));
    let config = get(manifest)["config"]["digest"]
        .as_str()
        .expect("a config digest")
        .to_owned();
    let diff_ids = get(&config)["rootfs"]["diff_ids"].clone();
    let mut chain = String::new();
    for id in diff_ids.as_array().expect("diffIDs") {
        let id = id.as_str().expect("a diffID");
        chain = if chain.is_empty() {
            id.to_owned()
        } else {
            strata_core::Digest::of_bytes(
                strata_core::Algorithm::Sha256,
                format!("{chain} {id}").as_bytes(),
            )
            .to_string()
        };
    }
    chain
}

/// The running stargz snapshotter of a round; stopped when dropped (also
/// when the round panics), which unmounts its layers, and whatever is
/// still mounted under its state is detached.
struct Peer {
    child: Child,
    state: PathBuf,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().is_ok_and(|s| s.is_none()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = strata_sys::mount::detach_below(&self.state);
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn main() {
    let dir = bench::scratch();
    let images = bench::images(&dir);
    let name = &images.names[0];
    let layout = images.layout(name);
    let registry = Registry::start(None);
    let setup = dir.join("setup-root");
    bench::ok(bench::strata(&setup).args([
        "image",
        "import",
        &format!("oci:{}", layout.display()),
        "--name",
        "img",
    ]));
    let esgz = format!("{}/bench:estargz", registry.addr);
    let gzip = format!("{}/bench:gzip", registry.addr);
    bench::ok(bench::strata(&setup).args([
        "image",
        "push",
        "img",
        &esgz,
        "--compression",
        "estargz",
        "--force-compression",
    ]));
    bench::ok(bench::strata(&setup).args(["image", "push", "img", &gzip]));
    bench::remove(&setup);
    let proxy = Throttle::start(&registry.addr, BYTES_PER_SEC, DELAY);
    let via = |r: &str| r.replacen(&registry.addr, &proxy.addr, 1);
    let (esgz, gzip) = (via(&esgz), via(&gzip));

    let mnt = |r: usize| dir.join(format!("mnt-{r}"));
    let scratch = |r: usize| -> PathBuf { dir.join(format!("state-{r}")) };
    let peer = strata_testkit::go::stargz_peer(&dir.join("go"));
    let contenders: [(&str, Round<'_>); 6] = [
        (
            "strata lazy mount (eStargz)",
            Box::new(|r| lazy_round(&esgz, &mnt(r), &scratch(r), &proxy, true)),
        ),
        (
            "strata image pull --lazy + image mount (eStargz)",
            Box::new(|r| root_round(&esgz, &mnt(r), &scratch(r), &proxy)),
        ),
        (
            "strata image pull --lazy + image attach + ref new + mount --rw (eStargz)",
            Box::new(|r| step_round(&esgz, &mnt(r), &scratch(r), &proxy)),
        ),
        (
            "strata lazy mount --no-prefetch (eStargz)",
            Box::new(|r| lazy_round(&esgz, &mnt(r), &scratch(r), &proxy, false)),
        ),
        (
            "strata image pull + mount (gzip)",
            Box::new(|r| eager_round(&gzip, &mnt(r), &scratch(r), &proxy)),
        ),
        (
            "stargz snapshotter rpull + mount (eStargz)",
            Box::new(|r| stargz_round(&esgz, &mnt(r), &scratch(r), &proxy, &peer)),
        ),
    ];
    let version = bench::strata_version();
    let stargz = format!(
        "stargz-snapshotter {}; {}",
        strata_testkit::go::sources_version(),
        bench::version("containerd")
    );
    let usable = rounds(&contenders, "usable after");
    let tools = [&version, &version, &version, &version, &version, &stargz];
    bench::record(
        "lazy",
        &format!(
            "{name} from a registry at 100 Mbit/s and 10 ms each way: until {}",
            if bench::quick() {
                "a 100 kB file is read"
            } else {
                "python3 --version has run"
            }
        ),
        &dir,
        &figures(&contenders, usable, &tools, "fetched until usable"),
        &[],
    );

    // The same image pulled into a root, after a lazy mount has read it
    // (prefetch left to finish), from the mount's cache: what the mount
    // fetched is not fetched again.
    let pulls: [(&str, Round<'_>); 2] = [
        (
            "strata image pull --lazy-cache after a lazy mount (eStargz)",
            Box::new(|r| pull_round(&esgz, &mnt(r), &scratch(r), &proxy, true)),
        ),
        (
            "strata image pull (eStargz)",
            Box::new(|r| pull_round(&esgz, &mnt(r), &scratch(r), &proxy, false)),
        ),
    ];
    let pulled = rounds(&pulls, "pulled in");
    bench::record(
        "lazy",
        &format!("{name} pulled into a root from a registry at 100 Mbit/s and 10 ms each way"),
        &dir,
        &figures(&pulls, pulled, &[&version, &version], "fetched by the pull"),
        &[],
    );
}

/// A contender: its name, and a round of it (given the round's number):
/// how long it took and the bytes the proxy sent meanwhile.
type Round<'a> = Box<dyn Fn(usize) -> (Duration, u64) + 'a>;

/// Runs every contender a warm-up round (not in a quick run) and then
/// `bench::runs()` rounds, side by side, order rotated, the page cache
/// dropped before each: each contender's times and bytes.
fn rounds(contenders: &[(&str, Round<'_>)], what: &str) -> Vec<(Vec<Duration>, Vec<u64>)> {
    let mut seen: Vec<(Vec<Duration>, Vec<u64>)> = vec![Default::default(); contenders.len()];
    let warmup = usize::from(!bench::quick());
    for round in 0..warmup + bench::runs() {
        for i in (0..contenders.len()).map(|k| (k + round) % contenders.len()) {
            bench::drop_caches();
            let (took, bytes) = (contenders[i].1)(round);
            eprintln!(
                "    {} (round {round}): {what} {:.3}s, {} fetched{}",
                contenders[i].0,
                took.as_secs_f64(),
                mib(bytes),
                if round < warmup { " (warm-up)" } else { "" }
            );
            if round >= warmup {
                seen[i].0.push(took);
                seen[i].1.push(bytes);
            }
        }
    }
    seen
}

/// The contenders' figures: median times, and the median run's bytes as
/// "N MiB `what`".
fn figures(
    contenders: &[(&str, Round<'_>)],
    seen: Vec<(Vec<Duration>, Vec<u64>)>,
    tools: &[&String],
    what: &str,
) -> Vec<Figure> {
    contenders
        .iter()
        .zip(seen)
        .zip(tools)
        .map(|(((peer, _), (times, mut bytes)), tool)| {
            bytes.sort_unstable();
            Figure {
                peer: (*peer).to_owned(),
                tool: (*tool).clone(),
                runs: times.len(),
                returned: bench::median(times),
                durable: None,
                peak_kib: None,
                detail: Some(format!("{} {what}", mib(bytes[bytes.len() / 2]))),
            }
        })
        .collect()
}
