//! Fuzzes the layer applier with arbitrary bytes (as plain tar, and wrapped
//! in gzip by the applier's own detection when the input starts with the
//! gzip magic). Whatever the input, applying must not panic, must stay
//! within its limits, and must never touch the sibling directory next to
//! the destination.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_diff::{ApplyOptions, Limits, apply};

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dest = tmp.path().join("dest");
    let sibling = tmp.path().join("sibling");
    std::fs::create_dir(&dest).expect("dest");
    std::fs::create_dir(&sibling).expect("sibling");
    std::fs::write(sibling.join("keep"), b"keep").expect("sentinel");
    let opts = ApplyOptions {
        name: "fuzz".into(),
        skip_devices: true,
        limits: Limits {
            max_uncompressed: 64 << 20,
            max_entries: 10_000,
            ..Limits::default()
        },
        ..ApplyOptions::default()
    };
    let _outcome = apply(data, &dest, &opts);
    let names: Vec<_> = std::fs::read_dir(&sibling).expect("list sibling").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, ["keep"], "the applier wrote outside its destination");
    assert_eq!(std::fs::read(sibling.join("keep")).expect("sentinel"), b"keep");
});
