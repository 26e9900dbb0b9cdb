//! A full file system under a root (a small tmpfs, as root): ingests and
//! image imports that run out of space fail with one clear line naming
//! what they were writing and why; nothing half-written is committed; once
//! space is free again (the test's ballast removed) the root checks clean,
//! every blob committed before reads back, and the same work succeeds.

use std::path::{Path, PathBuf};
use std::process::Command;

use strata_testkit::cli::Env;
use strata_testkit::layer_tar::{archive, entry};
use strata_testkit::oci_layout::Layout;
use tar::EntryType;

/// A tmpfs of `mib` MiB at `dir`, unmounted when dropped.
struct Small(PathBuf);

impl Small {
    fn mount(dir: &Path, mib: u64) -> Small {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs at {}", dir.display());
        Small(dir.to_path_buf())
    }

    /// Fills the file system but for about `keep_kib` KiB.
    fn fill_but(&self, keep_kib: u64) -> PathBuf {
        let st = Command::new("df")
            .args(["--output=avail", "-k"])
            .arg(&self.0)
            .output()
            .unwrap();
        let avail: u64 = String::from_utf8_lossy(&st.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let ballast = self.0.join("ballast");
        let f = std::fs::File::create(&ballast).unwrap();
        f.set_len(0).unwrap();
        let bytes = avail.saturating_sub(keep_kib) * 1024;
        let data = vec![7u8; bytes as usize];
        std::fs::write(&ballast, data).unwrap();
        ballast
    }
}

impl Drop for Small {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = strata_testkit::crash::Rng::new(seed);
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

#[test]
fn a_full_file_system_fails_clearly_and_keeps_the_root() {
    if !strata_testkit::require_root(
        "full_disk::a_full_file_system_fails_clearly_and_keeps_the_root",
    ) {
        return;
    }
    let mut env = Env::strata();
    let small = Small::mount(&env.path("small"), 24);
    env.root = small.0.join("root");
    env.run(&["content", "ls"]).expect(0);

    // Ingests of 1 MiB until one fails for want of space.
    let ballast = small.fill_but(3 * 1024);
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..8u64 {
        let file = env.path(&format!("blob{i}"));
        std::fs::write(&file, random(1 << 20, i + 1)).unwrap();
        let run = env.run(&["content", "ingest", &file.display().to_string()]);
        if run.code == 0 {
            acked.push(run.text().trim().to_owned());
        } else {
            failure = Some((file, run));
            break;
        }
    }
    let (failed_file, run) = failure.expect("the file system never filled up");
    eprintln!("ingest on a full disk: {}", run.stderr.trim());
    assert_eq!(
        run.code, 1,
        "a full disk is a failure, not bad input: {}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    assert!(
        run.stderr.contains("No space left on device"),
        "the reason: {}",
        run.stderr
    );
    assert!(run.stderr.contains("strata: "), "{}", run.stderr);

    // Space comes back: the root is whole, nothing half-written committed.
    std::fs::remove_file(&ballast).unwrap();
    env.run(&["check"]).expect(0);
    let listed: Vec<String> = env
        .run(&["--json", "content", "ls"])
        .expect(0)
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap().to_owned())
        .collect();
    let mut want = acked.clone();
    want.sort();
    let mut got = listed.clone();
    got.sort();
    assert_eq!(got, want, "exactly the acknowledged blobs");
    for d in &acked {
        let out = env.cmd(&["content", "cat", d]).output().unwrap();
        assert_eq!(
            strata_core::Digest::of_bytes(strata_core::Algorithm::Sha256, &out.stdout).to_string(),
            *d
        );
    }
    env.run(&["content", "ingest", &failed_file.display().to_string()])
        .expect(0);

    // Images that do not fit, both ways: a layer blob too big to fetch, and
    // a small blob (a repeating pattern compresses; zeros would unpack as
    // holes and take no space) that unpacks bigger than the space
    // left. Each import fails, commits no snapshot, and succeeds once there
    // is room.
    for (name, data) in [
        ("fetch", random(4 << 20, 99)),
        ("unpack", (0..6u32 << 20).map(|i| (i % 251) as u8).collect()),
    ] {
        let layout_dir = env.path(&format!("layout-{name}"));
        let layout = Layout::new(&layout_dir);
        let manifest = layout.image(&[archive(&[
            entry("data/", EntryType::Directory, b"", ""),
            entry("data/big", EntryType::Regular, &data, ""),
        ])]);
        layout.tag(&manifest, "1");
        let source = format!("oci:{}:1", layout_dir.display());
        let ballast = small.fill_but(2 * 1024);
        let run = env.run(&["image", "import", &source, "--name", name]);
        eprintln!("{name} on a full disk: {}", run.stderr);
        assert_eq!(run.code, 1, "{name}: {}", run.stderr);
        assert!(
            run.stderr.contains("No space left on device"),
            "{name}: {}",
            run.stderr
        );
        std::fs::remove_file(&ballast).unwrap();
        env.run(&["check"]).expect(0);
        let committed_before: usize = 2 * usize::from(name == "unpack");
        let snapshots = env.run(&["--json", "snapshot", "ls"]).expect(0).json();
        let committed = snapshots
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == "committed")
            .count();
        assert!(
            committed <= committed_before,
            "{name}: a failed import commits nothing: {snapshots}"
        );
        env.run(&["image", "import", &source, "--name", name])
            .expect(0);
        env.run(&["check"]).expect(0);
    }
}
