//! Scenario tests of the root-confined directory handle on real directories,
//! including the symlink and hardlink escapes SECURITY.md rules 1–5 forbid.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use strata_core::{Classify, ErrorKind};
use strata_sys::{FileKind, Root, Times};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: Root,
    outside: std::path::PathBuf,
}

/// A root at `<tmp>/root` and a sibling `<tmp>/outside` holding `secret`.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root_path = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir(&root_path).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"keep").unwrap();
    let root = Root::open(&root_path).unwrap();
    Fixture {
        _tmp: tmp,
        root,
        outside,
    }
}

fn outside_untouched(f: &Fixture) {
    let names: Vec<_> = fs::read_dir(&f.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        [OsStr::new("secret")],
        "something was written outside the root"
    );
    assert_eq!(fs::read(f.outside.join("secret")).unwrap(), b"keep");
}

#[test]
fn create_write_read_round_trip() {
    let f = fixture();
    f.root.mkdir_all(Path::new("a/b/c"), 0o755).unwrap();
    let mut file = f.root.create_file(Path::new("/a/b/c/file"), 0o640).unwrap();
    file.write_all(b"hello").unwrap();
    let mut back = String::new();
    f.root
        .open_file(Path::new("a/./b/../b/c/file"))
        .unwrap()
        .read_to_string(&mut back)
        .unwrap();
    assert_eq!(back, "hello");
    let md = f.root.stat(Path::new("a/b/c/file")).unwrap();
    assert_eq!(md.kind, FileKind::File);
    assert_eq!(md.size, 5);
    // Creating again is refused: the final component is O_EXCL.
    let err = f
        .root
        .create_file(Path::new("a/b/c/file"), 0o644)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
}

#[test]
fn dotdot_above_root_is_rejected() {
    let f = fixture();
    for p in ["..", "../outside/x", "a/../../x", "/../x"] {
        let err = f.root.create_file(Path::new(p), 0o644).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{p}: {err}");
        assert!(err.to_string().contains("climbs above the root"), "{err}");
    }
    let err = f.root.create_file(Path::new("/"), 0o644).unwrap_err();
    assert!(err.to_string().contains("root itself"), "{err}");
    outside_untouched(&f);
}

#[test]
fn absolute_symlink_is_rerooted() {
    let f = fixture();
    // A layer plants `evil -> <outside>`; writing through it must land inside.
    symlink(&f.outside, f.root.path().join("evil")).unwrap();
    let err = f.root.create_file(Path::new("evil/x"), 0o644).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // Once the re-rooted target exists inside the root, that is where it goes.
    f.root
        .mkdir_all(f.outside.strip_prefix("/").unwrap(), 0o755)
        .unwrap();
    f.root.create_file(Path::new("evil/x"), 0o644).unwrap();
    assert!(
        f.root
            .path()
            .join(f.outside.strip_prefix("/").unwrap())
            .join("x")
            .exists()
    );
    outside_untouched(&f);
}

#[test]
fn relative_symlink_climbing_out_is_clamped() {
    let f = fixture();
    symlink("../../../../outside", f.root.path().join("up")).unwrap();
    let err = f
        .root
        .create_file(Path::new("up/secret"), 0o644)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    f.root.mkdir(Path::new("outside"), 0o755).unwrap();
    f.root.create_file(Path::new("up/secret"), 0o644).unwrap();
    assert!(f.root.path().join("outside/secret").exists());
    outside_untouched(&f);
}

#[test]
fn final_symlink_is_never_followed() {
    let f = fixture();
    let secret = f.outside.join("secret");
    symlink(&secret, f.root.path().join("link")).unwrap();
    assert_eq!(
        f.root
            .create_file(Path::new("link"), 0o644)
            .unwrap_err()
            .kind(),
        ErrorKind::AlreadyExists
    );
    let err = f.root.open_file(Path::new("link")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
    let err = f.root.chmod(Path::new("link"), 0o777).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    f.root
        .set_times(
            Path::new("link"),
            Times { sec: 1, nsec: 0 },
            Times { sec: 2, nsec: 0 },
        )
        .unwrap();
    assert_ne!(fs::metadata(&secret).unwrap().mtime(), 2);
    assert_eq!(f.root.stat(Path::new("link")).unwrap().mtime.sec, 2);
    assert_eq!(
        f.root.read_link(Path::new("link")).unwrap(),
        secret.as_os_str()
    );
    // Unlinking removes the link, not its target.
    f.root.unlink(Path::new("link")).unwrap();
    outside_untouched(&f);
    assert_eq!(
        fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o644
    );
}

#[test]
fn hardlinks_stay_inside_and_never_name_directories() {
    let f = fixture();
    f.root.mkdir(Path::new("dir"), 0o755).unwrap();
    let err = f
        .root
        .hardlink(Path::new("dir"), Path::new("dirlink"))
        .unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");

    // A link whose source goes through a symlink pointing outside resolves
    // inside the root instead.
    symlink(&f.outside, f.root.path().join("out")).unwrap();
    let err = f
        .root
        .hardlink(Path::new("out/secret"), Path::new("stolen"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = f
        .root
        .hardlink(Path::new("../outside/secret"), Path::new("stolen"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");

    // A link to a symlink links the symlink itself.
    symlink("/etc/passwd", f.root.path().join("sym")).unwrap();
    f.root
        .hardlink(Path::new("sym"), Path::new("sym2"))
        .unwrap();
    let md = f.root.stat(Path::new("sym2")).unwrap();
    assert_eq!(md.kind, FileKind::Symlink);
    assert_eq!(md.nlink, 2);

    // An ordinary link shares the inode.
    f.root.create_file(Path::new("file"), 0o644).unwrap();
    f.root
        .hardlink(Path::new("file"), Path::new("dir/file2"))
        .unwrap();
    assert_eq!(
        f.root.stat(Path::new("file")).unwrap().ino,
        f.root.stat(Path::new("dir/file2")).unwrap().ino
    );
    outside_untouched(&f);
}

#[test]
fn remove_all_does_not_follow_symlinks() {
    let f = fixture();
    f.root.mkdir_all(Path::new("d/e/g"), 0o755).unwrap();
    f.root.create_file(Path::new("d/e/g/file"), 0o644).unwrap();
    symlink(&f.outside, f.root.path().join("d/e/out")).unwrap();
    symlink(&f.outside, f.root.path().join("d/outdir")).unwrap();
    assert!(f.root.remove_all(Path::new("d")).unwrap());
    assert!(f.root.try_stat(Path::new("d")).unwrap().is_none());
    assert!(!f.root.remove_all(Path::new("d")).unwrap());
    outside_untouched(&f);

    // Removing a symlink to a directory removes only the link.
    symlink(&f.outside, f.root.path().join("top")).unwrap();
    assert!(f.root.remove_all(Path::new("top")).unwrap());
    outside_untouched(&f);
}

#[test]
fn remove_all_handles_deep_trees_with_few_fds() {
    let f = fixture();
    let deep: std::path::PathBuf = (0..300).map(|i| format!("{}", i % 10)).collect();
    f.root.mkdir_all(&deep, 0o755).unwrap();
    f.root.create_file(&deep.join("leaf"), 0o644).unwrap();
    assert!(f.root.remove_all(Path::new("0")).unwrap());
    assert!(f.root.read_dir(Path::new("")).unwrap().is_empty());
}

#[test]
fn metadata_operations() {
    let f = fixture();
    f.root.create_file(Path::new("f"), 0o644).unwrap();
    f.root.chmod(Path::new("f"), 0o4755).unwrap();
    assert_eq!(f.root.stat(Path::new("f")).unwrap().mode, 0o4755);
    f.root.mkdir(Path::new("sticky"), 0o755).unwrap();
    f.root.chmod(Path::new("sticky"), 0o1777).unwrap();
    assert_eq!(f.root.stat(Path::new("sticky")).unwrap().mode, 0o1777);
    f.root
        .set_times(
            Path::new("f"),
            Times { sec: 10, nsec: 5 },
            Times { sec: 20, nsec: 7 },
        )
        .unwrap();
    let md = f.root.stat(Path::new("f")).unwrap();
    assert_eq!(md.mtime, Times { sec: 20, nsec: 7 });
    assert_eq!(md.atime, Times { sec: 10, nsec: 5 });

    f.root
        .set_xattr(Path::new("f"), OsStr::new("user.k"), b"v")
        .unwrap();
    assert_eq!(
        f.root
            .get_xattr(Path::new("f"), OsStr::new("user.k"))
            .unwrap()
            .as_deref(),
        Some(&b"v"[..])
    );
    assert!(
        f.root
            .list_xattrs(Path::new("f"))
            .unwrap()
            .contains(&"user.k".into())
    );
    f.root
        .remove_xattr(Path::new("f"), OsStr::new("user.k"))
        .unwrap();
    assert_eq!(
        f.root
            .get_xattr(Path::new("f"), OsStr::new("user.k"))
            .unwrap(),
        None
    );

    f.root
        .mknod(Path::new("fifo"), FileKind::Fifo, 0o600, 0)
        .unwrap();
    assert_eq!(f.root.stat(Path::new("fifo")).unwrap().kind, FileKind::Fifo);
    let err = f
        .root
        .mknod(Path::new("x"), FileKind::Dir, 0o600, 0)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);

    f.root
        .rename(Path::new("f"), Path::new("sticky/g"))
        .unwrap();
    let names: Vec<_> = f.root.read_dir(Path::new("sticky")).unwrap();
    assert_eq!(names, [("g".into(), Some(FileKind::File))]);
    f.root.fsync(Path::new("sticky/g")).unwrap();
    f.root.fsync(Path::new("")).unwrap();
    f.root.syncfs().unwrap();
}

#[test]
fn non_utf8_names_are_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let f = fixture();
    let name = Path::new(OsStr::from_bytes(b"caf\xe9"));
    f.root.create_file(name, 0o644).unwrap();
    let entries = f.root.read_dir(Path::new("")).unwrap();
    assert_eq!(entries[0].0.as_bytes(), b"caf\xe9");
}

#[test]
fn privileged_ownership_devices_and_trusted_xattrs() {
    if !strata_testkit::require_root("strata-sys::privileged_ownership_devices_and_trusted_xattrs")
    {
        return;
    }
    let f = fixture();
    f.root.create_file(Path::new("f"), 0o644).unwrap();
    f.root.chown(Path::new("f"), 1234, 5678).unwrap();
    let md = f.root.stat(Path::new("f")).unwrap();
    assert_eq!((md.uid, md.gid), (1234, 5678));

    symlink(f.outside.join("secret"), f.root.path().join("link")).unwrap();
    f.root.chown(Path::new("link"), 42, 43).unwrap();
    assert_eq!(fs::metadata(f.outside.join("secret")).unwrap().uid(), 0);
    assert_eq!(f.root.stat(Path::new("link")).unwrap().uid, 42);

    // The overlay whiteout shape: a 0/0 character device.
    f.root
        .mknod(Path::new("wh"), FileKind::CharDevice, 0, 0)
        .unwrap();
    let md = f.root.stat(Path::new("wh")).unwrap();
    assert_eq!((md.kind, md.rdev), (FileKind::CharDevice, 0));
    // The root itself takes metadata too (through its own fd).
    f.root
        .set_xattr(Path::new(""), OsStr::new("trusted.strata.test"), b"y")
        .unwrap();
    assert_eq!(
        f.root
            .get_xattr(Path::new(""), OsStr::new("trusted.strata.test"))
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(
        f.root
            .list_xattrs(Path::new(""))
            .unwrap()
            .contains(&"trusted.strata.test".into())
    );
    f.root
        .remove_xattr(Path::new(""), OsStr::new("trusted.strata.test"))
        .unwrap();
    f.root.chown(Path::new(""), 7, 8).unwrap();
    f.root.chmod(Path::new(""), 0o751).unwrap();
    let md = f.root.stat(Path::new("")).unwrap();
    assert_eq!((md.uid, md.gid, md.mode), (7, 8, 0o751));
    f.root.mkdir(Path::new("d"), 0o755).unwrap();
    f.root
        .set_xattr(Path::new("d"), OsStr::new("trusted.overlay.opaque"), b"y")
        .unwrap();
    assert_eq!(
        f.root
            .get_xattr(Path::new("d"), OsStr::new("trusted.overlay.opaque"))
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    outside_untouched(&f);
}
