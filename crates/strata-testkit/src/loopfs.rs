//! A file system of a given type on a loop device for one test: a sparse
//! image under the system temporary directory, `mkfs.TYPE`, `mount -o
//! loop`; unmounted and removed when dropped (never removed through a
//! mount it could not undo). For the backends that need their own file
//! system (btrfs) and the copies that behave differently on one (XFS
//! reflinks).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cmd`, panicking with its stderr when it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// True when `test` can make a loop file system of `fs_type` (root, its
/// `mkfs.TYPE` from `package`, a kernel that has it); otherwise records the
/// skip by name and returns false.
pub fn usable(test: &str, fs_type: &str, package: &str) -> bool {
    let mkfs = format!("mkfs.{fs_type}");
    let tools = [
        (mkfs.as_str(), package),
        ("mount", "mount"),
        ("umount", "mount"),
    ];
    if !crate::require_root(test) || !crate::require_tools(test, &tools) {
        return false;
    }
    let known = || {
        std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| {
            f.lines()
                .any(|l| l.split_whitespace().last() == Some(fs_type))
        })
    };
    if !known() {
        // A module not loaded yet.
        let _ = Command::new("modprobe").arg(fs_type).status();
    }
    known() || crate::skip(test, &format!("the kernel has no {fs_type}"))
}

/// A loop-mounted file system for the duration of a test.
#[derive(Debug)]
pub struct LoopFs {
    dir: Option<tempfile::TempDir>,
    mnt: PathBuf,
}

impl LoopFs {
    /// A fresh file system of `fs_type` made by `mkfs.TYPE MKFS_ARGS`, of
    /// `size` bytes (sparse: only what is written takes disk).
    pub fn new(fs_type: &str, mkfs_args: &[&str], size: u64) -> LoopFs {
        let dir = tempfile::Builder::new()
            .prefix(&format!("strata-{fs_type}-"))
            .tempdir()
            .expect("temp dir");
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .expect("create image")
            .set_len(size)
            .expect("size image");
        run(Command::new(format!("mkfs.{fs_type}"))
            .args(mkfs_args)
            .arg(&image));
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("create mount point");
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt));
        LoopFs {
            dir: Some(dir),
            mnt,
        }
    }

    /// Where it is mounted.
    pub fn mnt(&self) -> PathBuf {
        self.mnt.clone()
    }

    /// Where it is mounted, borrowed.
    pub fn mnt_path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let mnt = &self.mnt;
        let unmounted = [vec!["umount"], vec!["umount", "-l"]].iter().any(|cmd| {
            Command::new(cmd[0])
                .args(&cmd[1..])
                .arg(mnt)
                .status()
                .is_ok_and(|s| s.success())
        });
        if unmounted {
            // The image and the empty mount point go with the directory.
            drop(self.dir.take());
        } else {
            // Never delete through a mount: leave it all for a human.
            let dir = self.dir.take().expect("mounted").keep();
            eprintln!(
                "could not unmount {}; left {}",
                mnt.display(),
                dir.display()
            );
        }
    }
}
