//! `strata lazy mount` against a real registry on 127.0.0.1: an image
//! pushed as eStargz is mounted before it is downloaded (a script runs from
//! it), reads the same tree as the eager import of that image (whiteouts
//! and an opaque directory across two layers included); a registry stopped
//! mid-read gives the reader EIO and the next read, once the registry is
//! back, the right bytes; a second mount over the same cache fetches no
//! TOC and no chunk again; plain gzip layers are fetched whole and unpacked once,
//! alone or under and over eStargz ones, and one that does not match its
//! digest leaves nothing; a mount outlives its registry token; a root's
//! image pulled lazily mounts from its snapshots and the registry, alone
//! or through the root's daemon.

use std::fs;
use std::io::BufReader;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use serde_json::{Value, json};
use strata_testkit::cli::Env;
use strata_testkit::oci_layout::{Layout, gzip, sha256};
use strata_testkit::registry::Registry;
use strata_testkit::token_gate::TokenGate;
use strata_testkit::tree::render;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// GNU tar of `dir` (PAX, with xattrs), as a layer.
fn tar(dir: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["--format=pax", "--xattrs", "--xattrs-include=*", "-C"])
        .arg(dir)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

/// Two layers: a tree with a script, a large file, links and a directory
/// of manuals; then one that deletes a file and replaces the manuals.
fn layers(env: &Env) -> Vec<Vec<u8>> {
    let base = env.path("base");
    fs::create_dir_all(base.join("usr/share/man/man1")).unwrap();
    fs::create_dir_all(base.join("etc")).unwrap();
    fs::write(base.join("usr/share/man/man1/old.1"), "old page").unwrap();
    fs::write(base.join("etc/gone"), "deleted above").unwrap();
    fs::write(base.join("usr/tool"), "#!/bin/sh\necho lazy hello\n").unwrap();
    fs::set_permissions(
        base.join("usr/tool"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    fs::hard_link(base.join("usr/tool"), base.join("usr/tool-again")).unwrap();
    std::os::unix::fs::symlink("tool", base.join("usr/tool-link")).unwrap();
    let big: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(base.join("usr/big.bin"), &big).unwrap();
    strata_testkit::random_tree::populate(
        &base.join("usr"),
        &mut strata_testkit::crash::Rng::new(11),
        60,
    );
    strata_testkit::random_tree::utf8_names_only(&base);
    let top = env.path("top");
    fs::create_dir_all(top.join("usr/share/man")).unwrap();
    fs::create_dir_all(top.join("etc")).unwrap();
    fs::write(top.join("etc/.wh.gone"), "").unwrap();
    fs::write(top.join("usr/share/man/.wh..wh..opq"), "").unwrap();
    fs::write(top.join("usr/share/man/new.1"), "new page").unwrap();
    vec![tar(&base), tar(&top)]
}

/// Among the `extra` options of [`LazyMount::try_start`]: leave prefetch
/// on (the tests' mounts fetch only what they read otherwise).
const PREFETCH: &str = "(prefetch)";

/// `strata image mount`, for [`LazyMount::started`].
const IMAGE_MOUNT: &[&str] = &["image", "mount"];

/// A running `strata lazy mount` (or `image mount`); stopped with SIGTERM when dropped, so
/// a failed test leaves nothing mounted.
struct LazyMount {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl LazyMount {
    /// Starts `strata lazy mount` and returns once it says it is serving,
    /// with what it said.
    fn start(env: &Env, reference: &str, dir: &Path, cache: &Path) -> (LazyMount, Value) {
        LazyMount::start_with(env, reference, dir, cache, &[])
    }

    /// [`LazyMount::start`] with `extra` options.
    fn start_with(
        env: &Env,
        reference: &str,
        dir: &Path,
        cache: &Path,
        extra: &[&str],
    ) -> (LazyMount, Value) {
        LazyMount::started(&["lazy", "mount"], env, reference, dir, cache, extra)
    }

    /// `command` (`lazy mount`, [`IMAGE_MOUNT`]) started, or the test
    /// failed with what it said.
    fn started(
        command: &[&str],
        env: &Env,
        what: &str,
        dir: &Path,
        cache: &Path,
        extra: &[&str],
    ) -> (LazyMount, Value) {
        match LazyMount::spawn(env, command, what, Some(dir), cache, extra) {
            (Some(m), said) => (m, serde_json::from_str(&said).unwrap()),
            (None, err) => panic!("{} {what} failed: {err}", command.join(" ")),
        }
    }

    /// Starts `strata lazy mount`: the mount and its JSON line once it
    /// serves, or no mount and what it wrote on stderr when it failed.
    /// Prefetch is off unless `extra` has [`PREFETCH`].
    fn try_start(
        env: &Env,
        reference: &str,
        dir: &Path,
        cache: &Path,
        extra: &[&str],
    ) -> (Option<LazyMount>, String) {
        LazyMount::spawn(env, &["lazy", "mount"], reference, Some(dir), cache, extra)
    }

    /// `strata image attach NAME`, serving, with what it said; or what it
    /// wrote on stderr when it failed.
    fn attach(env: &Env, name: &str, cache: &Path) -> Result<(LazyMount, Value), String> {
        match LazyMount::spawn(env, &["image", "attach"], name, None, cache, &[]) {
            (Some(m), said) => Ok((m, serde_json::from_str(&said).unwrap())),
            (None, err) => Err(err),
        }
    }

    /// [`LazyMount::try_start`] of `command` (`lazy mount`, `image mount`,
    /// or, without `dir`, `image attach`).
    fn spawn(
        env: &Env,
        command: &[&str],
        reference: &str,
        dir: Option<&Path>,
        cache: &Path,
        extra: &[&str],
    ) -> (Option<LazyMount>, String) {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        if let Some(dir) = dir {
            fs::create_dir_all(dir).unwrap();
        }
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = env.path(&format!("lazy-mount-{run}.stderr"));
        let prefetch = match extra.contains(&PREFETCH) {
            true => None,
            false => Some("--no-prefetch"),
        };
        let mut child = env
            .cmd(&["--json"])
            .args(command)
            .arg(reference)
            .args(dir)
            .args(["--cache", &s(cache)])
            .args(prefetch)
            .args(extra.iter().filter(|a| **a != PREFETCH))
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut m = LazyMount { child, out };
        let said = {
            let _limit = strata_testkit::cli::KillAfter::new(m.child.id(), START_LIMIT);
            serde_json::Deserializer::from_reader(&mut m.out)
                .into_iter::<Value>()
                .next()
        };
        match said {
            Some(Ok(v)) => (Some(m), v.to_string()),
            _ => {
                m.exit_within(STOP_LIMIT);
                (None, fs::read_to_string(&log).unwrap_or_default())
            }
        }
    }

    /// The next JSON value the command prints, within `limit` (else the
    /// command is killed and this panics).
    fn next_value_within(&mut self, limit: std::time::Duration) -> Value {
        let _limit = strata_testkit::cli::KillAfter::new(self.child.id(), limit);
        self.next_value()
    }

    /// The next JSON value the command prints.
    fn next_value(&mut self) -> Value {
        serde_json::Deserializer::from_reader(&mut self.out)
            .into_iter::<Value>()
            .next()
            .expect("lazy mount printed nothing more")
            .expect("lazy mount printed JSON")
    }

    fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Kills it (SIGKILL): what it mounted on DIR stays.
    fn kill(mut self) {
        let sent = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        self.child.wait().unwrap();
    }

    /// Stops it with SIGTERM: its exit code and final report (a line
    /// saying prefetch has finished is passed over).
    fn stop(mut self) -> (i32, Value) {
        self.terminate();
        let mut report = self.next_value_within(STOP_LIMIT);
        if report.get("prefetched").is_some() {
            report = self.next_value_within(STOP_LIMIT);
        }
        let code = self.exit_within(STOP_LIMIT);
        (code.expect("lazy mount did not exit after SIGTERM"), report)
    }

    /// Its exit code once it exits, within `limit`; else it is killed and
    /// this is `None`.
    fn exit_within(&mut self, limit: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

/// How long a mount may take to report and exit after SIGTERM (its own
/// unmount waits at most 5 s for its layers).
const STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a mount may take to serve (it fetches every TOC and unpacks
/// the plain layers first).
const START_LIMIT: std::time::Duration = std::time::Duration::from_secs(180);

impl Drop for LazyMount {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
            self.exit_within(STOP_LIMIT);
        }
    }
}

/// The listing of `dir` without the root's own line.
fn listing(dir: &Path) -> String {
    render(dir).lines().skip(1).collect::<Vec<_>>().join("\n")
}

/// An image of `layers` imported as NAME (eagerly) and pushed to the
/// registry as eStargz under NAME:v1: the eager import's listing and the
/// pushed reference.
fn publish(env: &Env, registry: &Registry, name: &str, layers: &[Vec<u8>]) -> (String, String) {
    let layout = Layout::new(&env.path(&format!("layout-{name}")));
    let manifest = layout.image(layers);
    layout.tag(&manifest, "v1");
    let src = format!("oci:{}:v1", s(&env.path(&format!("layout-{name}"))));
    let id = env.import(&src, name);
    let reference = format!("{}/{name}:v1", registry.addr);
    env.run(&[
        "image",
        "push",
        name,
        &reference,
        "--compression",
        "estargz",
        "--force-compression",
    ])
    .expect(0);
    let eager = env.path(&format!("eager-{name}"));
    fs::create_dir(&eager).unwrap();
    env.run(&["mount", &id, &s(&eager)]).expect(0);
    let want = listing(&eager);
    env.run(&["umount", &s(&eager)]).expect(0);
    (want, reference)
}

#[test]
fn an_estargz_image_is_used_before_it_is_downloaded() {
    let env = Env::strata();
    let mut registry = Registry::start(None);
    let (want, lazy_ref) = publish(&env, &registry, "lazy", &layers(&env));
    let plain_ref = format!("{}/plain:v1", registry.addr);
    env.run(&["image", "push", "lazy", &plain_ref]).expect(0);

    let (mnt, cache) = (env.path("mnt"), env.path("the cache"));
    let (lazy, mounted) = LazyMount::start(&env, &lazy_ref, &mnt, &cache);
    assert_eq!(mounted["layers"].as_array().unwrap().len(), 2, "{mounted}");
    // Before any file is read, only the footers and TOCs came over.
    let blob_bytes: u64 = fs::read_dir(env.path("layout-lazy/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        mounted["bytes_fetched"].as_u64().unwrap() < blob_bytes / 4,
        "{mounted}"
    );
    let out = Command::new(mnt.join("usr/tool")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "lazy hello\n");

    // The registry goes away: reading what was not fetched gives EIO.
    registry.stop();
    let err = fs::read(mnt.join("usr/big.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "{err}");
    registry.restart();
    let big = fs::read(mnt.join("usr/big.bin")).unwrap();
    assert_eq!(big.len(), 6_000_000);
    assert_eq!(big, fs::read(env.path("base/usr/big.bin")).unwrap());

    // The whole tree, read lazily, is the eager import's.
    assert_eq!(listing(&mnt), want);
    let (code, first) = lazy.stop();
    assert_eq!(code, 0, "{first}");
    assert!(first["chunks_fetched"].as_u64().unwrap() > 0, "{first}");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&s(&mnt)), "left mounted: {mountinfo}");

    // The chunks stay in the cache: a second mount fetches none again,
    // nor the TOCs.
    let (lazy, remounted) = LazyMount::start(&env, &lazy_ref, &mnt, &cache);
    assert_eq!(remounted["requests"], 0, "{remounted}");
    assert_eq!(listing(&mnt), want);
    let (code, second) = lazy.stop();
    assert_eq!(code, 0);
    assert_eq!(second["chunks_fetched"], 0, "{second}");

    // Pruned to nothing, the cache gives the next mount nothing: it
    // fetches the TOCs again and reads the same tree.
    let pruned = env
        .run(&["--json", "lazy", "prune", "--cache", &s(&cache)])
        .expect(0)
        .json();
    assert!(pruned["removed"].as_u64().unwrap() > 2, "{pruned}");
    assert_eq!(
        (&pruned["kept"], &pruned["kept_bytes"]),
        (&json!(0), &json!(0))
    );
    let (lazy, bare) = LazyMount::start(&env, &lazy_ref, &mnt, &cache);
    assert!(bare["requests"].as_u64().unwrap() >= 2, "{bare}");
    assert_eq!(listing(&mnt), want);
    assert!(lazy.stop().1["chunks_fetched"].as_u64().unwrap() > 0);
    let run = env.run(&["lazy", "prune", "--cache", &s(&env.path("nowhere"))]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("nowhere"), "{}", run.stderr);

    // Plain gzip layers cannot be read lazily: each is fetched whole and
    // unpacked into the cache once, and the image reads the same.
    let (plain, said) = LazyMount::start(&env, &plain_ref, &mnt, &cache);
    let kinds: Vec<&Value> = said["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["lazy"])
        .collect();
    assert_eq!(kinds, [false, false], "{said}");
    assert_eq!(listing(&mnt), want);
    assert_eq!(plain.stop().0, 0);
    let (plain, again) = LazyMount::start(&env, &plain_ref, &mnt, &cache);
    assert_eq!(again["bytes_fetched"], 0, "unpacked again: {again}");
    assert_eq!(listing(&mnt), want);
    // Pruning keeps the unpacked layers a running mount stacks on, and
    // removes them once it has stopped; the next mount unpacks them anew.
    let prune = || {
        env.run(&["--json", "lazy", "prune", "--cache", &s(&cache)])
            .expect(0)
            .json()
    };
    let busy = prune();
    assert_eq!(busy["in_use"], 2, "{busy}");
    assert_eq!(listing(&mnt), want);
    // Killed, the mount leaves its overlay on DIR, and no lock: the
    // layers stay as long as that overlay does.
    plain.kill();
    // When a layer was last used is the time of its lock file, which a
    // prune leaves as it is.
    let lock_times = || {
        let mut times: Vec<_> = fs::read_dir(cache.join("layers"))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".lock"))
            .map(|e| (e.file_name(), e.metadata().unwrap().modified().unwrap()))
            .collect();
        times.sort();
        times
    };
    let used = lock_times();
    assert_eq!(used.len(), 2, "{used:?}");
    let orphaned = prune();
    assert_eq!(orphaned["in_use"], 2, "{orphaned}");
    assert_eq!(lock_times(), used, "a prune counted as a use of the layers");
    // Named relatively, the cache is found in the mount table all the same.
    let relative = env
        .cmd(&["--json", "lazy", "prune", "--cache", "the cache"])
        .current_dir(cache.parent().unwrap())
        .output()
        .unwrap();
    assert!(relative.status.success(), "{relative:?}");
    let relative: Value = serde_json::from_slice(&relative.stdout).unwrap();
    assert_eq!(relative["in_use"], 2, "{relative}");
    assert_eq!(listing(&mnt), want);
    let unmounted = Command::new("umount").arg(&mnt).status().unwrap();
    assert!(unmounted.success());
    // A lock file whose layer is gone, as earlier versions left them.
    fs::write(cache.join("layers/.gone-long-ago.lock"), "").unwrap();
    let idle = prune();
    assert_eq!(
        (&idle["in_use"], &idle["kept"]),
        (&json!(0), &json!(0)),
        "{idle}"
    );
    assert!(
        idle["removed_bytes"].as_u64().unwrap() > 6_000_000,
        "{idle}"
    );
    // The layers' lock files went with them.
    let left: Vec<_> = fs::read_dir(cache.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the cache's layers: {left:?}");
    let (plain, anew) = LazyMount::start(&env, &plain_ref, &mnt, &cache);
    assert!(anew["bytes_fetched"].as_u64().unwrap() > 0, "{anew}");
    assert_eq!(listing(&mnt), want);
    assert_eq!(plain.stop().0, 0);
}

/// The layer blobs of image `name` in `env`'s root: digests and sizes.
fn layer_blobs(env: &Env, name: &str) -> Vec<(String, u64)> {
    let layers = env.image_layers(name);
    let blob = |l: &Value| {
        (
            l["digest"].as_str().unwrap().to_owned(),
            l["size"].as_u64().unwrap(),
        )
    };
    layers.iter().map(blob).collect()
}

#[test]
fn a_pull_takes_the_bytes_lazy_mounts_fetched() {
    let env = Env::strata();
    let registry = Registry::start(None);
    let (want, lazy_ref) = publish(&env, &registry, "kept", &layers(&env));
    let plain_ref = format!("{}/kept-plain:v1", registry.addr);
    env.run(&["image", "push", "kept", &plain_ref]).expect(0);
    // Pulls go through a proxy that counts what it sends.
    let proxy = strata_testkit::throttle::Throttle::start(
        &registry.addr,
        1 << 30,
        std::time::Duration::ZERO,
    );
    let through = |r: &str| r.replacen(&registry.addr, &proxy.addr, 1);

    // Told not to, a mount keeps nothing.
    let (mnt, cache) = (env.path("mnt"), env.path("cache"));
    let unkept = env.path("unkept");
    let (lazy, _) = LazyMount::start_with(&env, &lazy_ref, &mnt, &unkept, &["--no-keep-blobs"]);
    fs::read(mnt.join("usr/big.bin")).unwrap();
    assert_eq!(lazy.stop().0, 0);
    assert!(!unkept.join("blobs").exists());

    // A lazy mount reads the large file, then stops.
    let (lazy, _) = LazyMount::start(&env, &lazy_ref, &mnt, &cache);
    assert_eq!(fs::read(mnt.join("usr/big.bin")).unwrap().len(), 6_000_000);
    let (code, read) = lazy.stop();
    assert_eq!(code, 0, "{read}");
    let mount_fetched = read["bytes_fetched"].as_u64().unwrap();

    // A pull into another root takes what the mount fetched and fetches
    // only the rest.
    let pull = |env: &Env, reference: &str, cache: &Path| {
        let before = proxy.bytes_down();
        let got = env
            .run(&[
                "--json",
                "image",
                "pull",
                &through(reference),
                "--name",
                "pulled",
                "--lazy-cache",
                &s(cache),
            ])
            .expect(0);
        (got.json(), proxy.bytes_down() - before, got.stderr)
    };
    // Both blobs taken whole from the cache: under 64 KiB came down
    // (the manifest and the config).
    let took_all = |pulled: &Value, down: u64| {
        assert_eq!(
            (
                &pulled["lazy_cache"]["blobs"],
                &pulled["lazy_cache"]["fetched_bytes"]
            ),
            (&json!(2), &json!(0)),
            "{pulled}"
        );
        assert!(down < 64 * 1024, "{down} bytes came down: {pulled}");
    };
    let other = Env::strata();
    let (pulled, down, _) = pull(&other, &lazy_ref, &cache);
    let total: u64 = layer_blobs(&other, "pulled").iter().map(|l| l.1).sum();
    let kept = &pulled["lazy_cache"];
    assert_eq!(kept["blobs"], 2, "{pulled}");
    let kept_bytes = kept["kept_bytes"].as_u64().unwrap();
    assert!(
        kept_bytes * 3 > total && kept_bytes <= mount_fetched,
        "{pulled}"
    );
    assert_eq!(
        kept_bytes + kept["fetched_bytes"].as_u64().unwrap(),
        total,
        "{pulled}"
    );
    assert!(
        down < total - kept_bytes + 64 * 1024,
        "{down} bytes came down: {pulled}"
    );
    let eager = other.path("eager");
    fs::create_dir(&eager).unwrap();
    other
        .run(&["mount", pulled["ref"].as_str().unwrap(), &s(&eager)])
        .expect(0);
    assert_eq!(listing(&eager), want);
    other.run(&["umount", &s(&eager)]).expect(0);
    // Labelled as fetched blobs are: a push to another repository of the
    // registry mounts them rather than uploading them.
    let pushed = other
        .run(&[
            "--json",
            "image",
            "push",
            "pulled",
            &through(&format!("{}/kept-again:1", registry.addr)),
        ])
        .expect(0)
        .json();
    assert_eq!(
        (&pushed["uploaded"], &pushed["mounted"]),
        (&json!(0), &json!(3)),
        "two layers and the config: {pushed}"
    );

    // A mount whose prefetch has finished has every blob whole: the
    // pull downloads no blob byte, only the manifest and the config.
    let whole = env.path("whole");
    let (lazy, _) = LazyMount::start_with(&env, &lazy_ref, &mnt, &whole, &[PREFETCH]);
    let mut lazy = lazy;
    let prefetched = lazy.next_value_within(std::time::Duration::from_secs(120));
    assert_eq!(
        (&prefetched["prefetched"], &prefetched["blobs_whole"]),
        (&json!(true), &json!(2)),
        "{prefetched}"
    );
    assert_eq!(lazy.stop().0, 0);
    let (pulled, down, _) = pull(&Env::strata(), &lazy_ref, &whole);
    took_all(&pulled, down);
    // So does a lazy pull into a root, then its unlazy from that cache:
    // the lazy refs are filled from the kept blobs.
    let lazy_root = Env::strata();
    let recorded = lazy_root
        .run(&[
            "--json",
            "image",
            "pull",
            &through(&lazy_ref),
            "--lazy",
            "--name",
            "lz",
        ])
        .expect(0)
        .json();
    assert_eq!(recorded["lazy"], 2, "{recorded}");
    let before = proxy.bytes_down();
    let unlazied = lazy_root
        .run(&[
            "--json",
            "image",
            "unlazy",
            "lz",
            "--lazy-cache",
            &s(&whole),
        ])
        .expect(0)
        .json();
    assert_eq!(unlazied["ref"], recorded["ref"], "{unlazied}");
    assert_eq!(unlazied["fetched"], 0, "{unlazied}");
    took_all(&unlazied, proxy.bytes_down() - before);
    lazy_root
        .run(&["mount", unlazied["ref"].as_str().unwrap(), &s(&eager)])
        .expect(0);
    assert_eq!(listing(&eager), want);
    lazy_root.run(&["umount", &s(&eager)]).expect(0);

    // Plain layers a mount unpacked were fetched whole: a pull fetches
    // none of their bytes.
    let (plain, _) = LazyMount::start(&env, &plain_ref, &mnt, &cache);
    assert_eq!(plain.stop().0, 0);
    let third = Env::strata();
    let (pulled, down, _) = pull(&third, &plain_ref, &cache);
    took_all(&pulled, down);

    // A kept blob that is not what its digest says is removed, and the
    // pull fetches it: the root gets the right tree.
    let layer = layer_blobs(&third, "pulled")[0].0.clone();
    let hex = layer.strip_prefix("sha256:").unwrap();
    let kept_file = cache.join("blobs/sha256").join(hex);
    let mut bytes = fs::read(&kept_file).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&kept_file, bytes).unwrap();
    let fourth = Env::strata();
    let (pulled, _, stderr) = pull(&fourth, &plain_ref, &cache);
    assert_eq!(pulled["lazy_cache"]["blobs"], 1, "{pulled}");
    assert!(
        stderr.contains(&layer) && stderr.contains("not usable"),
        "{stderr}"
    );
    assert!(!kept_file.exists());
    fourth
        .run(&["mount", pulled["ref"].as_str().unwrap(), &s(&eager)])
        .expect(0);
    assert_eq!(listing(&eager), want);
    fourth.run(&["umount", &s(&eager)]).expect(0);

    // A directory that is not a cache is named, not made into one.
    let nowhere = env.path("no-cache");
    let run = env.run(&["image", "pull", &lazy_ref, "--lazy-cache", &s(&nowhere)]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("no-cache"), "{}", run.stderr);
    assert!(!nowhere.exists());

    // Only registry images take blobs from a lazy-mount cache.
    let layout = format!("oci:{}:v1", s(&env.path("layout-kept")));
    let run = env.run(&["image", "import", &layout, "--lazy-cache", &s(&cache)]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("--lazy-cache"), "{}", run.stderr);
}

/// What a lazy-mount cache holds: its chunks, kept blobs and unpacked
/// layers (a sparse file counted by the blocks it has).
fn cache_bytes(cache: &Path) -> u64 {
    fn walk(dir: &Path) -> u64 {
        let Ok(items) = fs::read_dir(dir) else {
            return 0;
        };
        items
            .map(|i| {
                let i = i.unwrap();
                // Pruned while listed: nothing.
                let Ok(meta) = fs::symlink_metadata(i.path()) else {
                    return 0;
                };
                if meta.is_dir() {
                    walk(&i.path())
                } else {
                    use std::os::unix::fs::MetadataExt;
                    meta.len().min(meta.blocks() * 512)
                }
            })
            .sum()
    }
    ["chunks", "blobs", "layers"]
        .iter()
        .map(|d| walk(&cache.join(d)))
        .sum()
}

#[test]
fn a_mount_prunes_its_cache_to_a_size_while_it_serves() {
    let env = Env::strata();
    let registry = Registry::start(None);
    let (want, lazy_ref) = publish(&env, &registry, "bounded", &layers(&env));
    let (mnt, cache) = (env.path("mnt"), env.path("cache"));
    let (lazy, _) =
        LazyMount::start_with(&env, &lazy_ref, &mnt, &cache, &["--keep-storage", "1MiB"]);
    let big = fs::read(mnt.join("usr/big.bin")).unwrap();
    assert_eq!(big, fs::read(env.path("base/usr/big.bin")).unwrap());
    // The 6 MB of chunks read are cut down within seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cache_bytes(&cache) > 1 << 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let held = cache_bytes(&cache);
    assert!(held <= 1 << 20, "the cache holds {held} bytes");
    // What was pruned is fetched again when read: the tree reads right.
    assert_eq!(listing(&mnt), want);
    let (code, stopped) = lazy.stop();
    assert_eq!(code, 0, "{stopped}");
    let run = env.run(&[
        "lazy",
        "mount",
        &lazy_ref,
        &s(&mnt),
        "--cache",
        &s(&cache),
        "--keep-storage",
        "lots",
    ]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("lots"), "{}", run.stderr);
}

#[test]
fn a_lone_layer_and_an_opaque_root_read_as_an_eager_import_and_mount_writable() {
    let env = Env::strata();
    let registry = Registry::start(None);
    let two = layers(&env);
    // A root made opaque hides every layer below it.
    let top = env.path("opaque-root");
    fs::create_dir_all(&top).unwrap();
    fs::write(top.join(".wh..wh..opq"), "").unwrap();
    fs::write(top.join("only"), "all there is").unwrap();
    let cases = [
        // Whiteouts and an opaque marker over nothing: none shows.
        ("lone", vec![two[1].clone()]),
        ("opaque", vec![two[0].clone(), tar(&top)]),
    ];
    for (name, layers) in cases {
        let (want, reference) = publish(&env, &registry, name, &layers);
        let (mnt, cache) = (env.path(&format!("mnt-{name}")), env.path("cache"));
        // Named as `image pull` takes it too.
        let reference = format!("docker://{reference}");
        let (lazy, _) = LazyMount::start(&env, &reference, &mnt, &cache);
        assert_eq!(listing(&mnt), want, "{name}");
        assert!(fs::write(mnt.join("new"), "x").is_err(), "{name}: writable");
        assert_eq!(lazy.stop().0, 0, "{name}");
        // --upper: writable, the writes in UPPER/fs.
        let upper = env.path(&format!("upper-{name}"));
        let (lazy, _) =
            LazyMount::start_with(&env, &reference, &mnt, &cache, &["--upper", &s(&upper)]);
        fs::write(mnt.join("new"), "written").unwrap();
        // The image's tree, and the one file written.
        let seen = listing(&mnt);
        let (added, image): (Vec<&str>, Vec<&str>) =
            seen.lines().partition(|l| l.starts_with("/new "));
        assert_eq!(image.join("\n"), want, "{name}");
        assert_eq!(added.len(), 1, "{name}: {seen}");
        assert_eq!(lazy.stop().0, 0, "{name}");
        assert_eq!(fs::read_to_string(upper.join("fs/new")).unwrap(), "written");
        assert!(
            !mnt.join("new").exists(),
            "{name}: the write outlived the mount"
        );
    }
    // Only root reaches the layers' own mounts.
    let mode = fs::metadata(env.path("cache")).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
}

#[test]
fn a_mount_outlives_its_registry_token() {
    let env = Env::strata();
    let registry = Registry::start(None);
    let (want, reference) = publish(&env, &registry, "tokens", &layers(&env));
    let gate = TokenGate::start(&registry.addr, std::time::Duration::from_secs(1));
    let through = reference.replacen(&registry.addr, &gate.addr, 1);
    let (mnt, cache) = (env.path("mnt"), env.path("cache"));
    let (lazy, _) = LazyMount::start(&env, &through, &mnt, &cache);
    let issued = gate.tokens_issued();
    assert!(issued >= 1, "the gate handed out no token");
    // The token expires; the next fetch is refused and the mount takes a
    // new one rather than failing every read from then on.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let big = fs::read(mnt.join("usr/big.bin")).unwrap();
    assert_eq!(big, fs::read(env.path("base/usr/big.bin")).unwrap());
    assert!(gate.tokens_issued() > issued, "no new token was taken");
    assert_eq!(listing(&mnt), want);
    assert_eq!(lazy.stop().0, 0);
}

/// The eStargz image `reference` pushed as NAME:v1 with one layer (`plain`)
/// replaced by the same tar as plain gzip: its reference.
fn mixed(
    env: &Env,
    registry: &Registry,
    name: &str,
    source: &str,
    plain: usize,
    tar: &[u8],
) -> String {
    let dir = env.path(&format!("layout-{name}"));
    env.run(&[
        "image",
        "export",
        source,
        &format!("oci:{}", s(&dir)),
        "--compression",
        "estargz",
        "--force-compression",
    ])
    .expect(0);
    let read = |digest: &Value| -> Value {
        let hex = &digest.as_str().unwrap()["sha256:".len()..];
        serde_json::from_slice(&fs::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: Value = serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut manifest = read(&index["manifests"][0]["digest"]);
    let mut config = read(&manifest["config"]["digest"]);
    let layout = Layout::new(&dir);
    let blob = layout.blob(&gzip(tar));
    manifest["layers"][plain] = blob.desc("application/vnd.oci.image.layer.v1.tar+gzip");
    config["rootfs"]["diff_ids"][plain] = Value::from(sha256(tar));
    let config = layout.json(&config);
    manifest["config"] = config.desc("application/vnd.oci.image.config.v1+json");
    let manifest = layout.json(&manifest);
    layout.tag(&manifest, "mixed");
    let reference = format!("{}/{name}:v1", registry.addr);
    let pushed = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:mixed", s(&dir)))
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo (.ci/run installs it)");
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    reference
}

/// What the tests that remake images with skopeo start from: [`layers`]
/// published as NAME:v1.
struct Published {
    env: Env,
    registry: Registry,
    layers: Vec<Vec<u8>>,
    /// The eager import's listing.
    want: String,
    reference: String,
}

/// [`layers`] published as `name` for `test`, or `None` (the test
/// reported skipped) without skopeo.
fn published(test: &str, name: &str) -> Option<Published> {
    if !strata_testkit::require_tools(test, &[("skopeo", "skopeo")]) {
        return None;
    }
    let env = Env::strata();
    let registry = Registry::start(None);
    let layers = layers(&env);
    let (want, reference) = publish(&env, &registry, name, &layers);
    Some(Published {
        env,
        registry,
        layers,
        want,
        reference,
    })
}

#[test]
fn plain_layers_are_unpacked_under_and_over_lazy_ones() {
    let Some(Published {
        env,
        registry,
        layers: two,
        want,
        ..
    }) = published("plain_layers_are_unpacked_under_and_over_lazy_ones", "both")
    else {
        return;
    };
    let cache = env.path("cache");
    for (plain, case) in [(0, "under"), (1, "over")] {
        let reference = mixed(&env, &registry, case, "both", plain, &two[plain]);
        let mnt = env.path(&format!("mnt-{case}"));
        let (lazy, said) = LazyMount::start(&env, &reference, &mnt, &cache);
        let kinds: Vec<bool> = said["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["lazy"].as_bool().unwrap())
            .collect();
        assert_eq!(kinds, [plain != 0, plain != 1], "{case}: {said}");
        // Whiteouts and the opaque directory hide across the two kinds.
        assert_eq!(listing(&mnt), want, "{case}");
        assert_eq!(lazy.stop().0, 0, "{case}");
    }

    // A plain layer without a root entry, whose file lies below a lower
    // layer's symlink (lib -> usr/lib, as in merged-usr Debian): applied
    // through a mount of the layers below, and the image's root has the
    // mode an eager import gives it.
    let below = env.path("merged-usr");
    fs::create_dir_all(below.join("usr/lib")).unwrap();
    std::os::unix::fs::symlink("usr/lib", below.join("lib")).unwrap();
    fs::write(below.join("usr/lib/libc"), "c").unwrap();
    let over = strata_testkit::layer_tar::archive(&[strata_testkit::layer_tar::entry(
        "lib/x",
        tar::EntryType::Regular,
        &b"through the link"[..],
        "",
    )]);
    let (want, _) = publish(&env, &registry, "usr", &[tar(&below), over.clone()]);
    let reference = mixed(&env, &registry, "linked", "usr", 1, &over);
    let mnt = env.path("mnt-linked");
    let (lazy, _) = LazyMount::start(&env, &reference, &mnt, &cache);
    assert_eq!(listing(&mnt), want);
    assert_eq!(
        fs::read(mnt.join("usr/lib/x")).unwrap(),
        b"through the link"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&mnt).unwrap().permissions());
    assert_eq!(mode & 0o7777, 0o755, "the image's root");
    assert_eq!(lazy.stop().0, 0);

    // A plain layer the registry serves other bytes for is refused by its
    // digest, and nothing is left for the next mount to find. The bytes
    // differ in the gzip header's time only: a valid gzip of the right
    // size and diffID, so only the digest can tell.
    let reference = mixed(&env, &registry, "corrupt", "both", 0, &two[0]);
    let digest = sha256(&gzip(&two[0]));
    let mut other = gzip(&two[0]);
    other[4] ^= 0x5a;
    assert_ne!(sha256(&other), digest);
    fs::write(registry.blob_file(&digest), other).unwrap();
    let fresh = env.path("fresh-cache");
    fs::create_dir_all(env.path("mnt-corrupt")).unwrap();
    let (mounted, said) =
        LazyMount::try_start(&env, &reference, &env.path("mnt-corrupt"), &fresh, &[]);
    assert!(mounted.is_none(), "mounted a layer of other bytes: {said}");
    let err = said;
    assert!(err.contains(&digest), "names the layer: {err}");
    assert!(err.contains("digest mismatch"), "{err}");
    // Nothing stays, the unpack's lock file neither.
    let left: Vec<_> = fs::read_dir(fresh.join("layers"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the cache: {left:?}");
}

/// The directories under `root`'s snapshots.
fn snapshot_dirs(env: &Env) -> usize {
    fs::read_dir(env.root.join("snapshots"))
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0)
}

#[test]
fn a_root_image_pulled_lazily_is_mounted_from_its_snapshots_and_the_registry() {
    let Some(Published {
        env,
        registry,
        layers: two,
        want,
        reference: all_lazy,
    }) = published(
        "a_root_image_pulled_lazily_is_mounted_from_its_snapshots_and_the_registry",
        "rooted",
    )
    else {
        return;
    };
    // Its bottom layer plain gzip: a lazy pull unpacks it into the root.
    let under = mixed(&env, &registry, "under", "rooted", 0, &two[0]);
    let root = Env::strata();
    let pulled = root
        .run(&["--json", "image", "pull", &under, "--lazy", "--name", "lz"])
        .expect(0)
        .json();
    assert_eq!(pulled["lazy"], 1, "{pulled}");
    let (mnt, cache) = (root.path("mnt"), root.path("cache"));

    // The bottom layer from the root's snapshot, the top one served
    // lazily: the tree is the eager import's, and only the top layer's
    // bytes are fetched.
    let (mounted, said) = LazyMount::started(IMAGE_MOUNT, &root, "lz", &mnt, &cache, &[PREFETCH]);
    let mut mounted = mounted;
    assert_eq!(said["from_root"], 1, "{said}");
    let served: Vec<&Value> = said["layers"].as_array().unwrap().iter().collect();
    assert_eq!(served.len(), 1, "{said}");
    assert_eq!(served[0]["lazy"], true, "{said}");
    assert_eq!(listing(&mnt), want);
    assert_eq!(
        Command::new(mnt.join("usr/tool")).output().unwrap().stdout,
        b"lazy hello\n"
    );
    let prefetched = mounted.next_value_within(std::time::Duration::from_secs(120));
    assert_eq!(prefetched["blobs_whole"], 1, "{prefetched}");
    let (code, fetched) = mounted.stop();
    assert_eq!(code, 0, "{fetched}");
    let top = layer_blobs(&root, "lz")[1].clone();
    // Its 51-byte footer is read first, then the rest from the TOC on.
    assert!(
        fetched["bytes_fetched"].as_u64().unwrap() <= top.1 + 51,
        "only the lazy layer's blob ({} bytes) is read: {fetched}",
        top.1
    );
    // What the mount kept fills the lazy ref: nothing is downloaded.
    let unlazied = root
        .run(&[
            "--json",
            "image",
            "unlazy",
            "lz",
            "--lazy-cache",
            &s(&cache),
        ])
        .expect(0)
        .json();
    assert_eq!(
        (
            &unlazied["ref"],
            &unlazied["fetched"],
            &unlazied["lazy_cache"]["blobs"]
        ),
        (&pulled["ref"], &json!(0), &json!(1)),
        "{unlazied}"
    );

    // The native backend's snapshots are whole trees: the root's layer is
    // stacked as one directory.
    let native = Env::strata();
    native
        .run(&[
            "--backend",
            "native",
            "image",
            "pull",
            &under,
            "--lazy",
            "--name",
            "lz",
        ])
        .expect(0);
    let (mounted, said) = LazyMount::started(IMAGE_MOUNT, &native, "lz", &mnt, &cache, &[]);
    assert_eq!(said["from_root"], 1, "{said}");
    assert_eq!(listing(&mnt), want, "native");
    assert_eq!(mounted.stop().0, 0);

    // Filled, it mounts from the root alone (here writable); the mount
    // holds the chain while its name is removed and collected (the root
    // is free meanwhile), and lets go once stopped.
    let upper = root.path("upper");
    let (mounted, said) = LazyMount::started(
        IMAGE_MOUNT,
        &root,
        "lz",
        &mnt,
        &cache,
        &["--upper", &s(&upper)],
    );
    assert_eq!(
        (&said["from_root"], &said["layers"]),
        (&json!(2), &json!([])),
        "{said}"
    );
    root.run(&["image", "rm", "lz"]).expect(0);
    root.run(&["gc"]).expect(0);
    assert_eq!(listing(&mnt), want, "collected under the mount");
    fs::write(mnt.join("usr/written"), "by a step").unwrap();
    assert_eq!(mounted.stop().0, 0);
    assert_eq!(
        fs::read(upper.join("fs/usr/written")).unwrap(),
        b"by a step"
    );
    root.run(&["gc"]).expect(0);
    assert_eq!(snapshot_dirs(&root), 0, "the chain is collected after");

    // Every layer lazy, mounted through the root's daemon: the mount
    // ends when its client does.
    let other = Env::strata();
    other
        .run(&["image", "pull", &all_lazy, "--lazy", "--name", "all"])
        .expect(0);
    let daemon = other.serve(&[]);
    let (mounted, said) = LazyMount::started(IMAGE_MOUNT, &other, "all", &mnt, &cache, &[]);
    assert_eq!(said["from_root"], 0, "{said}");
    assert_eq!(listing(&mnt), want);
    mounted.kill();
    let deadline = std::time::Instant::now() + STOP_LIMIT;
    let mounted = || {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&s(&mnt))
    };
    while mounted() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon kept serving {}",
            mnt.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(daemon.stop().0, 0);

    // Lazy layers are read from a layout by range, and refused from an
    // archive (which cannot be), naming the way out.
    for (kind, location) in [("oci", "estargz-layout"), ("oci-archive", "estargz.tar")] {
        let location = format!("{kind}:{}", s(&env.path(location)));
        env.run(&[
            "image",
            "export",
            "rooted",
            &location,
            "--compression",
            "estargz",
            "--force-compression",
        ])
        .expect(0);
        let imported = other
            .run(&[
                "--json", "image", "import", &location, "--lazy", "--name", kind,
            ])
            .expect(0)
            .json();
        assert_eq!(imported["lazy"], 2, "{imported}");
    }
    let (mounted, said) = LazyMount::started(IMAGE_MOUNT, &other, "oci", &mnt, &cache, &[]);
    assert_eq!(said["from_root"], 0, "{said}");
    assert_eq!(listing(&mnt), want);
    assert_eq!(mounted.stop().0, 0);
    let mount = |name: &str| other.run(&["image", "mount", name, &s(&mnt), "--cache", &s(&cache)]);
    let run = mount("oci-archive");
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stderr.contains("estargz.tar") && run.stderr.contains("image unlazy oci-archive"),
        "{}",
        run.stderr
    );
    let run = mount("nothing");
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("image nothing: not found"),
        "{}",
        run.stderr
    );
}

/// Whether any mount in this process's table is at or below `dir`.
fn mounted_below(dir: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&s(dir))
}

#[test]
fn a_lazy_image_attached_on_its_snapshots_takes_new_refs_and_mounts() {
    let Some(Published {
        registry,
        want,
        reference,
        ..
    }) = published(
        "a_lazy_image_attached_on_its_snapshots_takes_new_refs_and_mounts",
        "attached",
    )
    else {
        return;
    };
    let root = Env::strata();
    let pulled = root
        .run(&[
            "--json", "image", "pull", &reference, "--lazy", "--name", "at",
        ])
        .expect(0)
        .json();
    assert_eq!(pulled["lazy"], 2, "{pulled}");
    let top = pulled["ref"].as_str().unwrap().to_owned();
    let (mnt, cache) = (root.path("mnt"), root.path("cache"));
    fs::create_dir_all(&mnt).unwrap();
    let id = |args: &[&str]| root.run(args).expect(0).text().trim().to_owned();

    // Attached, the lazy refs read as any: a view of the image, and a
    // build step on it through a new ref, mounted writable and committed.
    let (attached, said) = LazyMount::attach(&root, "at", &cache).unwrap();
    assert_eq!(said["from_root"], 0, "{said}");
    assert!(said.get("dir").is_none(), "{said}");
    let served = said["layers"].as_array().unwrap();
    assert_eq!(served.len(), 2, "{said}");
    assert!(served.iter().all(|l| l["lazy"] == true), "{said}");
    root.run(&["mount", &top, &s(&mnt)]).expect(0);
    assert_eq!(listing(&mnt), want);
    root.run(&["umount", &s(&mnt)]).expect(0);
    let step = id(&["ref", "new", &top, "--description", "step"]);
    root.run(&["mount", &step, &s(&mnt), "--rw"]).expect(0);
    assert_eq!(
        Command::new(mnt.join("usr/tool")).output().unwrap().stdout,
        b"lazy hello\n"
    );
    fs::write(mnt.join("usr/built"), "by a step").unwrap();
    fs::remove_file(mnt.join("usr/tool-link")).unwrap();
    root.run(&["umount", &s(&mnt)]).expect(0);
    let built = id(&["ref", "commit", &step]);
    root.run(&["mount", &built, &s(&mnt)]).expect(0);
    assert_eq!(fs::read(mnt.join("usr/built")).unwrap(), b"by a step");
    assert!(!mnt.join("usr/tool-link").exists());
    assert_eq!(
        fs::read(mnt.join("usr/tool")).unwrap(),
        b"#!/bin/sh\necho lazy hello\n"
    );
    let step_view = listing(&mnt);
    root.run(&["umount", &s(&mnt)]).expect(0);

    // An attached layer stores nothing in the root; attached snapshots
    // are neither removed nor filled meanwhile.
    let du = root.run(&["--json", "du"]).expect(0).json();
    let row = du
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == json!(top))
        .unwrap_or_else(|| panic!("no row for {top}: {du}"));
    assert_eq!(row["inodes"], 0, "the layer served is not counted: {row}");
    for refused in [
        root.run(&["image", "unlazy", "at"]),
        root.run(&["snapshot", "rm", &top]),
    ] {
        assert_eq!(refused.code, 4, "{}", refused.stderr);
        assert!(refused.stderr.contains("attached"), "{}", refused.stderr);
    }
    let (code, fetched) = attached.stop();
    assert_eq!(code, 0, "{fetched}");
    assert!(fetched["bytes_fetched"].as_u64().unwrap() > 0, "{fetched}");
    // Their directories go with them: a mount named while they served
    // (as containerd mounts what a prepare said, later) fails now rather
    // than stacking an empty layer.
    let served_on: Vec<std::path::PathBuf> = said["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["dir"].as_str().unwrap().into())
        .collect();
    let gone = |when: &str| {
        for dir in &served_on {
            assert!(
                dir.ends_with("fs") && !dir.exists(),
                "{when}: {}",
                dir.display()
            );
        }
    };
    gone("stopped");

    // Stopped, they are lazy again: nothing stacks on them.
    let refused = root.run(&["mount", &built, &s(&mnt)]).expect(4);
    assert!(refused.stderr.contains("is lazy"), "{}", refused.stderr);

    // A server killed leaves its layers mounted and dead: `check` says
    // so, and reads are refused as lazy. What an open after a crash does
    // (`check --repair`) detaches them and keeps the lazy snapshots; so
    // does the next attach.
    let kill_attached = || {
        let (attached, _) = LazyMount::attach(&root, "at", &cache).unwrap();
        attached.kill();
        // What the store looks for to clear them (and nothing else).
        let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let left: Vec<&str> = table
            .lines()
            .filter(|l| l.contains(&s(&root.root.join("snapshots"))))
            .collect();
        assert_eq!(left.len(), served_on.len(), "{left:?}");
        assert!(
            left.iter().all(|l| l.contains(" - fuse strata-lazy:")),
            "{left:?}"
        );
    };
    kill_attached();
    let checked = root.run(&["check"]);
    let said = format!("{}{}", checked.text(), checked.stderr);
    assert_ne!(checked.code, 0, "{said}");
    assert!(said.contains("no longer served"), "{said}");
    root.run(&["mount", &built, &s(&mnt)]).expect(4);
    root.run(&["check", "--repair"]).expect(0);
    assert!(!mounted_below(&root.root.join("snapshots")));
    gone("repaired after a kill");
    root.run(&["mount", &built, &s(&mnt)]).expect(4);
    kill_attached();
    let (attached, _) = LazyMount::attach(&root, "at", &cache).unwrap();
    root.run(&["mount", &built, &s(&mnt)]).expect(0);
    assert_eq!(listing(&mnt), step_view, "after the server was killed");
    root.run(&["umount", &s(&mnt)]).expect(0);
    // A second server of the same layers is refused.
    let twice = LazyMount::attach(&root, "at", &cache)
        .map(drop)
        .unwrap_err();
    assert!(twice.contains("attached already"), "{twice}");
    assert_eq!(attached.stop().0, 0);
    assert!(!mounted_below(&root.root.join("snapshots")));
    let checked = root.run(&["check"]);
    assert_eq!(checked.code, 0, "{}", checked.text());

    // Filled, the step's ref reads the same from the root alone; the
    // dead mounts a killed attach left are detached by the fill.
    kill_attached();
    root.run(&["image", "unlazy", "at"]).expect(0);
    assert!(!mounted_below(&root.root.join("snapshots")));
    root.run(&["mount", &built, &s(&mnt)]).expect(0);
    assert_eq!(listing(&mnt), step_view, "filled");
    root.run(&["umount", &s(&mnt)]).expect(0);
    let refused = LazyMount::attach(&root, "at", &cache)
        .map(drop)
        .unwrap_err();
    assert!(refused.contains("no lazy layers"), "{refused}");

    // Through the root's daemon, a step builds on the attached image as
    // well, and the attach ends when its client does.
    let other = Env::strata();
    let pulled = other
        .run(&[
            "--json", "image", "pull", &reference, "--lazy", "--name", "at",
        ])
        .expect(0)
        .json();
    let daemon = other.serve(&[]);
    let (attached, _) = LazyMount::attach(&other, "at", &cache).unwrap();
    let step = other
        .run(&["ref", "new", pulled["ref"].as_str().unwrap()])
        .expect(0)
        .text()
        .trim()
        .to_owned();
    other.run(&["mount", &step, &s(&mnt), "--rw"]).expect(0);
    assert_eq!(listing(&mnt), want, "through the daemon");
    other.run(&["umount", &s(&mnt)]).expect(0);
    // The name removed and the root collected, the step's ref holds the
    // attached layers below it.
    other.run(&["image", "rm", "at"]).expect(0);
    other.run(&["gc"]).expect(0);
    other.run(&["mount", &step, &s(&mnt), "--rw"]).expect(0);
    assert_eq!(listing(&mnt), want, "collected under the attach");
    other.run(&["umount", &s(&mnt)]).expect(0);
    attached.kill();
    let deadline = std::time::Instant::now() + STOP_LIMIT;
    while mounted_below(&other.root.join("snapshots")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon kept the layers attached"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    other.run(&["mount", &step, &s(&mnt), "--rw"]).expect(4);
    assert_eq!(daemon.stop().0, 0);

    // The native backend's snapshots are whole trees: nothing attaches.
    let native = Env::strata();
    native
        .run(&[
            "--backend",
            "native",
            "image",
            "pull",
            &reference,
            "--lazy",
            "--name",
            "at",
        ])
        .expect(0);
    let refused = LazyMount::attach(&native, "at", &cache)
        .map(drop)
        .unwrap_err();
    assert!(refused.contains("whole trees"), "{refused}");
    drop(registry);
}
