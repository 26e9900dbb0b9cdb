//! Many `strata` processes on one root at once, as scripts and build
//! workers run them: four workers loop over ingests, image imports (a
//! shared base layer and one of their own), refs built through writable
//! mounts, exports and collections, every command its own process, all
//! contending for the root's lock (each waits for it; none may give up).
//! Every command must succeed; afterwards the root checks clean and
//! everything any of them acknowledged is there and whole: every blob
//! reads back to its digest, every image is named, every ref mounts with
//! what was written into it, every exported layout imports into a fresh
//! root with what was built into it. Then the same with a daemon owning
//! the root (`strata serve`): every command runs through it, side by side,
//! and none waits. Needs root (mounts).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use strata_core::{Algorithm, Digest};
use strata_testkit::cli::Env;
use strata_testkit::layer_tar::{archive, entry};
use strata_testkit::oci_layout::Layout;
use tar::EntryType;

const WORKERS: usize = 4;
const ROUNDS: usize = 5;

/// What the workers were told is done.
#[derive(Default)]
struct Acked {
    blobs: Vec<(String, Vec<u8>)>,
    images: Vec<String>,
    refs: Vec<(String, String)>,
    layouts: Vec<(String, String)>,
}

/// Commands that found the root owned by another process and waited, per
/// root (the tests run side by side).
static WAITED: Mutex<BTreeMap<PathBuf, usize>> = Mutex::new(BTreeMap::new());

/// How many commands on `env`'s root waited for it, counted from zero again.
fn waited(env: &Env) -> usize {
    WAITED.lock().unwrap().remove(&env.root).unwrap_or(0)
}

/// `strata ARGS` with the default lock timeout (long enough for a loaded
/// machine: no script should need to raise it); must succeed.
fn run(env: &Env, args: &[&str]) -> String {
    let out = env.run(args);
    assert_eq!(out.code, 0, "strata {}: {}", args.join(" "), out.stderr);
    if out.stderr.contains("owns the root (--lock-timeout)") {
        *WAITED.lock().unwrap().entry(env.root.clone()).or_default() += 1;
    }
    out.text().trim().to_owned()
}

fn worker(env: &Env, w: usize, base: &[u8], acked: &Mutex<Acked>) {
    let ack = |f: &dyn Fn(&mut Acked)| f(&mut acked.lock().unwrap());
    for round in 0..ROUNDS {
        let tag = format!("w{w}-{round}");
        // A blob.
        let data = format!("{tag} blob").repeat(100).into_bytes();
        let file = env.path(&format!("{tag}.blob"));
        fs::write(&file, &data).unwrap();
        let digest = run(env, &["content", "ingest", &file.display().to_string()]);
        ack(&|a| a.blobs.push((digest.clone(), data.clone())));

        // An image: the shared base and a layer of its own.
        let dir = env.path(&format!("{tag}.layout"));
        let layout = Layout::new(&dir);
        let own = archive(&[entry(
            format!("{tag}.txt"),
            EntryType::Regular,
            tag.as_bytes(),
            "",
        )]);
        let manifest = layout.image(&[base.to_vec(), own]);
        layout.tag(&manifest, "1");
        let source = format!("oci:{}:1", dir.display());
        let top = run(env, &["image", "import", &source, "--name", &tag]);
        ack(&|a| a.images.push(tag.clone()));

        // A ref built on the image through a writable mount.
        let m = run(env, &["ref", "new", &top, "--description", &tag]);
        let mnt = env.path(&format!("{tag}.mnt"));
        fs::create_dir_all(&mnt).unwrap();
        let mnt_s = mnt.display().to_string();
        run(env, &["mount", &m, &mnt_s, "--rw"]);
        fs::write(mnt.join("built"), &tag).unwrap();
        run(env, &["umount", &mnt_s]);
        let r = run(env, &["ref", "commit", &m]);
        ack(&|a| a.refs.push((r.clone(), tag.clone())));

        // Every other round an export, every round a collection.
        if round % 2 == 1 {
            let out = env.path(&format!("{tag}.export"));
            run(
                env,
                &["image", "export", &r, &format!("oci:{}:1", out.display())],
            );
            ack(&|a| a.layouts.push((out.display().to_string(), tag.clone())));
        }
        run(env, &["gc"]);
    }
}

#[test]
fn processes_contending_for_one_root_lose_nothing() {
    if !strata_testkit::require_root("processes::processes_contending_for_one_root_lose_nothing") {
        return;
    }
    for backend in ["overlay", "native"] {
        let env = Env::strata();
        run(&env, &["--backend", backend, "check"]);
        let started = Instant::now();
        contend(&env, backend);
        // The workers did contend: some commands found the root owned.
        let waited = waited(&env);
        assert!(waited > 0, "{backend}: no command ever waited for the root");
        eprintln!(
            "{backend}: {waited} commands waited for the root; {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// The same workers with a daemon owning the root: every command runs
/// through it, side by side, and none waits for the root's lock.
#[test]
fn processes_through_a_daemon_lose_nothing() {
    if !strata_testkit::require_root("processes::processes_through_a_daemon_lose_nothing") {
        return;
    }
    for backend in ["overlay", "native"] {
        let env = Env::strata();
        run(&env, &["--backend", backend, "check"]);
        let daemon = env.serve(&[]);
        let started = Instant::now();
        contend(&env, backend);
        let elapsed = started.elapsed();
        let health = env.run(&["serve", "--check", "--json"]).expect(0).json();
        assert_eq!(health["pid"], daemon.pid(), "{backend}: the daemon served");
        assert_eq!(health["running"], 0, "{backend}: every command ended");
        let served = health["served"].as_u64().unwrap();
        let (code, log) = daemon.stop();
        assert_eq!(code, 0, "{backend}: the daemon stops cleanly: {log}");
        assert!(
            !env.root.join("run/strata.sock").exists(),
            "{backend}: socket removed"
        );
        // Nothing waited: no command opened the root itself.
        assert_eq!(waited(&env), 0, "{backend}");
        eprintln!(
            "{backend}: {served} commands through the daemon, none waited; {:.1} s",
            elapsed.as_secs_f64()
        );
        // Without it, the root opens again and is whole.
        assert_eq!(run(&env, &["check"]), "clean", "{backend}");
    }
}

/// Runs the workers on `env`'s root, then checks everything they were told
/// is done.
fn contend(env: &Env, backend: &str) {
    let base = archive(&[
        entry("etc/", EntryType::Directory, b"", ""),
        entry("etc/os-release", EntryType::Regular, b"ID=strata\n", ""),
    ]);
    let acked = Mutex::new(Acked::default());
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (base, acked) = (&base, &acked);
            s.spawn(move || worker(env, w, base, acked));
        }
    });
    let acked = acked.into_inner().unwrap();
    assert_eq!(run(env, &["check"]), "clean", "{backend}");

    for (digest, data) in &acked.blobs {
        let out = env.cmd(&["content", "cat", digest]).output().unwrap();
        assert!(out.status.success(), "{backend}: blob {digest} reads");
        assert_eq!(&out.stdout, data, "{backend}: blob {digest}");
        assert_eq!(
            Digest::of_bytes(Algorithm::Sha256, &out.stdout).to_string(),
            *digest
        );
    }
    let images = run(env, &["image", "ls"]);
    for name in &acked.images {
        assert!(images.contains(name.as_str()), "{backend}: image {name}");
    }
    for (r, tag) in &acked.refs {
        let mnt = env.path(&format!("check-{r}"));
        fs::create_dir_all(&mnt).unwrap();
        let mnt_s = mnt.display().to_string();
        run(env, &["mount", r, &mnt_s]);
        let built = fs::read_to_string(mnt.join("built"));
        let own = fs::read_to_string(mnt.join(format!("{tag}.txt")));
        let base = fs::read_to_string(mnt.join("etc/os-release"));
        run(env, &["umount", &mnt_s]);
        assert_eq!(built.unwrap(), *tag, "{backend}: ref {r}");
        assert_eq!(own.unwrap(), *tag, "{backend}: ref {r}'s image layer");
        assert_eq!(base.unwrap(), "ID=strata\n", "{backend}: ref {r}'s base");
    }
    // Each exported layout is a whole image: a fresh root imports it
    // (every blob's digest and size, every diffID checked) and its ref
    // holds the files built into it.
    let fresh = Env::strata();
    for (out, tag) in &acked.layouts {
        let top = run(
            &fresh,
            &[
                "--backend",
                backend,
                "image",
                "import",
                &format!("oci:{out}:1"),
            ],
        );
        let mnt = fresh.path(&format!("check-{tag}"));
        fs::create_dir_all(&mnt).unwrap();
        let mnt_s = mnt.display().to_string();
        run(&fresh, &["mount", &top, &mnt_s]);
        let built = fs::read_to_string(mnt.join("built"));
        let base = fs::read_to_string(mnt.join("etc/os-release"));
        run(&fresh, &["umount", &mnt_s]);
        assert_eq!(built.unwrap(), *tag, "{backend}: export {out}");
        assert_eq!(
            base.unwrap(),
            "ID=strata\n",
            "{backend}: export {out}'s base"
        );
    }
    assert_eq!(acked.layouts.len(), WORKERS * (ROUNDS / 2));
    assert_eq!(acked.refs.len(), WORKERS * ROUNDS);
    eprintln!(
        "{backend}: {WORKERS} workers; {} blobs, {} images, {} refs, {} exports acknowledged and whole",
        acked.blobs.len(),
        acked.images.len(),
        acked.refs.len(),
        acked.layouts.len()
    );
}
