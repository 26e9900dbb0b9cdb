//! Many `strata` processes on one root at once, as scripts and build
//! workers run them: four workers loop over ingests, image imports (a
//! shared base layer and one of their own), refs built through writable
//! mounts, exports and collections, every command its own process, all
//! contending for the root's lock (each waits for it; none may give up).
//! Every command must succeed; afterwards the root checks clean and
//! everything any of them acknowledged is there and whole: every blob
//! reads back to its digest, every image is named, every ref mounts with
//! what was written into it, every exported layout imports into a fresh root with what was built into it. Needs
//! root (mounts).

use std::fs;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Commands that found the root owned by another process and waited.
static WAITED: AtomicUsize = AtomicUsize::new(0);

/// `strata ARGS` with the default lock timeout (long enough for a loaded
/// machine: no script should need to raise it); must succeed.
fn run(env: &Env, args: &[&str]) -> String {
    let out = env.run(args);
    assert_eq!(out.code, 0, "strata {}: {}", args.join(" "), out.stderr);
    if out.stderr.contains("owns the root (--lock-timeout)") {
        WAITED.fetch_add(1, Ordering::Relaxed);
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
        let base = archive(&[
            entry("etc/", EntryType::Directory, b"", ""),
            entry("etc/os-release", EntryType::Regular, b"ID=strata\n", ""),
        ]);
        let acked = Mutex::new(Acked::default());
        std::thread::scope(|s| {
            for w in 0..WORKERS {
                let (env, base, acked) = (&env, &base, &acked);
                s.spawn(move || worker(env, w, base, acked));
            }
        });
        let acked = acked.into_inner().unwrap();
        assert_eq!(run(&env, &["check"]), "clean", "{backend}");

        for (digest, data) in &acked.blobs {
            let out = env.cmd(&["content", "cat", digest]).output().unwrap();
            assert!(out.status.success(), "{backend}: blob {digest} reads");
            assert_eq!(&out.stdout, data, "{backend}: blob {digest}");
            assert_eq!(
                Digest::of_bytes(Algorithm::Sha256, &out.stdout).to_string(),
                *digest
            );
        }
        let images = run(&env, &["image", "ls"]);
        for name in &acked.images {
            assert!(images.contains(name.as_str()), "{backend}: image {name}");
        }
        for (r, tag) in &acked.refs {
            let mnt = env.path(&format!("check-{r}"));
            fs::create_dir_all(&mnt).unwrap();
            let mnt_s = mnt.display().to_string();
            run(&env, &["mount", r, &mnt_s]);
            let built = fs::read_to_string(mnt.join("built"));
            let own = fs::read_to_string(mnt.join(format!("{tag}.txt")));
            let base = fs::read_to_string(mnt.join("etc/os-release"));
            run(&env, &["umount", &mnt_s]);
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
        // The workers did contend: some commands found the root owned.
        let waited = WAITED.swap(0, Ordering::Relaxed);
        assert!(waited > 0, "{backend}: no command ever waited for the root");
        eprintln!(
            "{backend}: {WORKERS} workers, {waited} commands waited for the root; {} blobs, {} images, {} refs, {} exports acknowledged and whole",
            acked.blobs.len(),
            acked.images.len(),
            acked.refs.len(),
            acked.layouts.len()
        );
    }
}
