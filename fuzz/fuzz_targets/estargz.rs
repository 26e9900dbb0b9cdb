//! Fuzzes the eStargz reader, writer and checker. The input is read twice:
//!
//! * as a blob: finding and parsing its TOC (`Index::read`) must not panic,
//!   whatever the bytes;
//! * as a tar stream followed by four bytes of knobs: when Strata's writer
//!   takes the tar, the eStargz blob it writes must apply, checked against
//!   its TOC, to exactly the tree the plain tar applies to; and the same
//!   blob with one byte changed (where the knobs say) must either apply to
//!   that same tree or be refused. A corruption that the checks let through
//!   with a different tree is a failure, as is any panic.
#![no_main]

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use strata_diff::estargz::{Index, is_format_entry};
use strata_diff::{ApplyOptions, apply};
use strata_testkit::tree::render;

mod common;

fn options(estargz: Option<Arc<Index>>) -> ApplyOptions {
    ApplyOptions {
        estargz,
        ..common::options()
    }
}

/// The tree `layer` applies to in a new directory `name` under `tmp`,
/// `None` when it is refused.
fn applied(tmp: &Path, name: &str, layer: &[u8], estargz: Option<Arc<Index>>) -> Option<String> {
    let dir = tmp.join(name);
    std::fs::create_dir(&dir).expect("make the destination");
    apply(&strata_leases::OpCtx::new(), layer, &dir, &options(estargz))
        .ok()
        .map(|_| render(&dir))
}

/// True when a name in `tar` could be one of the format's own (the writer
/// drops those, so the trees would differ by design).
fn names_a_format_entry(tar: &[u8]) -> bool {
    let mut archive = tar::Archive::new(tar);
    let Ok(entries) = archive.entries() else {
        return true;
    };
    for e in entries {
        let Ok(e) = e else { return true };
        let path = e.path_bytes();
        let last = path
            .rsplit(|&b| b == b'/')
            .find(|p| !p.is_empty())
            .unwrap_or(&[]);
        if is_format_entry(last) {
            return true;
        }
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let _ = Index::read(&mut Cursor::new(data));
    let Some((tar, knobs, written, blob)) = common::estargz_of(data, 1) else {
        return;
    };
    if names_a_format_entry(tar) {
        return;
    }
    let index = Index::read(&mut Cursor::new(&blob))
        .expect("the TOC of a blob Strata wrote reads")
        .expect("a blob Strata wrote has a footer");
    assert_eq!(index.digest, written.toc_digest);
    let tmp = tempfile::tempdir().expect("temp dir");
    let Some(plain) = applied(tmp.path(), "plain", tar, None) else {
        return;
    };
    let ours = applied(tmp.path(), "estargz", &blob, Some(Arc::new(index)));
    assert_eq!(
        ours.as_ref(),
        Some(&plain),
        "the eStargz layer applies to another tree"
    );
    let mut bad = blob.clone();
    let at = usize::from(u16::from_le_bytes([knobs[1], knobs[2]])) * 257 % bad.len();
    bad[at] ^= knobs[3] | 1;
    if let Ok(Some(index)) = Index::read(&mut Cursor::new(&bad))
        && let Some(tree) = applied(tmp.path(), "corrupt", &bad, Some(Arc::new(index)))
    {
        assert_eq!(
            tree, plain,
            "a corrupt eStargz layer applied to another tree (byte {at})"
        );
    }
});
