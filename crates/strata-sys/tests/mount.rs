//! Real mounts: binds (read-only included), overlays with hundreds of lower
//! directories through the new mount API, and removal that refuses to cross
//! a mount point. All need root; without it they are reported as skipped.

use std::fs;
use std::path::{Path, PathBuf};

use strata_core::Mount;
use strata_sys::{Root, mount};

fn bind(source: &Path, ro: bool) -> Mount {
    let mut options = vec!["rbind".to_string()];
    if ro {
        options.push("ro".into());
    }
    Mount {
        kind: strata_core::MountKind::Bind,
        source: source.to_path_buf(),
        target: PathBuf::new(),
        options,
        layers: None,
    }
}

/// Unmounts on drop so a failing assertion leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if mount::is_mount_point(&self.0).unwrap_or(false) {
            mount::unmount(&self.0).unwrap();
        }
    }
}

#[test]
fn bind_read_only_and_unmount() {
    if !strata_testkit::require_root("strata-sys::bind_read_only_and_unmount") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&dst).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    mount::mount(&bind(&src, true), &dst).unwrap();
    let guard = Mounted(dst.clone());
    assert!(mount::is_mount_point(&dst).unwrap());
    assert_eq!(fs::read(dst.join("f")).unwrap(), b"x");
    let err = fs::write(dst.join("g"), b"y").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "expected EROFS: {err}");
    drop(guard);
    assert!(!mount::is_mount_point(&dst).unwrap());
}

#[test]
fn remove_all_refuses_to_cross_a_mount() {
    if !strata_testkit::require_root("strata-sys::remove_all_refuses_to_cross_a_mount") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let precious = tmp.path().join("precious");
    fs::create_dir_all(&precious).unwrap();
    fs::write(precious.join("data"), b"keep").unwrap();
    let root_path = tmp.path().join("root");
    fs::create_dir_all(root_path.join("a/mnt")).unwrap();
    mount::mount(&bind(&precious, false), &root_path.join("a/mnt")).unwrap();
    let _guard = Mounted(root_path.join("a/mnt"));
    let root = Root::open(&root_path).unwrap();
    let err = root.remove_all(Path::new("a")).unwrap_err();
    assert!(err.to_string().contains("mount point"), "{err}");
    assert_eq!(fs::read(precious.join("data")).unwrap(), b"keep");
}

#[test]
fn overlay_with_500_lower_directories() {
    if !strata_testkit::require_root("strata-sys::overlay_with_500_lower_directories") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layers = 500;
    let mut lower = Vec::new();
    for i in 0..layers {
        let dir = tmp.path().join(format!("layers/{i:04}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("file-{i}")), i.to_string()).unwrap();
        // Every layer also writes `shared`; the topmost (first) lower wins.
        fs::write(dir.join("shared"), i.to_string()).unwrap();
        lower.push(dir.display().to_string());
    }
    lower.reverse();
    let upper = tmp.path().join("upper");
    let work = tmp.path().join("work");
    let target = tmp.path().join("merged");
    for d in [&upper, &work, &target] {
        fs::create_dir_all(d).unwrap();
    }
    let options = vec![
        format!("lowerdir={}", lower.join(":")),
        format!("upperdir={}", upper.display()),
        format!("workdir={}", work.display()),
        "index=off".into(),
    ];
    assert!(
        options[0].len() > 4096,
        "the option string must exceed a page"
    );
    let m = Mount {
        kind: strata_core::MountKind::Overlay,
        source: "overlay".into(),
        target: PathBuf::new(),
        // The flat form a peer would send: the layers are read out of it.
        options,
        layers: None,
    };
    mount::mount(&m, &target).unwrap();
    let _guard = Mounted(target.clone());
    assert_eq!(fs::read_to_string(target.join("shared")).unwrap(), "499");
    for i in [0, 250, 499] {
        assert_eq!(
            fs::read_to_string(target.join(format!("file-{i}"))).unwrap(),
            i.to_string()
        );
    }
    fs::write(target.join("new"), b"up").unwrap();
    assert_eq!(fs::read(upper.join("new")).unwrap(), b"up");
}

#[test]
fn overlay_errors_carry_the_kernel_message() {
    if !strata_testkit::require_root("strata-sys::overlay_errors_carry_the_kernel_message") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    fs::create_dir(&lower).unwrap();
    for (option, kernel_says) in [
        ("bogus=1", "Unknown parameter 'bogus'"),
        ("redirect_dir=sideways", "Bad value for 'redirect_dir'"),
    ] {
        let m = Mount {
            kind: strata_core::MountKind::Overlay,
            source: "overlay".into(),
            target: PathBuf::new(),
            options: vec![format!("lowerdir={}", lower.display()), option.into()],
            layers: None,
        };
        let err = mount::mount(&m, tmp.path()).unwrap_err();
        if mount::legacy_overlay() {
            // Before 6.8 the kernel logs its reason; mount(2) returns none.
            strata_testkit::skip(
                "strata-sys::overlay_errors_carry_the_kernel_message",
                "this kernel mounts overlays with mount(2), which returns no message",
            );
            return;
        }
        assert!(err.to_string().contains(kernel_says), "{err}");
    }
}
