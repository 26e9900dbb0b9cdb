//! Hand-made tar layers for tests: entries built byte by byte, so hostile
//! names and link targets survive (the tar crate's builder refuses them),
//! and layers of a shape the tests share.

/// One tar entry (GNU header; directories 0755, others 0644, a fixed
/// mtime) followed by its data, padded to whole blocks.
pub fn entry(
    path: impl AsRef<[u8]>,
    kind: tar::EntryType,
    data: &[u8],
    link: impl AsRef<[u8]>,
) -> Vec<u8> {
    let (path, link) = (path.as_ref(), link.as_ref());
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..path.len()].copy_from_slice(path);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// The entries followed by the end-of-archive marker.
pub fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = entries.concat();
    out.extend_from_slice(&[0; 1024]);
    out
}

/// A layer of `levels` nested directories `d/d/...` with a file `file`
/// holding "deep" at the bottom, through GNU long names (1,000 levels make
/// a 2,005-byte path, within PATH_MAX).
pub fn deep(levels: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut path = String::new();
    for _ in 0..levels {
        path.push_str("d/");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, &path, std::io::empty()).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(4);
    b.append_data(&mut h, format!("{path}file"), &b"deep"[..])
        .unwrap();
    b.into_inner().unwrap()
}
