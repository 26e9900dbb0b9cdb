//! The example backend's tree copy on its own: what the conformance suite's
//! chains never make (hard links, fifos, xattrs, device nodes) comes out of
//! [`copy_tree`] exactly as it went in, by the suite's own tree listing.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use strata_example_backend::copy_tree;
use strata_snapshot::testsuite::tree::render;
use strata_sys::{FileKind, Root, Times};

#[test]
fn copies_keep_every_entry_type_links_modes_xattrs_and_times() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::write(src.join("a/file"), "contents").unwrap();
    fs::hard_link(src.join("a/file"), src.join("a/b/link")).unwrap();
    fs::hard_link(src.join("a/file"), src.join("top-link")).unwrap();
    fs::write(src.join("tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(src.join("a/b"), fs::Permissions::from_mode(0o1777)).unwrap();
    symlink("../a/file", src.join("a/b/sym")).unwrap();
    let root = Root::open(&src).unwrap();
    root.mknod(Path::new("fifo"), FileKind::Fifo, 0o640, 0)
        .unwrap();
    if strata_sys::effective_uid() == 0 {
        root.mknod(Path::new("null"), FileKind::CharDevice, 0o666, (1 << 8) | 3)
            .unwrap();
    }
    root.set_xattr(Path::new("a/file"), OsStr::new("user.example"), b"kept")
        .unwrap();
    let t = Times {
        sec: 1_600_000_000,
        nsec: 0,
    };
    for p in ["a/file", "tool", "a/b/sym", "fifo"] {
        root.set_times(Path::new(p), t, t).unwrap();
    }

    let dst = tmp.path().join("dst");
    copy_tree(&src, &dst).unwrap();
    let (before, after) = (render(&src), render(&dst));
    assert_eq!(after, before);
    // What the listing shows, so the comparison above means something.
    for shown in [
        "/a/b/link File",
        " link=/a/b/link",
        "/a/b Dir 1777",
        "/tool File 4755",
        "user.example=kept",
        "/fifo Fifo 0640",
        "/a/b/sym Symlink",
        " mtime=1600000000",
    ] {
        assert!(after.contains(shown), "{shown:?} missing from:\n{after}");
    }
}
