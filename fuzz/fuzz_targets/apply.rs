//! Fuzzes the layer applier with arbitrary bytes (as plain tar, and wrapped
//! in gzip by the applier's own detection when the input starts with the
//! gzip magic), onto a plain directory or, for inputs of odd length, into an
//! overlay upper directory over a lower one that holds a symlink to the
//! sibling. Whatever the input, applying must not panic, must stay within
//! its limits, and must never touch the sibling directory or the lower.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_diff::{ApplyOptions, Limits, OverlayTarget, apply};

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dest = tmp.path().join("dest");
    let sibling = tmp.path().join("sibling");
    let lower = tmp.path().join("lower");
    std::fs::create_dir(&dest).expect("dest");
    std::fs::create_dir(&sibling).expect("sibling");
    std::fs::create_dir_all(lower.join("etc")).expect("lower");
    std::fs::write(sibling.join("keep"), b"keep").expect("sentinel");
    std::fs::write(lower.join("etc/passwd"), b"root").expect("lower file");
    std::os::unix::fs::symlink("../sibling", lower.join("link")).expect("lower symlink");
    // Odd lengths write an overlay upper directory; one in two of those
    // before its lowers are known (as a parallel unpack does).
    let overlay = (data.len() % 2 == 1).then(|| OverlayTarget {
        lowers: vec![lower.clone()],
        userxattr: false,
        detached: data.len() % 4 == 3,
    });
    let opts = ApplyOptions {
        name: "fuzz".into(),
        skip_devices: true,
        limits: Limits {
            max_uncompressed: 64 << 20,
            max_entries: 10_000,
            ..Limits::default()
        },
        overlay,
        ..ApplyOptions::default()
    };
    let _outcome = apply(&strata_leases::OpCtx::new(), data, &dest, &opts);
    let names: Vec<_> = std::fs::read_dir(&sibling)
        .expect("list sibling")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["keep"], "the applier wrote outside its destination");
    assert_eq!(
        std::fs::read(sibling.join("keep")).expect("sentinel"),
        b"keep"
    );
    let mut lower_names: Vec<_> = std::fs::read_dir(&lower)
        .expect("list lower")
        .map(|e| e.expect("entry").file_name())
        .collect();
    lower_names.sort();
    assert_eq!(
        lower_names,
        ["etc", "link"],
        "the applier changed the lower directory"
    );
    assert_eq!(
        std::fs::read(lower.join("etc/passwd")).expect("lower file"),
        b"root"
    );
});
