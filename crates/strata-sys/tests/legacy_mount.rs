//! Overlays mounted the way kernels before 6.8 need, forced on this
//! kernel: a chain whose absolute paths overflow a page mounts through
//! short names, whose links stay while it is mounted so the mount table
//! still says which directories it uses (and go when it is unmounted), and
//! one too long even for those is refused with the numbers. Needs root.

use std::fs;
use std::path::PathBuf;

use strata_core::{Mount, OverlayLayers};
use strata_sys::mount;

fn chain(base: &std::path::Path, layers: usize) -> Vec<PathBuf> {
    let mut lowers = Vec::new();
    for i in 0..layers {
        // Long names, so that absolute paths cannot fit in a page.
        let dir = base.join(format!("layers/{i:04}-{}", "x".repeat(40)));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("file-{i}")), i.to_string()).unwrap();
        fs::write(dir.join("shared"), i.to_string()).unwrap();
        lowers.push(dir);
    }
    lowers.reverse();
    lowers
}

#[test]
fn legacy_overlays_mount_long_chains_through_short_names() {
    if !strata_testkit::require_root(
        "strata-sys::legacy_overlays_mount_long_chains_through_short_names",
    ) {
        return;
    }
    mount::force_legacy_overlay();
    assert!(mount::legacy_overlay());
    let tmp = tempfile::tempdir().unwrap();
    let lowers = chain(tmp.path(), 500);
    let (upper, work, target) = (
        tmp.path().join("upper"),
        tmp.path().join("work"),
        tmp.path().join("merged"),
    );
    for d in [&upper, &work, &target] {
        fs::create_dir_all(d).unwrap();
    }
    let m = Mount::overlay(
        OverlayLayers {
            lowers,
            upper: Some(upper.clone()),
            work: Some(work),
            ..OverlayLayers::default()
        },
        vec!["index=off".into()],
    );
    mount::mount(&m, &target).unwrap();
    // The lowers are listed by short names; the mount table reader
    // resolves them through the links.
    let busy = mount::info::directories_in_use();
    let shown = fs::read_to_string(target.join("shared"));
    let files = [0, 250, 499].map(|i| fs::read_to_string(target.join(format!("file-{i}"))));
    fs::write(target.join("new"), b"up").unwrap();
    mount::unmount(&target).unwrap();
    let busy = busy.unwrap();
    for lower in [0, 250, 499].map(|i| &m.layers.as_ref().unwrap().lowers[499 - i]) {
        assert!(
            busy.contains(lower),
            "{} is in use (among {} busy directories, last {:?})",
            lower.display(),
            busy.len(),
            busy.iter().rev().take(3).collect::<Vec<_>>()
        );
    }
    assert!(busy.contains(&upper));
    assert_eq!(shown.unwrap(), "499", "the topmost lower wins");
    for (i, f) in [0, 250, 499].iter().zip(files) {
        assert_eq!(f.unwrap(), i.to_string());
    }
    assert_eq!(fs::read(upper.join("new")).unwrap(), b"up");
    let left: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".lowers"))
        .collect();
    assert!(left.is_empty(), "scratch links removed: {left:?}");

    let too_many = chain(&tmp.path().join("more"), 1500);
    let m = Mount::overlay(
        OverlayLayers {
            lowers: too_many,
            ..OverlayLayers::default()
        },
        Vec::new(),
    );
    let err = mount::mount(&m, &target).unwrap_err().to_string();
    assert!(
        err.contains("1500 lower directories") && err.contains("4095"),
        "{err}"
    );
}
