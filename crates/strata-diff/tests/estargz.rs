//! eStargz layers: random trees written as eStargz and applied back give
//! the same tree without the format's entries; the TOC is found through
//! the footer; prioritized files come first; and a TOC that lies about the
//! layer (a chunk digest, an offset, an entry's metadata, a missing entry)
//! is refused by name, whatever the lie. The reference implementation's
//! view of the same layers is checked in the CLI tests (a Go oracle).

use std::fs;
use std::io::{Cursor, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use strata_diff::estargz::{EStargzOptions, Index, Toc, has_footer};
use strata_diff::{
    ApplyError, ApplyOptions, Comparison, Compression, WriteOptions, apply, walk_changes,
    write_layer,
};
use strata_testkit::crash::Rng;
use strata_testkit::tree::{render, without_sockets};

fn estargz(dir: &Path, estargz: EStargzOptions) -> (Vec<u8>, strata_diff::Written) {
    let opts = WriteOptions {
        compression: Compression::EStargz,
        estargz,
        ..WriteOptions::default()
    };
    let (written, blob) = write_layer(&strata_leases::OpCtx::new(), Vec::new(), dir, &opts, |w| {
        walk_changes(None, dir, Comparison::Compat, &mut |c| w.change(&c))
    })
    .unwrap();
    (blob, written)
}

fn index(blob: &[u8]) -> Arc<Index> {
    Arc::new(
        Index::read(&mut Cursor::new(blob))
            .unwrap()
            .expect("an eStargz footer"),
    )
}

fn apply_to(blob: &[u8], dest: &Path, index: Option<Arc<Index>>) -> Result<(), ApplyError> {
    apply(
        &strata_leases::OpCtx::new(),
        blob,
        dest,
        &ApplyOptions {
            name: "layer".into(),
            estargz: index,
            ..ApplyOptions::default()
        },
    )
    .map(|_| ())
}

#[test]
fn random_trees_round_trip_without_the_format_entries() {
    for seed in strata_testkit::random_tree::seeds("estargz_round_trips", 8) {
        let mut rng = Rng::new(seed);
        let t = tempfile::tempdir().unwrap();
        let (src, back, plain) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
        for d in [&src, &back, &plain] {
            fs::create_dir(d).unwrap();
        }
        strata_testkit::random_tree::populate(&src, &mut rng, 60);
        strata_testkit::random_tree::utf8_names_only(&src);
        // Small chunks, so files span several members.
        let opts = EStargzOptions {
            chunk_size: 1 + rng.below(8192),
            ..EStargzOptions::default()
        };
        let (blob, written) = estargz(&src, opts.clone());
        assert_eq!(estargz(&src, opts).0, blob, "seed {seed}: deterministic");
        let idx = index(&blob);
        assert_eq!(Some(&idx.digest), written.toc_digest.as_ref());
        assert_eq!(idx.blob_size, blob.len() as u64);
        apply_to(&blob, &back, Some(idx)).unwrap();
        assert_eq!(without_sockets(&render(&src)), render(&back), "seed {seed}");
        // Read as the plain gzip it also is, the format's entries show.
        apply_to(&blob, &plain, None).unwrap();
        assert!(plain.join("stargz.index.json").exists());
        assert!(plain.join(".no.prefetch.landmark").exists());
    }
}

/// The entry names of a layer, in stream order.
fn names(blob: &[u8]) -> Vec<String> {
    let mut ar = tar::Archive::new(flate2::read::MultiGzDecoder::new(blob));
    ar.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn prioritized_files_come_first_after_their_directories() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    fs::create_dir_all(d.join("a/b")).unwrap();
    fs::write(d.join("a/b/late"), "x").unwrap();
    fs::write(d.join("first"), "y").unwrap();
    fs::write(d.join("zz"), "z").unwrap();
    fs::hard_link(d.join("zz"), d.join("a/link")).unwrap();
    let (blob, _) = estargz(
        d,
        EStargzOptions {
            // `a/link` sorts first, so it holds the content and `zz` is
            // the link: prioritizing `zz` brings its target first.
            prioritized: vec!["a/b/late".into(), "/zz".into(), "missing".into()],
            ..EStargzOptions::default()
        },
    );
    let n = names(&blob);
    assert_eq!(
        &n[..6],
        [
            "a/",
            "a/b/",
            "a/b/late",
            "a/link",
            "zz",
            ".prefetch.landmark"
        ],
        "{n:?}"
    );
    assert_eq!(n.last().unwrap(), "stargz.index.json");
    let back = tempfile::tempdir().unwrap();
    apply_to(&blob, back.path(), Some(index(&blob))).unwrap();
    assert_eq!(render(d), render(back.path()));
}

/// `blob` with its TOC edited by `edit` (a new TOC member and footer).
fn with_toc(blob: &[u8], edit: impl FnOnce(&mut Toc)) -> Vec<u8> {
    let idx = index(blob);
    let mut toc = idx.toc.clone();
    edit(&mut toc);
    let json = serde_json::to_vec(&toc).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(json.len() as u64);
    h.set_mode(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    tar.append_data(&mut h, "stargz.index.json", json.as_slice())
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let off = idx.toc_offset;
    let mut out = blob[..usize::try_from(off).unwrap()].to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let toc_at = out.len() as u64;
    out.extend(gz.finish().unwrap());
    // The footer, built here by hand from the format's description.
    out.extend([
        0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255, 26, 0, b'S', b'G', 22, 0,
    ]);
    out.extend(format!("{toc_at:016x}STARGZ").bytes());
    out.extend([1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    out
}

#[test]
fn a_toc_that_lies_about_the_layer_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("src");
    fs::create_dir_all(d.join("dir")).unwrap();
    let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(d.join("dir/big"), &big).unwrap();
    fs::write(d.join("small"), "small").unwrap();
    let (blob, _) = estargz(
        &d,
        EStargzOptions {
            chunk_size: 4096,
            ..EStargzOptions::default()
        },
    );
    // The unedited TOC, rewritten the same way, passes: the harness itself
    // is not what fails below.
    let same = with_toc(&blob, |_| {});
    fs::create_dir(t.path().join("ok")).unwrap();
    apply_to(&same, &t.path().join("ok"), Some(index(&same))).unwrap();
    let find = |toc: &Toc, name: &str, kind: &str| {
        toc.entries
            .iter()
            .position(|e| e.name == name && e.kind == kind)
            .unwrap()
    };
    type Edit = Box<dyn Fn(&mut Toc)>;
    let lies: Vec<(&str, Edit, &str)> = vec![
        (
            "chunk digest",
            Box::new(move |t| {
                let i = find(t, "dir/big", "chunk");
                t.entries[i].chunk_digest = format!("sha256:{}", "0".repeat(64));
            }),
            "has digest",
        ),
        (
            "offset",
            Box::new(move |t| {
                let i = find(t, "dir/big", "chunk");
                t.entries[i].offset += 1;
            }),
            "no gzip member starts",
        ),
        (
            "mode",
            Box::new(move |t| {
                let i = find(t, "small", "reg");
                t.entries[i].mode |= 0o4000;
            }),
            "unlike the layer",
        ),
        (
            "missing entry",
            Box::new(move |t| {
                let i = find(t, "small", "reg");
                t.entries.remove(i);
            }),
            "\"small\"",
        ),
        (
            "time",
            Box::new(move |t| {
                let i = find(t, "small", "reg");
                t.entries[i].mod_time = String::new();
            }),
            "unlike the layer",
        ),
        (
            "file digest",
            Box::new(move |t| {
                let i = find(t, "small", "reg");
                t.entries[i].digest = format!("sha256:{}", "1".repeat(64));
            }),
            "the TOC says",
        ),
    ];
    for (what, edit, says) in lies {
        let bad = with_toc(&blob, edit);
        let dest = t.path().join(what.replace(' ', "-"));
        fs::create_dir(&dest).unwrap();
        match apply_to(&bad, &dest, Some(index(&bad))) {
            Err(ApplyError::Invalid { reason, .. }) => {
                assert!(reason.contains("eStargz TOC"), "{what}: {reason}");
                assert!(reason.contains(says), "{what}: {reason}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn blobs_without_a_footer_are_no_estargz_and_bad_footers_are_named() {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("f"), "x").unwrap();
    let opts = WriteOptions {
        compression: Compression::Gzip,
        ..WriteOptions::default()
    };
    let (_, gz) = write_layer(
        &strata_leases::OpCtx::new(),
        Vec::new(),
        t.path(),
        &opts,
        |w| walk_changes(None, t.path(), Comparison::Compat, &mut |c| w.change(&c)),
    )
    .unwrap();
    assert!(Index::read(&mut Cursor::new(&gz)).unwrap().is_none());
    assert!(Index::read(&mut Cursor::new(b"")).unwrap().is_none());
    let (blob, _) = estargz(t.path(), EStargzOptions::default());
    // The footer alone tells one from the other.
    assert!(!has_footer(&mut Cursor::new(&gz)).unwrap());
    assert!(!has_footer(&mut Cursor::new(b"")).unwrap());
    assert!(has_footer(&mut Cursor::new(&blob)).unwrap());
    // A footer pointing past the data.
    let mut bad = blob.clone();
    let n = bad.len();
    bad[n - 35..n - 19].copy_from_slice(format!("{:016x}", n * 2).as_bytes());
    let err = Index::read(&mut Cursor::new(&bad)).unwrap_err();
    assert!(err.to_string().contains("past the data"), "{err}");
    // A footer pointing at something that is not the TOC.
    let mut bad = blob.clone();
    bad[n - 35..n - 19].copy_from_slice(format!("{:016x}", 0).as_bytes());
    let err = Index::read(&mut Cursor::new(&bad)).unwrap_err();
    assert!(err.to_string().contains("not stargz.index.json"), "{err}");
    // The plain tar inside reads back whole.
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(blob.as_slice())
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(tar.len() % 512, 0);
}

/// A plain tar of `entries` (name, content), in order.
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn the_bytes_do_not_depend_on_the_worker_count() {
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 20) as u8)
        .collect();
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("f{i}"), big[..(i * 7919) % 100_000].to_vec()))
        .chain([("big".to_owned(), big.clone())])
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let tar = tar_of(&refs);
    let opts = EStargzOptions {
        chunk_size: 65536,
        ..EStargzOptions::default()
    };
    let one = strata_diff::estargz::write(tar.as_slice(), Vec::new(), &opts, None, 1).unwrap();
    let four = strata_diff::estargz::write(tar.as_slice(), Vec::new(), &opts, None, 4).unwrap();
    assert_eq!(one.1, four.1);
    assert_eq!(one.0, four.0);
}

#[test]
fn a_name_written_twice_keeps_its_last_content_when_prioritized() {
    let tar = tar_of(&[("etc/conf", b"v1"), ("other", b"o"), ("etc/conf", b"v2")]);
    let opts = EStargzOptions {
        prioritized: vec!["etc/conf".into()],
        ..EStargzOptions::default()
    };
    let (_, blob) =
        strata_diff::estargz::write(tar.as_slice(), Vec::new(), &opts, None, 2).unwrap();
    let dest = tempfile::tempdir().unwrap();
    apply_to(&blob, dest.path(), Some(index(&blob))).unwrap();
    assert_eq!(fs::read(dest.path().join("etc/conf")).unwrap(), b"v2");
    assert_eq!(names(&blob).iter().filter(|n| *n == "etc/conf").count(), 1);
}

#[test]
fn entries_estargz_cannot_hold_are_named() {
    let t = tempfile::tempdir().unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"bad-\xff-name");
    fs::write(t.path().join(odd), "x").unwrap();
    // Large enough that the layer writer is still sending when the eStargz
    // side stops: its error must be the one reported.
    fs::write(t.path().join("z-big"), vec![7u8; 20 << 20]).unwrap();
    let opts = WriteOptions {
        compression: Compression::EStargz,
        ..WriteOptions::default()
    };
    let err = write_layer(
        &strata_leases::OpCtx::new(),
        Vec::new(),
        t.path(),
        &opts,
        |w| walk_changes(None, t.path(), Comparison::Compat, &mut |c| w.change(&c)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("UTF-8"), "{err}");
}
