//! Applying layers: round trips of real trees (plain, gzip, zstd), OCI
//! whiteouts and opaque directories, digest and diffID verification, and the
//! hostile inputs of SECURITY.md. Each hostile case ends in a clear error or
//! a confined result, and nothing outside the destination changes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use strata_core::{Algorithm, Classify, Digest, ErrorKind};
use strata_diff::{ApplyError, ApplyOptions, Compression, Limits, apply};
use strata_testkit::tree::render;

use strata_testkit::layer_tar::{archive as layer, entry as raw};

fn file(path: &str, data: &str) -> Vec<u8> {
    raw(
        path.as_bytes(),
        tar::EntryType::Regular,
        data.as_bytes(),
        b"",
    )
}

fn dir(path: &str) -> Vec<u8> {
    raw(path.as_bytes(), tar::EntryType::Directory, b"", b"")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dest: PathBuf,
    outside: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    let outside = tmp.path().join("outside");
    fs::create_dir(&dest).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "keep").unwrap();
    Fixture {
        _tmp: tmp,
        dest,
        outside,
    }
}

impl Fixture {
    fn apply(&self, bytes: &[u8]) -> Result<strata_diff::Applied, ApplyError> {
        apply(
            &strata_leases::OpCtx::new(),
            bytes,
            &self.dest,
            &ApplyOptions {
                name: "test-layer".into(),
                ..ApplyOptions::default()
            },
        )
    }

    fn outside_untouched(&self) {
        let names: Vec<_> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            ["secret"],
            "something was written outside the destination"
        );
        assert_eq!(
            fs::read_to_string(self.outside.join("secret")).unwrap(),
            "keep"
        );
    }
}

fn build_tree(src: &Path) {
    fs::create_dir_all(src.join("usr/bin")).unwrap();
    fs::write(src.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(src.join("usr/bin/tool"), src.join("usr/bin/alias")).unwrap();
    fs::create_dir(src.join("tmp")).unwrap();
    fs::set_permissions(src.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    symlink("../usr/bin/tool", src.join("tmp/link")).unwrap();
    fs::write(src.join("empty"), "").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(src.join("big"), big).unwrap();
}

/// The tree as GNU tar writes it: hard links as link entries (the `tar`
/// crate's `append_dir_all` writes each name of an inode as its own file,
/// which the tree render rightly tells apart).
fn tar_of(src: &Path) -> Vec<u8> {
    let out = std::process::Command::new("tar")
        .args(["--sort=name", "-C"])
        .arg(src)
        .args(["-cf", "-", "."])
        .output()
        .expect("run GNU tar");
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn round_trips_plain_gzip_and_zstd() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src);
    let plain = tar_of(&src);
    let variants = [
        (plain.clone(), Compression::None),
        (gzip(&plain), Compression::Gzip),
        (zstd::encode_all(&plain[..], 3).unwrap(), Compression::Zstd),
    ];
    let diff_id = Digest::of_bytes(Algorithm::Sha256, &plain);
    for (i, (bytes, compression)) in variants.into_iter().enumerate() {
        let dest = tmp.path().join(format!("dest{i}"));
        fs::create_dir(&dest).unwrap();
        let digest = Digest::of_bytes(Algorithm::Sha256, &bytes);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&seen);
        let opts = ApplyOptions {
            name: format!("variant {i}"),
            digest: Some(digest.clone()),
            diff_id: Some(diff_id.clone()),
            ..ApplyOptions::default()
        };
        let ctx = strata_leases::OpCtx::new().with_progress(move |n| {
            sink.lock().unwrap().push(n);
        });
        let applied = apply(&ctx, &bytes[..], &dest, &opts).unwrap();
        let seen = seen.lock().unwrap().clone();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "progress only grows");
        assert_eq!(
            seen.last(),
            Some(&(bytes.len() as u64)),
            "progress ends at the layer's size"
        );
        assert_eq!(
            (applied.compression, applied.digest, applied.diff_id.clone()),
            (compression, digest, diff_id.clone())
        );
        assert_eq!(applied.size, plain.len() as u64);
        // The tar root entry "./" applies to the destination itself.
        fs::set_permissions(&dest, fs::metadata(&src).unwrap().permissions()).unwrap();
        assert_eq!(render(&src), render(&dest), "variant {i}");
    }
}

#[test]
fn whiteouts_and_opaque_directories() {
    let f = fixture();
    fs::create_dir_all(f.dest.join("a/sub")).unwrap();
    fs::write(f.dest.join("a/old"), "lower").unwrap();
    fs::write(f.dest.join("b"), "lower").unwrap();
    fs::write(f.dest.join("c"), "lower").unwrap();
    let bytes = layer(&[
        file(".wh.b", ""),
        dir("a/"),
        file("a/.wh..wh..opq", ""),
        file("a/new", "upper"),
        file(".wh.missing", ""),
        file("gone/.wh.x", ""),
    ]);
    f.apply(&bytes).unwrap();
    assert!(!f.dest.join("b").exists());
    assert!(f.dest.join("c").exists());
    let a: Vec<_> = fs::read_dir(f.dest.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        a,
        ["new"],
        "an opaque directory keeps only this layer's entries"
    );
    // Markers never land on disk.
    assert!(!f.dest.join(".wh.b").exists() && !f.dest.join("a/.wh..wh..opq").exists());
}

#[test]
fn later_entries_win_and_parents_are_made() {
    let f = fixture();
    let bytes = layer(&[
        file("x/y/z", "first"),
        file("x/y/z", "second"),
        dir("x/y/z/"),
        file("x/y/z/inner", "i"),
    ]);
    f.apply(&bytes).unwrap();
    assert_eq!(fs::read_to_string(f.dest.join("x/y/z/inner")).unwrap(), "i");
}

#[test]
fn digest_and_diff_id_mismatches_name_both() {
    let f = fixture();
    let bytes = layer(&[file("f", "x")]);
    let wrong = Digest::of_bytes(Algorithm::Sha256, b"other");
    for (digest, diff_id, what) in [
        (Some(wrong.clone()), None, "digest"),
        (None, Some(wrong.clone()), "diffID"),
    ] {
        let err = apply(
            &strata_leases::OpCtx::new(),
            &bytes[..],
            &f.dest,
            &ApplyOptions {
                name: "L".into(),
                digest,
                diff_id,
                ..ApplyOptions::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid);
        let msg = err.to_string();
        assert!(
            msg.contains(what)
                && msg.contains(wrong.as_str())
                && msg.contains(Digest::of_bytes(Algorithm::Sha256, &bytes).as_str()),
            "{msg}"
        );
    }
    let err = apply(
        &strata_leases::OpCtx::new(),
        &bytes[..],
        &f.dest,
        &ApplyOptions {
            name: "L".into(),
            size: Some(bytes.len() as u64 + 1),
            ..ApplyOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "expected {} bytes, read {}",
            bytes.len() + 1,
            bytes.len()
        )),
        "{err}"
    );
}

fn expect_invalid(f: &Fixture, bytes: &[u8], needle: &str) {
    let err = f.apply(bytes).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains(needle), "{err}");
    f.outside_untouched();
}

#[test]
fn hostile_paths_stay_inside() {
    let f = fixture();
    expect_invalid(
        &f,
        &layer(&[file("../outside/pwned", "x")]),
        "climbs above the root",
    );
    expect_invalid(
        &f,
        &layer(&[file("a/../../outside/pwned", "x")]),
        "climbs above the root",
    );
    // Absolute names are re-rooted.
    f.apply(&layer(&[file("/etc/passwd", "root")])).unwrap();
    assert_eq!(
        fs::read_to_string(f.dest.join("etc/passwd")).unwrap(),
        "root"
    );
    // A symlink the layer plants, then a write through it.
    let outside = f.outside.display().to_string();
    // The symlink is re-rooted: the directories it names are made inside
    // (as containerd does) and the write lands there.
    f.apply(&layer(&[
        raw(b"evil", tar::EntryType::Symlink, b"", outside.as_bytes()),
        file("evil/pwned", "x"),
    ]))
    .unwrap();
    f.outside_untouched();
    assert!(
        f.dest
            .join(f.outside.strip_prefix("/").unwrap())
            .join("pwned")
            .exists(),
        "written inside, re-rooted"
    );
    // A symlink a lower layer planted, then whiteouts and an opaque marker through it.
    symlink(&f.outside, f.dest.join("lowerlink")).unwrap();
    f.apply(&layer(&[
        file("lowerlink/.wh.secret", ""),
        file("lowerlink/.wh..wh..opq", ""),
    ]))
    .unwrap();
    f.outside_untouched();
    expect_invalid(&f, &layer(&[file(".", "x")]), "names the root");
}

#[test]
fn hostile_links_and_whiteouts() {
    let f = fixture();
    expect_invalid(
        &f,
        &layer(&[raw(b"h", tar::EntryType::Link, b"", b"../outside/secret")]),
        "climbs above the root",
    );
    expect_invalid(
        &f,
        &layer(&[dir("d/"), raw(b"h", tar::EntryType::Link, b"", b"d")]),
        "is a directory",
    );
    expect_invalid(
        &f,
        &layer(&[raw(b"h", tar::EntryType::Link, b"", b"missing")]),
        "h",
    );
    // A link through a planted symlink resolves inside the destination.
    let outside = f.outside.display().to_string();
    let err = f
        .apply(&layer(&[
            raw(b"s", tar::EntryType::Symlink, b"", outside.as_bytes()),
            raw(b"h", tar::EntryType::Link, b"", b"s/secret"),
        ]))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    f.outside_untouched();
    // A link to a symlink links the symlink itself.
    f.apply(&layer(&[
        raw(b"sym", tar::EntryType::Symlink, b"", b"/etc/shadow"),
        raw(b"hl", tar::EntryType::Link, b"", b"sym"),
    ]))
    .unwrap();
    assert!(
        fs::symlink_metadata(f.dest.join("hl"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    expect_invalid(&f, &layer(&[file(".wh..", "")]), "whiteout");
    expect_invalid(&f, &layer(&[file(".wh.", "")]), "whiteout");
}

#[test]
fn overlay_private_xattrs_are_dropped() {
    let f = fixture();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_pax_extensions([
        ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
        ("SCHILY.xattr.user.kept", &b"v"[..]),
    ])
    .unwrap();
    b.append_data(&mut h, "d/", &[][..]).unwrap();
    let bytes = b.into_inner().unwrap();
    f.apply(&bytes).unwrap();
    let root = strata_sys::Root::open(&f.dest).unwrap();
    let names = root.list_xattrs(Path::new("d")).unwrap();
    assert!(names.iter().any(|n| n == "user.kept"), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.to_string_lossy().starts_with("trusted.")),
        "{names:?}"
    );
}

#[test]
fn bombs_truncation_and_garbage() {
    let f = fixture();
    let zeros = layer(&[raw(
        b"z",
        tar::EntryType::Regular,
        &vec![0u8; 20 << 20],
        b"",
    )]);
    let bomb = gzip(&zeros);
    let opts = ApplyOptions {
        name: "bomb".into(),
        limits: Limits {
            max_ratio: 10,
            ratio_allowance: 1 << 20,
            ..Limits::default()
        },
        ..ApplyOptions::default()
    };
    let err = apply(&strata_leases::OpCtx::new(), &bomb[..], &f.dest, &opts).unwrap_err();
    assert!(
        err.to_string().contains("decompresses past its bound"),
        "{err}"
    );
    let truncated = &gzip(&layer(&[file("f", &"x".repeat(100_000))]))[..200];
    let err = f.apply(truncated).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    let err = f.apply(b"this is not a tar stream, not even close, and it is long enough to fill a header block............................................................................................................................................................................................................................................................................................................................................................................................................................................................................................").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    let gz = gzip(&layer(&[file("f", "x")]));
    let err = apply(
        &strata_leases::OpCtx::new(),
        &gz[..],
        &f.dest,
        &ApplyOptions {
            name: "m".into(),
            media_type: Some("application/vnd.oci.image.layer.v1.tar+zstd".into()),
            ..ApplyOptions::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("media type"), "{err}");
    f.outside_untouched();
}

#[test]
fn limits_on_depth_and_entries() {
    let f = fixture();
    let deep = "a/".repeat(30);
    let opts = ApplyOptions {
        name: "deep".into(),
        limits: Limits {
            max_depth: 20,
            ..Limits::default()
        },
        ..ApplyOptions::default()
    };
    let err = apply(
        &strata_leases::OpCtx::new(),
        &layer(&[file(&format!("{deep}f"), "x")])[..],
        &f.dest,
        &opts,
    )
    .unwrap_err();
    assert!(err.to_string().contains("deeper than 20"), "{err}");
    let many: Vec<Vec<u8>> = (0..20).map(|i| file(&format!("f{i}"), "x")).collect();
    let opts = ApplyOptions {
        name: "many".into(),
        limits: Limits {
            max_entries: 10,
            ..Limits::default()
        },
        ..ApplyOptions::default()
    };
    let err = apply(
        &strata_leases::OpCtx::new(),
        &layer(&many)[..],
        &f.dest,
        &opts,
    )
    .unwrap_err();
    assert!(err.to_string().contains("more than 10 entries"), "{err}");
}

#[test]
fn non_utf8_names_and_devices() {
    let f = fixture();
    f.apply(&layer(&[
        raw(b"caf\xe9", tar::EntryType::Regular, b"x", b""),
        raw(b"fifo", tar::EntryType::Fifo, b"", b""),
    ]))
    .unwrap();
    use std::os::unix::ffi::OsStrExt;
    assert!(
        f.dest
            .join(std::ffi::OsStr::from_bytes(b"caf\xe9"))
            .exists()
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(
        fs::symlink_metadata(f.dest.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

/// A GNU long-name record (`././@LongLink`) of `len` declared bytes
/// holding `name`.
fn long_name(kind: u8, name: &[u8], declared: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(declared);
    h.set_mode(0o644);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(name);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (k, v) in records {
        let body = [k.as_bytes(), b"=", v, b"\n"].concat();
        let mut len = body.len() + 2;
        while format!("{len} ").len() + body.len() != len {
            len += 1;
        }
        data.extend_from_slice(format!("{len} ").as_bytes());
        data.extend_from_slice(&body);
    }
    raw(b"PaxHeader", tar::EntryType::XHeader, &data, b"")
}

#[test]
fn hostile_headers() {
    let f = fixture();
    // A long-name record declaring far more than a path can be is refused
    // before it is read into memory (the stream is not even that long).
    expect_invalid(
        &f,
        &layer(&[long_name(b'L', b"x", 8 << 30), file("f", "x")]),
        "over the 1048576 byte cap",
    );
    // Two long names for one entry conflict.
    expect_invalid(
        &f,
        &layer(&[
            long_name(b'L', b"first\0", 6),
            long_name(b'L', b"second\0", 7),
            file("f", "x"),
        ]),
        "two long name entries",
    );
    // A long name of acceptable size is used, and a PAX path wins over it
    // and over the ustar name.
    let deep = format!("{}/file", "d".repeat(200));
    f.apply(&layer(&[
        long_name(b'L', format!("{deep}\0").as_bytes(), deep.len() as u64 + 1),
        file("short", "long-named"),
        pax(&[("path", b"pax-named")]),
        file("ustar-name", "pax"),
    ]))
    .unwrap();
    assert_eq!(
        fs::read_to_string(f.dest.join(&deep)).unwrap(),
        "long-named"
    );
    assert_eq!(fs::read_to_string(f.dest.join("pax-named")).unwrap(), "pax");
    assert!(!f.dest.join("ustar-name").exists() && !f.dest.join("short").exists());
    // A PAX path that climbs out is refused like any other.
    expect_invalid(
        &f,
        &layer(&[pax(&[("path", b"../outside/pwned")]), file("x", "x")]),
        "climbs above the root",
    );
    // A PAX sparse file without its size is refused, never extracted under
    // its stand-in name.
    expect_invalid(
        &f,
        &layer(&[
            pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.name", b"s")]),
            file("GNUSparseFile.0/s", "x"),
        ]),
        "sparse",
    );
    assert!(!f.dest.join("GNUSparseFile.0").exists());
    f.outside_untouched();
}

#[test]
fn duplicates_order_loops_and_opaque_roots() {
    let f = fixture();
    // Duplicates: the last one wins, even across types; an entry before its
    // parent gets the parent made, and the parent's later entry applies.
    f.apply(&layer(&[
        file("dup", "one"),
        file("dup", "two"),
        file("late/child", "c"),
        dir("late/"),
        dir("turn/"),
        file("turn", "now a file"),
    ]))
    .unwrap();
    assert_eq!(fs::read_to_string(f.dest.join("dup")).unwrap(), "two");
    assert_eq!(fs::read_to_string(f.dest.join("late/child")).unwrap(), "c");
    assert_eq!(
        fs::read_to_string(f.dest.join("turn")).unwrap(),
        "now a file"
    );
    // A symlink loop: writing through it fails cleanly.
    expect_invalid(
        &f,
        &layer(&[
            raw(b"loop1", tar::EntryType::Symlink, b"", b"loop2"),
            raw(b"loop2", tar::EntryType::Symlink, b"", b"loop1"),
            file("loop1/x", "x"),
        ]),
        "loop1/x",
    );
    // An opaque marker at the root hides everything below, keeps this
    // layer's entries.
    f.apply(&layer(&[file("kept", "k"), file(".wh..wh..opq", "")]))
        .unwrap();
    let mut names: Vec<_> = fs::read_dir(&f.dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["kept"]);
    f.outside_untouched();
}

#[test]
fn old_gnu_sparse_files_expand() {
    // GNU tar's old sparse format, written by GNU tar itself.
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let file = fs::File::create(src.join("sparse")).unwrap();
    file.set_len(4 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(b"middle", 2 << 20).unwrap();
    drop(file);
    let tarball = t.path().join("sparse.tar");
    let st = std::process::Command::new("tar")
        .args(["--format=gnu", "--sparse", "-C"])
        .arg(&src)
        .arg("-cf")
        .arg(&tarball)
        .arg("sparse")
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = fs::read(&tarball).unwrap();
    assert_eq!(bytes[156], b'S', "GNU tar wrote a sparse entry");
    let f = fixture();
    f.apply(&bytes).unwrap();
    let out = fs::read(f.dest.join("sparse")).unwrap();
    assert_eq!(out.len(), 4 << 20);
    assert_eq!(&out[2 << 20..(2 << 20) + 6], b"middle");
    assert!(out[..2 << 20].iter().all(|b| *b == 0));
    use std::os::unix::fs::MetadataExt;
    let blocks = fs::metadata(f.dest.join("sparse")).unwrap().blocks();
    assert!(
        blocks * 512 < 1 << 20,
        "the holes stay holes ({blocks} blocks)"
    );
}

/// A layer of `n` small files, gzip-compressed.
fn many_files(n: usize) -> Vec<u8> {
    let entries: Vec<Vec<u8>> = (0..n)
        .map(|i| file(&format!("d{}/f{i}", i % 50), &"x".repeat(3000)))
        .collect();
    gzip(&layer(&entries))
}

#[test]
fn cancellation_stops_the_whole_pipeline() {
    let f = fixture();
    let bytes = many_files(20_000);
    let ctx = strata_leases::OpCtx::new();
    let canceller = ctx.clone();
    // Cancel as soon as the first megabyte of output is reported.
    let ctx = ctx.with_progress(move |_| canceller.cancel());
    let err = apply(
        &ctx,
        &bytes[..],
        &f.dest,
        &ApplyOptions {
            name: "big".into(),
            ..ApplyOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, ApplyError::Cancelled { .. }), "{err}");
    let made: usize = fs::read_dir(&f.dest)
        .unwrap()
        .map(|d| fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum();
    assert!(made < 20_000, "stopped early ({made} files)");
    f.outside_untouched();
}

#[test]
fn a_bad_entry_deep_in_a_big_layer_is_named() {
    let f = fixture();
    let mut entries: Vec<Vec<u8>> = (0..5_000)
        .map(|i| file(&format!("d/f{i}"), &"y".repeat(4000)))
        .collect();
    entries.insert(100, file("../outside/pwned", "x"));
    let bytes = gzip(&layer(&entries));
    expect_invalid(&f, &bytes, "climbs above the root");
}

/// A device entry with the given major and minor fields, raw bytes (base
/// 256 when they do not fit octal).
fn device(path: &str, major: u64, minor: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(tar::EntryType::Char);
    h.set_size(0);
    h.set_mode(0o600);
    let field = |f: &mut [u8; 8], v: u64| {
        if v < 0o7777777 {
            let s = format!("{v:07o}\0");
            f.copy_from_slice(s.as_bytes());
        } else {
            // Base-256: the top bit set, the value big-endian.
            f.copy_from_slice(&v.to_be_bytes());
            f[0] |= 0x80;
        }
    };
    let gnu = h.as_gnu_mut().unwrap();
    field(&mut gnu.dev_major, major);
    field(&mut gnu.dev_minor, minor);
    h.set_cksum();
    h.as_bytes().to_vec()
}

#[test]
fn device_numbers_the_kernel_cannot_hold_are_refused() {
    if !strata_testkit::require_root(
        "strata-diff::device_numbers_the_kernel_cannot_hold_are_refused",
    ) {
        return;
    }
    let f = fixture();
    f.apply(&layer(&[device("null", 1, 3)])).unwrap();
    use std::os::unix::fs::MetadataExt;
    let rdev = fs::symlink_metadata(f.dest.join("null")).unwrap().rdev();
    assert_eq!((rdev >> 8) & 0xfff, 1);
    assert_eq!(rdev & 0xff, 3);
    for (major, minor) in [(1u64 << 33, 1u64), (4096, 0), (0, 1 << 20)] {
        let err = f.apply(&layer(&[device("big", major, minor)])).unwrap_err();
        // Base-256 numbers the tar reader cannot even read are refused as
        // bad; the others as out of range; never made as another device.
        let text = err.to_string();
        assert!(
            matches!(err, ApplyError::Entry { .. })
                && (text.contains("out of range") || text.contains("bad device")),
            "{major}:{minor}: {err}"
        );
        assert_eq!(Classify::kind(&err), ErrorKind::Invalid);
        assert!(!f.dest.join("big").exists(), "{major}:{minor} made nothing");
    }
}

#[test]
fn trees_as_deep_as_a_path_may_be_apply_walk_and_write_without_recursion() {
    let f = fixture();
    let layer = strata_testkit::layer_tar::deep(1000);
    f.apply(&layer).unwrap();
    let bottom = "d/".repeat(1000) + "file";
    assert_eq!(
        fs::read(f.dest.join(&bottom)).unwrap(),
        b"deep",
        "a 2,005-byte path applies"
    );
    // Walk and write it again on a thread with a small stack: no walker
    // recurses per level.
    let src = f.dest.clone();
    let written = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            strata_diff::write_layer(
                &strata_leases::OpCtx::new(),
                Vec::new(),
                &src,
                &strata_diff::WriteOptions::default(),
                |w| {
                    strata_diff::walk_changes(
                        None,
                        &src,
                        strata_diff::Comparison::Compat,
                        &mut |c| w.change(&c),
                    )
                },
            )
            .map(|(_, tar)| tar)
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let again = tempfile::tempdir().unwrap();
    apply(
        &strata_leases::OpCtx::new(),
        &written[..],
        again.path(),
        &ApplyOptions::default(),
    )
    .unwrap();
    assert_eq!(fs::read(again.path().join(&bottom)).unwrap(), b"deep");
    // Errors quote such paths shortened.
    let err = apply(
        &strata_leases::OpCtx::new(),
        &layer[..],
        tempfile::tempdir().unwrap().path(),
        &ApplyOptions {
            limits: Limits {
                max_depth: 500,
                ..Limits::default()
            },
            ..ApplyOptions::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("deeper than 500") && err.len() < 400, "{err}");
}

#[test]
fn parents_below_a_symlink_the_layer_made_are_created_inside_the_root() {
    let f = fixture();
    use tar::EntryType::{Directory as D, Regular as F, Symlink as S};
    f.apply(&layer(&[
        raw(b"d/", D, b"", b""),
        // `d` becomes a symlink climbing out; what goes below it lands in
        // the root's own `victim`, made for it.
        raw(b"d", S, b"", b"../victim"),
        raw(b"d/pwned", F, b"x", b""),
        raw(b"abs", S, b"", b"/elsewhere/deeper"),
        raw(b"abs/y", F, b"y", b""),
    ]))
    .unwrap();
    assert_eq!(fs::read(f.dest.join("victim/pwned")).unwrap(), b"x");
    assert_eq!(fs::read(f.dest.join("elsewhere/deeper/y")).unwrap(), b"y");
    assert!(
        fs::symlink_metadata(f.dest.join("d"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    f.outside_untouched();
}

/// GNU tar's own layer of `dir/holes`, written with `--sparse` and `format`.
fn sparse_layer(dir: &Path, format: &[&str]) -> Vec<u8> {
    let made = std::process::Command::new("tar")
        .arg("--sparse")
        .args(format)
        .arg("-C")
        .arg(dir)
        .args(["-cf", "-", "holes"])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "GNU tar makes a sparse layer with {format:?}"
    );
    made.stdout
}

#[test]
fn pax_sparse_files_of_every_gnu_format_apply_with_their_holes() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let src = tempfile::tempdir().unwrap();
    let holes = fs::File::create(src.path().join("holes")).unwrap();
    holes.set_len(1 << 30).unwrap();
    holes.write_all_at(b"head", 0).unwrap();
    holes.write_all_at(&[7u8; 8192], 300 << 20).unwrap();
    holes.write_all_at(b"tail", (1 << 30) - 4).unwrap();
    drop(holes);
    for version in ["0.0", "0.1", "1.0"] {
        let bytes = sparse_layer(
            src.path(),
            &["--format=posix", &format!("--sparse-version={version}")],
        );
        assert!(
            bytes.len() < 64 << 10,
            "{version}: the layer holds data, not holes"
        );
        let f = fixture();
        f.apply(&bytes).unwrap_or_else(|e| panic!("{version}: {e}"));
        let got = f.dest.join("holes");
        let md = fs::metadata(&got).unwrap();
        assert_eq!(md.len(), 1 << 30, "{version}: apparent size");
        assert!(
            md.blocks() * 512 < 4 << 20,
            "{version}: holes stay holes ({} blocks)",
            md.blocks()
        );
        let file = fs::File::open(&got).unwrap();
        let mut buf = [0u8; 4];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"head");
        file.read_exact_at(&mut buf, (1 << 30) - 4).unwrap();
        assert_eq!(&buf, b"tail");
        let mut mid = vec![0u8; 8192];
        file.read_exact_at(&mut mid, 300 << 20).unwrap();
        assert!(mid.iter().all(|b| *b == 7), "{version}: the middle chunk");
        assert!(
            !f.dest.join("GNUSparseFile.0").exists(),
            "{version}: no stand-in name"
        );
        let names: Vec<_> = fs::read_dir(&f.dest)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{version}: {names:?}");
        f.outside_untouched();
    }
    // Larger than allowed: refused by name, not made.
    let f = fixture();
    let bytes = sparse_layer(src.path(), &["--format=posix", "--sparse-version=1.0"]);
    let err = apply(
        &strata_leases::OpCtx::new(),
        &bytes[..],
        &f.dest,
        &ApplyOptions {
            limits: Limits {
                max_apparent_size: 1 << 20,
                ..Limits::default()
            },
            ..ApplyOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("more than the 1048576 allowed"),
        "{err}"
    );
}

#[test]
fn old_gnu_sparse_files_cost_their_data_not_their_holes() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    // GNU tar's own old sparse format, with more chunks than the header
    // holds (extension blocks).
    let src = tempfile::tempdir().unwrap();
    let holes = fs::File::create(src.path().join("holes")).unwrap();
    holes.set_len(64 << 30).unwrap();
    for i in 0..10u64 {
        holes
            .write_all_at(&[i as u8 + 1; 4096], i * (6 << 30))
            .unwrap();
    }
    drop(holes);
    let bytes = sparse_layer(src.path(), &["--format=gnu"]);
    assert!(bytes.len() < 128 << 10, "the layer holds the data only");
    let f = fixture();
    let start = std::time::Instant::now();
    f.apply(&bytes).unwrap();
    let took = start.elapsed();
    let got = f.dest.join("holes");
    let md = fs::metadata(&got).unwrap();
    assert_eq!(md.len(), 64 << 30, "apparent size");
    assert!(md.blocks() * 512 < 1 << 20, "holes stay holes");
    let file = fs::File::open(&got).unwrap();
    for i in 0..10u64 {
        let mut b = [0u8; 4096];
        file.read_exact_at(&mut b, i * (6 << 30)).unwrap();
        assert!(b.iter().all(|x| *x == i as u8 + 1), "chunk {i}");
    }
    // Not a timing assertion of speed, a bound against producing 64 GiB of
    // zeros (which took about a minute).
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    f.outside_untouched();
}
