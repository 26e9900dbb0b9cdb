//! Faults a machine makes, injected into the real `strata` binary by the
//! fault shim (the `strata-fault-shim` crate, an `LD_PRELOAD` library): reads
//! that fail with EIO, fsyncs and fdatasyncs that fail, renames that fail;
//! during ingest, import (fetch and unpack), commit, merge, export and
//! garbage collection, on both backends. Each kind of call is swept over a
//! command: its first matching call fails, then (on fresh work) its second,
//! and so on until a run meets no fault and must succeed, so every point
//! where that call can fail is tried. Every faulty run must:
//! - really meet the fault (the shim logs each failure it injects);
//! - fail with exit 1 and a last line `strata: ...` naming what it worked
//!   on and the system's reason;
//! - leave nothing half-done: every listing (content, snapshots, images,
//!   refs, leases) as before, or, for ingests, imports and exports, only
//!   whole blobs and layers added that nothing holds;
//! - leave a root that checks clean once the fault is gone.
//!
//! Where the fault strikes after the work is done (the collector removing
//! swept files, a close settling directories), the command succeeds with a
//! warning instead, and the next open finishes what it could not.
//!
//! Needs root (mounts, and the native backend's ownership).

use std::fs;
use std::path::Path;

use serde_json::Value;
use strata_testkit::cli::Env;
use strata_testkit::layer_tar::{archive, entry};
use strata_testkit::oci_layout::{Layout, gzip, sha256};
use tar::EntryType;

/// What every listing shows, but when refs were last used and how often:
/// a command that fails part way has still used the refs it read.
fn state(env: &Env) -> Vec<Value> {
    let mut lists: Vec<Value> = [
        ["content", "ls"],
        ["snapshot", "ls"],
        ["image", "ls"],
        ["ref", "ls"],
        ["lease", "ls"],
    ]
    .iter()
    .map(|[noun, verb]| env.run(&["--json", noun, verb]).expect(0).json())
    .collect();
    for r in lists[3].as_array_mut().unwrap() {
        let r = r.as_object_mut().unwrap();
        r.remove("last_used");
        r.remove("usage_count");
    }
    lists
}

/// What a run that failed may leave.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Leaves {
    /// Nothing: every listing as before.
    Nothing,
    /// What the command finished before the fault: whole blobs it fetched
    /// or made, whole layers it unpacked (a retry reuses them). No image
    /// names them and no lease holds them: each is collectable, or a ref's
    /// layer blob.
    Progress,
    /// Nothing, or all of it: the collector's transaction either happened
    /// or it did not (what a collection without a fault leaves).
    AllOrNothing,
}

/// Work to run under faults: fresh arguments for run `k`, and the names
/// (paths, digests, ids) its error may give, one of which it must.
type Work<'a> = dyn FnMut(usize) -> (Vec<String>, Vec<String>) + 'a;

/// Fails every call `plan` (`CALL:PATH-SUBSTRING`) matches after the
/// first `k`, for k = 0, 1, 2, ... on fresh work each time, until a run
/// meets no fault and must succeed: every point where the call can fail
/// is tried. Each faulty run must fail with exit 1 and one error line that
/// says why and names what it worked on, leaving only what `leaves` allows
/// (or succeed, with a warning naming the fault, when the fault struck
/// after the work was done); the root must then check clean. Returns how
/// many faulty runs it made.
#[track_caller]
fn sweep(env: &Env, plan: &str, leaves: Leaves, work: &mut Work) -> usize {
    for k in 0.. {
        assert!(k < 300, "{plan}: still faulting after {k} runs");
        let (args, names) = work(k);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let before = state(env);
        let (run, injected) = env.run_faulty(&format!("{plan}:{k}"), &args);
        let what = format!("{plan}:{k} during `strata {}`", args.join(" "));
        assert!(!run.stderr.contains("panicked"), "{what}: {}", run.stderr);
        if injected.is_empty() {
            // Past the last call that can fail: the work is done.
            assert_eq!(run.code, 0, "{what}: no fault met; stderr: {}", run.stderr);
            env.run(&["check"]).expect(0);
            return k;
        }
        match run.code {
            1 => {
                let last = run.stderr.lines().last().unwrap_or_default();
                eprintln!("{what}: {last}");
                assert!(
                    last.starts_with("strata: ") && last.contains("Input/output error"),
                    "{what}: the error line says why: {}",
                    run.stderr
                );
                assert!(
                    names.iter().any(|n| last.contains(n.as_str())),
                    "{what}: the error names one of {names:?}: {last}; faults: {injected:?}"
                );
            }
            0 => {
                // Done, but a fault is never swallowed in silence, with one
                // exception: redb syncs the file once more as the database
                // closes, after Strata's last transaction, and cannot
                // report a failure then (its next open recovers the file).
                let warning = run.stderr.lines().find(|l| l.contains(" WARN "));
                let Some(warning) = warning else {
                    let at_close = matches!(injected.as_slice(), [f] if f.starts_with("fsync ") && f.ends_with("/meta.redb EIO"));
                    assert!(
                        at_close,
                        "{what}: succeeded over {injected:?} without a word"
                    );
                    env.run(&["check"]).expect(0);
                    continue;
                };
                eprintln!("{what}: {warning}");
                assert!(warning.contains("Input/output error"), "{what}: {warning}");
                env.run(&["check"]).expect(0);
                continue;
            }
            code => panic!("{what}: exit {code}; stderr: {}", run.stderr),
        }
        let check = env.run(&["check"]).expect(0).text();
        assert_eq!(check.trim(), "clean", "{what}: the root after the fault");
        let faulted = state(env);
        // A metadata transaction whose sync failed may still be on disk
        // (the data reached the file; only its sync was refused), as after
        // a real failed fsync: what it did may show, whole.
        let unsure = injected
            .iter()
            .any(|f| f.starts_with("fsync ") && f.contains("meta.redb"));
        match leaves {
            Leaves::Nothing | Leaves::Progress if unsure => {
                accounted(env, &what, &before, &faulted, &names)
            }
            Leaves::Nothing => assert_eq!(faulted, before, "{what}: nothing half-done"),
            Leaves::Progress => only_progress(env, &what, &before, &faulted),
            Leaves::AllOrNothing => {
                env.run(&["gc"]).expect(0);
                assert!(
                    faulted == before || faulted == state(env),
                    "{what}: the collection happened in part"
                );
            }
        }
    }
    unreachable!()
}

/// The `key` field of every item of a listing.
fn keys(list: &Value, key: &str) -> Vec<String> {
    let items = list.as_array().unwrap().iter();
    items.map(|o| o[key].as_str().unwrap().to_owned()).collect()
}

/// Checks [`Leaves::Progress`].
fn only_progress(env: &Env, what: &str, before: &[Value], faulted: &[Value]) {
    for (list, what_list) in [(2, "image"), (4, "lease")] {
        assert_eq!(faulted[list], before[list], "{what}: no {what_list} made");
    }
    let collectable = env.run(&["--json", "gc", "--dry-run"]).expect(0).json();
    let removed = collectable["removed"].to_string();
    let ref_blobs = faulted[3].to_string();
    for (list, key) in [(0, "digest"), (1, "name"), (3, "id")] {
        let had = keys(&before[list], key);
        let has = keys(&faulted[list], key);
        assert!(had.iter().all(|x| has.contains(x)), "{what}: nothing lost");
        for new in has.iter().filter(|x| !had.contains(x)) {
            assert!(
                removed.contains(new.as_str()) || (list == 0 && ref_blobs.contains(new.as_str())),
                "{what}: {new} is held by nothing: {collectable}"
            );
        }
    }
}

/// After a metadata sync failed: nothing lost but what the command works
/// on (`names`: a ref it commits, and what is named after it), and no
/// lease left empty.
fn accounted(env: &Env, what: &str, before: &[Value], faulted: &[Value], names: &[String]) {
    for (list, key) in [
        (0, "digest"),
        (1, "name"),
        (2, "name"),
        (3, "id"),
        (4, "id"),
    ] {
        let had = keys(&before[list], key);
        let has = keys(&faulted[list], key);
        for gone in had.iter().filter(|x| !has.contains(x)) {
            assert!(
                names.iter().any(|n| gone.contains(n.as_str())),
                "{what}: {gone} lost"
            );
        }
        if list == 4 {
            for new in has.iter().filter(|x| !had.contains(x)) {
                let held = env
                    .run(&["--json", "lease", "resources", new])
                    .expect(0)
                    .json();
                assert!(
                    held.as_array().is_some_and(|h| !h.is_empty()),
                    "{what}: lease {new} left empty"
                );
            }
        }
    }
}

/// `items` as owned strings.
fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn id(env: &Env, args: &[&str]) -> String {
    env.run(args).expect(0).text().trim().to_owned()
}

/// A committed ref holding `files`, written through a writable mount.
fn built(env: &Env, name: &str, files: &[(&str, &str)]) -> String {
    let mutable = id(env, &["ref", "new", "--description", name]);
    env.write_through_mount(&mutable, files);
    id(env, &["ref", "commit", &mutable])
}

fn root_only(test: &str) -> bool {
    strata_testkit::require_root(&format!("faults::{test}"))
}

/// The faults every sweep of a root tries: each fsync, fdatasync and
/// rename under the root, and each read of the metadata file.
fn root_plans(env: &Env) -> Vec<String> {
    let root = env.root.display();
    vec![
        format!("fsync:{root}/"),
        format!("rename:{root}/"),
        format!("read:{root}/meta.redb"),
    ]
}

#[test]
fn ingest_under_faults() {
    if !root_only("ingest_under_faults") {
        return;
    }
    let env = Env::strata();
    env.run(&["check"]).expect(0);
    let inputs = env.path("inputs");
    fs::create_dir_all(&inputs).unwrap();
    let mut n = 0u32;
    let mut work = |_| {
        n += 1;
        let data: Vec<u8> = (0..96u32 << 10).map(|i| (i * n) as u8).collect();
        let f = inputs.join(format!("input-{n}"));
        fs::write(&f, &data).unwrap();
        let f = f.display().to_string();
        let hex = sha256(&data).trim_start_matches("sha256:").to_owned();
        let names = vec![f.clone(), hex, env.root.display().to_string()];
        (owned(&["content", "ingest", &f]), names)
    };
    let mut plans = root_plans(&env);
    plans.push(format!("read:{}/", inputs.display()));
    let mut total = 0;
    for plan in plans {
        let runs = sweep(&env, &plan, Leaves::Progress, &mut work);
        eprintln!("ingest: {plan}: {runs} faulty runs");
        total += runs;
    }
    tally(&env, "content ingest", "(either)", total);
}

/// Records, for the reliability report, how many faulty runs of `command`
/// on `backend` the sweep made, each checked.
fn tally(env: &Env, command: &str, backend: &str, runs: usize) {
    strata_testkit::reliability::record(
        "faults",
        &format!("{command} {backend}"),
        &env.root,
        &[
            ("command", format!("`{command}`")),
            ("backend", backend.to_owned()),
            ("build", strata_testkit::reliability::build().to_owned()),
            ("faulty runs, each checked", runs.to_string()),
        ],
    );
}

#[test]
fn import_under_faults() {
    if !root_only("import_under_faults") {
        return;
    }
    for backend in ["overlay", "native"] {
        let env = Env::strata();
        env.run(&["--backend", backend, "check"]).expect(0);
        let layouts = env.path("layouts");
        let mut n = 0usize;
        // A new image every run, so each import has all its work to do.
        let mut work = |_| {
            n += 1;
            let dir = layouts.join(n.to_string());
            let layout = Layout::new(&dir);
            let base = archive(&[
                entry("etc/", EntryType::Directory, b"", ""),
                entry("etc/base", EntryType::Regular, n.to_string().as_bytes(), ""),
            ]);
            let top = archive(&[entry(
                "etc/top",
                EntryType::Regular,
                &vec![n as u8; 128 << 10],
                "",
            )]);
            let names = vec![
                sha256(&gzip(&base)),
                sha256(&gzip(&top)),
                env.root.display().to_string(),
                dir.display().to_string(),
            ];
            let manifest = layout.image(&[base, top]);
            layout.tag(&manifest, "1");
            let source = format!("oci:{}:1", dir.display());
            let name = format!("img{n}");
            (owned(&["image", "import", &source, "--name", &name]), names)
        };
        let mut plans = root_plans(&env);
        // Reading the layout (the fetch) and the stored blobs (the unpack).
        plans.push(format!("read:{}/", layouts.display()));
        plans.push(format!("read:{}/content/blobs/", env.root.display()));
        let mut total = 0;
        for plan in plans {
            let runs = sweep(&env, &plan, Leaves::Progress, &mut work);
            eprintln!("import ({backend}): {plan}: {runs} faulty runs");
            total += runs;
        }
        tally(&env, "image import", backend, total);
    }
}

#[test]
fn commit_merge_and_export_under_faults() {
    if !root_only("commit_merge_and_export_under_faults") {
        return;
    }
    for backend in ["overlay", "native"] {
        let env = Env::strata();
        env.run(&["--backend", backend, "check"]).expect(0);
        let a = built(&env, "a", &[("a", "1"), ("shared", "a")]);
        let b = built(&env, "b", &[("b", "2")]);
        let root = env.root.display().to_string();
        let (mut commits, mut merges) = (0, 0);
        for plan in root_plans(&env) {
            // Commit a fresh mutable ref on `a`.
            let mut commit = |_| {
                let m = id(&env, &["ref", "new", &a, "--description", "m"]);
                env.write_through_mount(&m, &[("m", "3"), ("shared", "m")]);
                (owned(&["ref", "commit", &m]), vec![m, root.clone()])
            };
            let runs = sweep(&env, &plan, Leaves::Nothing, &mut commit);
            eprintln!("commit ({backend}): {plan}: {runs} faulty runs");
            commits += runs;
            // Merge `a` and `b` (each run a new merged ref).
            let mut merge = |_| {
                let names = vec![a.clone(), b.clone(), root.clone()];
                (owned(&["ref", "merge", &a, &b]), names)
            };
            let runs = sweep(&env, &plan, Leaves::Nothing, &mut merge);
            eprintln!("merge ({backend}): {plan}: {runs} faulty runs");
            merges += runs;
        }
        tally(&env, "ref commit", backend, commits);
        tally(&env, "ref merge", backend, merges);
        // Export a fresh ref (so its layer is made, reading its files)
        // into a fresh layout every run.
        let outs = env.path("outs");
        let mut n = 0;
        let mut export = |_| {
            n += 1;
            let r = built(&env, "e", &[("e", &n.to_string()), ("shared", "e")]);
            let out = outs.join(n.to_string());
            let dest = format!("oci:{}:1", out.display());
            let names = vec![r.clone(), root.clone(), out.display().to_string()];
            (owned(&["image", "export", &r, &dest]), names)
        };
        let mut plans = root_plans(&env);
        plans.extend([
            format!("read:{root}/snapshots/"),
            format!("fsync:{}/", outs.display()),
            format!("rename:{}/", outs.display()),
        ]);
        let mut total = 0;
        for plan in plans {
            let runs = sweep(&env, &plan, Leaves::Progress, &mut export);
            eprintln!("export ({backend}): {plan}: {runs} faulty runs");
            total += runs;
        }
        tally(&env, "image export", backend, total);
    }
}

#[test]
fn collection_under_faults() {
    if !root_only("collection_under_faults") {
        return;
    }
    for backend in ["overlay", "native"] {
        let env = Env::strata();
        env.run(&["--backend", backend, "check"]).expect(0);
        let kept = built(&env, "kept", &[("k", "kept")]);
        let root = env.root.display().to_string();
        let mut n = 0;
        // Fresh garbage every run: a blob and a committed snapshot under a
        // lease that is then removed.
        let mut collect = |_| {
            n += 1;
            let lease = format!("g{n}");
            let f = env.path(&lease);
            fs::write(&f, format!("garbage {n}")).unwrap();
            let f = f.display().to_string();
            let under = |args: &[&str]| {
                let mut all = vec!["--lease", lease.as_str()];
                all.extend(args);
                env.run(&all).expect(0);
            };
            under(&["content", "ingest", &f]);
            under(&["snapshot", "prepare", &format!("active{n}")]);
            under(&[
                "snapshot",
                "commit",
                &format!("done{n}"),
                &format!("active{n}"),
            ]);
            env.run(&["lease", "rm", &lease]).expect(0);
            (owned(&["gc"]), vec![root.clone()])
        };
        let mut total = 0;
        for plan in root_plans(&env) {
            let runs = sweep(&env, &plan, Leaves::AllOrNothing, &mut collect);
            eprintln!("gc ({backend}): {plan}: {runs} faulty runs");
            total += runs;
        }
        tally(&env, "gc", backend, total);
        // What a ref holds survived every fault.
        let d = env.path("kept-mnt");
        fs::create_dir_all(&d).unwrap();
        let d = d.display().to_string();
        env.run(&["mount", &kept, &d]).expect(0);
        assert_eq!(fs::read_to_string(Path::new(&d).join("k")).unwrap(), "kept");
        env.run(&["umount", &d]).expect(0);
        env.run(&["check"]).expect(0);
    }
}
