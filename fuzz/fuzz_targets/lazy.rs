//! Fuzzes lazy reads. The input is read twice:
//!
//! * as a blob: finding its TOC through two range reads and building the
//!   lazy tree from it must not panic, whatever the bytes;
//! * as a tar stream followed by four bytes of knobs: Strata writes it as
//!   eStargz, and a lazy layer over that blob (opened with the TOC digest
//!   the writer gave) must read every regular file as the plain tar's
//!   extraction has it; over the same blob with one byte changed (where the
//!   knobs say) every read must give those same bytes or fail. A wrong
//!   byte served is a failure, as is any panic. A layer the lazy reader
//!   refuses to open is not one.
#![no_main]

use std::io;
use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use strata_core::Digest;
use strata_diff::apply;
use strata_lazy::{
    ChunkCache, Kind, Layer, LayerOptions, Link, ROOT, RangeSource, Tree, read_index,
};

mod common;

/// A blob in memory.
struct Mem(Vec<u8>);

impl RangeSource for Mem {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.checked_add(len).filter(|&e| e <= self.size());
        let end = end.ok_or_else(|| io::Error::other("a range past the blob"))?;
        Ok(self.0[offset as usize..end as usize].to_vec())
    }
}

fn open(blob: Vec<u8>, toc: &Digest, cache: &Path) -> io::Result<Layer> {
    Layer::open(
        Arc::new(Mem(blob)),
        Arc::new(ChunkCache::open(cache)?),
        &LayerOptions {
            name: "fuzz".into(),
            toc_digest: toc.clone(),
            opaque_xattr: "trusted.overlay.opaque".into(),
            link: Arc::new(Link::new(std::time::Duration::ZERO)),
        },
    )
}

/// Every regular file of `tree` with its path below the root.
fn files(tree: &Tree) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![(ROOT, String::new())];
    while let Some((ino, path)) = stack.pop() {
        match &tree.node(ino).kind {
            Kind::Dir { children, .. } => {
                for (name, &child) in children {
                    stack.push((child, format!("{path}/{name}")));
                }
            }
            Kind::File(_) => out.push((path, ino)),
            _ => {}
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(index)) = read_index(&Mem(data.to_vec())) {
        let _ = Tree::from_toc(&index.toc, "trusted.overlay.opaque");
    }
    // Chunks of 256 bytes at least: each chunk read lazily is a file in
    // the cache, and 1-byte chunks made one input take seconds.
    let Some((tar, knobs, written, blob)) = common::estargz_of(data, 256) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).expect("make the destination");
    let applied = apply(&strata_leases::OpCtx::new(), tar, &plain, &common::options());
    if applied.is_err() {
        return;
    }
    // The byte changed is in the members before the TOC (a changed TOC
    // only fails to open, as its digest is known): file data, mostly.
    let toc_at = strata_diff::estargz::footer_toc_offset(&blob[blob.len().saturating_sub(51)..])
        .expect("a blob Strata wrote has a footer");
    let mut bad = blob.clone();
    let at = usize::from(u16::from_le_bytes([knobs[1], knobs[2]])) * 257
        % usize::try_from(toc_at).expect("an offset in memory").max(1);
    bad[at] ^= knobs[3] | 1;
    for (name, blob, whole) in [("good", blob, true), ("bad", bad, false)] {
        // A layer may be refused (an entry below a symlink, which an eager
        // import resolves inside the tree, is refused lazily); one that
        // opens must read right.
        let Ok(layer) = open(blob, &written.toc_digest, &tmp.path().join(name)) else {
            continue;
        };
        for (path, ino) in files(layer.tree()) {
            let want = std::fs::read(plain.join(path.trim_start_matches('/')));
            let got = layer.read(ino, 0, layer.tree().node(ino).size);
            match (got, want) {
                (Ok(got), Ok(want)) => assert!(got == want, "{name}: {path} reads other bytes"),
                (Err(e), _) if whole => panic!("{name}: {path} does not read: {e}"),
                (Ok(_), Err(e)) => panic!("{name}: {path} reads lazily but was not extracted: {e}"),
                (Err(_), _) => {}
            }
        }
    }
});
