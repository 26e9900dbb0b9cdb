//! The native backend's tree copy keeps everything a layer can hold: hard
//! links within the tree, xattrs, ownership, modes with setuid/setgid/sticky,
//! times (directories included), symlinks, devices, fifos, sockets and
//! sparse holes.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use strata_native::copy_tree;
use strata_sys::{FileKind, Root, Times};
use strata_testkit::tree::render;

fn build(src: &Path, privileged: bool) {
    let r = Root::open(src).unwrap();
    fs::create_dir_all(src.join("usr/bin")).unwrap();
    fs::write(src.join("usr/bin/tool"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(src.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(src.join("usr/bin/tool"), src.join("usr/bin/tool-alias")).unwrap();
    fs::create_dir(src.join("tmp")).unwrap();
    fs::set_permissions(src.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir(src.join("shared")).unwrap();
    fs::set_permissions(src.join("shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    symlink("../usr/bin/tool", src.join("tmp/link")).unwrap();
    symlink("/does/not/exist", src.join("dangling")).unwrap();
    r.mknod(Path::new("fifo"), FileKind::Fifo, 0o640, 0)
        .unwrap();
    drop(std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap());
    r.set_xattr(
        Path::new("usr/bin/tool"),
        OsStr::new("user.origin"),
        b"layer",
    )
    .unwrap();
    r.set_xattr(Path::new("usr"), OsStr::new("user.dir"), b"x")
        .unwrap();
    let sparse = fs::File::create(src.join("sparse")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", 32 << 20).unwrap();
    if privileged {
        r.mknod(
            Path::new("null"),
            FileKind::CharDevice,
            0o666,
            makedev(1, 3),
        )
        .unwrap();
        r.chown(Path::new("usr/bin"), 1000, 1001).unwrap();
        r.chown(Path::new("tmp/link"), 7, 8).unwrap();
        r.chown(Path::new("usr/bin/tool"), 0, 50).unwrap();
        r.chmod(Path::new("usr/bin/tool"), 0o4755).unwrap();
        r.set_xattr(Path::new("usr/bin/tool"), OsStr::new("trusted.t"), b"v")
            .unwrap();
    }
    for p in ["usr/bin/tool", "usr/bin", "usr", "dangling", ""] {
        r.set_times(
            Path::new(p),
            Times {
                sec: 1_000_000,
                nsec: 5,
            },
            Times {
                sec: 2_000_000,
                nsec: 7,
            },
        )
        .unwrap();
    }
}

fn makedev(major: u64, minor: u64) -> u64 {
    // glibc's encoding, as the kernel's new_encode_dev expects.
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

fn check_copy(privileged: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build(&src, privileged);
    let dst = tmp.path().join("dst");
    let stats = copy_tree(&src, &dst).unwrap();
    assert_eq!(render(&src), render(&dst));
    assert_eq!(stats.hardlinks, 1);

    let a = fs::metadata(dst.join("usr/bin/tool")).unwrap();
    let b = fs::metadata(dst.join("usr/bin/tool-alias")).unwrap();
    assert_eq!(
        (a.ino(), a.nlink()),
        (b.ino(), 2),
        "hard links stay hard links"
    );
    let s = fs::metadata(dst.join("sparse")).unwrap();
    assert_eq!(s.len(), (32 << 20) + 3);
    assert!(
        s.blocks() * 512 < 1 << 20,
        "the hole was filled: {} blocks",
        s.blocks()
    );
    for p in ["usr/bin/tool", "usr/bin", "usr", ""] {
        let m = fs::symlink_metadata(dst.join(p)).unwrap();
        assert_eq!((m.mtime(), m.mtime_nsec()), (2_000_000, 7), "mtime of /{p}");
    }
    let l = fs::symlink_metadata(dst.join("dangling")).unwrap();
    assert_eq!(
        l.mtime(),
        2_000_000,
        "symlink times are kept without following"
    );
}

#[test]
fn copy_keeps_everything_unprivileged_can_make() {
    check_copy(false);
}

#[test]
fn copy_keeps_devices_ownership_and_trusted_xattrs() {
    if strata_testkit::require_root(
        "strata-native::copy_keeps_devices_ownership_and_trusted_xattrs",
    ) {
        check_copy(true);
    }
}

#[test]
fn copy_refuses_an_existing_destination() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("dst")).unwrap();
    assert!(copy_tree(tmp.path(), &tmp.path().join("dst")).is_err());
}

#[test]
fn copy_shares_extents_where_the_file_system_reflinks() {
    if !strata_testkit::loopfs::usable(
        "strata-native::copy_shares_extents_where_the_file_system_reflinks",
        "xfs",
        "xfsprogs",
    ) {
        return;
    }
    let xfs = strata_testkit::loopfs::LoopFs::new("xfs", &["-q", "-m", "reflink=1"], 512 << 20);
    let src = xfs.mnt().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    let data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 253) as u8).collect();
    fs::write(src.join("d/big"), &data).unwrap();
    fs::write(src.join("small"), b"x").unwrap();
    let stats = copy_tree(&src, &xfs.mnt().join("dst")).unwrap();
    assert_eq!((stats.reflinked, stats.copied), (2, 0), "{stats:?}");
    assert_eq!(fs::read(xfs.mnt().join("dst/d/big")).unwrap(), data);
    assert_eq!(render(&src), render(&xfs.mnt().join("dst")));
}
