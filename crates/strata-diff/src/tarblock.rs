//! Tar entries read block by block, keeping their raw bytes: the eStargz
//! writer re-frames a tar stream without re-encoding a header, and its
//! verifier walks a layer's stream beside the extraction. Names, link
//! targets, sizes, owners and xattrs are resolved through PAX records and
//! GNU long names the way extraction resolves them.

use std::collections::BTreeMap;
use std::io::{self, Read};

use tar::{EntryType, Header};

/// Tar's block size.
pub(crate) const BLOCK: u64 = 512;

/// Zeros to pad `size` bytes of data to a block.
pub(crate) fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// One entry's headers (with any PAX or GNU long-name records before the
/// main header) and what they say; its data follows in the stream.
#[derive(Clone, Debug, Default)]
pub(crate) struct RawEntry {
    /// Every byte of the headers and records, as read.
    pub raw: Vec<u8>,
    /// The entry's path, as the archive spells it.
    pub name: Vec<u8>,
    /// A symlink's or hard link's target.
    pub link: Vec<u8>,
    pub kind: u8,
    /// Bytes of data after the headers.
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    /// Modification time: whole seconds, and the nanoseconds a PAX
    /// record may add.
    pub mtime: u64,
    pub mtime_nanos: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

fn bad(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

/// A PAX time (`SECONDS[.FRACTION]`, not before the epoch) as seconds and
/// nanoseconds; digits past the ninth are dropped.
fn pax_time(v: &[u8]) -> Option<(u64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(secs) || !(frac.is_empty() || digits(frac)) {
        return None;
    }
    let nanos = format!("{:0<9}", &frac[..frac.len().min(9)]);
    Some((secs.parse().ok()?, nanos.parse().ok()?))
}

fn read_block(r: &mut impl Read, buf: &mut [u8; 512]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(bad("the tar stream ends inside a header")),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn number(field: io::Result<u64>, what: &str) -> io::Result<u64> {
    field.map_err(|e| bad(format!("bad {what} in a tar header: {e}")))
}

/// Whether the header field at `range` is empty (all NULs or spaces),
/// which tar readers take as 0.
fn blank(h: &Header, range: std::ops::Range<usize>) -> bool {
    h.as_bytes()[range].iter().all(|&b| b == 0 || b == b' ')
}

/// A numeric header field, 0 when blank.
fn field(
    h: &Header,
    range: std::ops::Range<usize>,
    value: io::Result<u64>,
    what: &str,
) -> io::Result<u64> {
    if blank(h, range) {
        Ok(0)
    } else {
        number(value, what)
    }
}

/// Strips a NUL-terminated field.
fn until_nul(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .position(|&b| b == 0)
        .map_or(bytes, |n| &bytes[..n])
        .to_vec()
}

/// Reads the next entry's headers from `r`; `None` at the end-of-archive
/// block (or the end of the stream). Records longer than `max_record`
/// are refused.
pub(crate) fn next_entry(r: &mut impl Read, max_record: u64) -> io::Result<Option<RawEntry>> {
    let mut e = RawEntry::default();
    let mut pax: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let (mut long_name, mut long_link) = (None, None);
    let mut block = [0u8; 512];
    loop {
        if !read_block(r, &mut block)? {
            return if e.raw.is_empty() {
                Ok(None)
            } else {
                Err(bad("the tar stream ends after a record, before its entry"))
            };
        }
        if block.iter().all(|&b| b == 0) {
            return if e.raw.is_empty() {
                Ok(None)
            } else {
                Err(bad("a record is followed by the end of the archive"))
            };
        }
        e.raw.extend_from_slice(&block);
        let h = Header::from_byte_slice(&block).clone();
        let size = number(h.entry_size(), "size")?;
        let kind = h.entry_type();
        // A global header is an entry of its own here, as the tar crate
        // (and so extraction) sees it: the records before it are its, and
        // eStargz cannot hold it.
        if matches!(kind, EntryType::XHeader | EntryType::GNULongName)
            || kind == EntryType::GNULongLink
        {
            if size > max_record {
                return Err(bad(format!(
                    "a tar record of {size} bytes (more than {max_record})"
                )));
            }
            let mut data = vec![0u8; usize::try_from(size + padding(size)).unwrap_or(0)];
            r.read_exact(&mut data)?;
            e.raw.extend_from_slice(&data);
            data.truncate(usize::try_from(size).unwrap_or(0));
            // Whatever the tar crate refuses or reads another way is refused
            // here, so that this reading and extraction's never differ: a
            // second record of a kind for one entry, a key twice, sparse
            // files (whose stand-in names the crate resolves).
            let twice = |what: &str| bad(format!("two {what} records for one tar entry"));
            match kind {
                EntryType::XHeader => {
                    if !pax.is_empty() {
                        return Err(twice("PAX"));
                    }
                    for ext in tar::PaxExtensions::new(&data) {
                        let ext = ext.map_err(|err| bad(format!("bad PAX record: {err}")))?;
                        let key = ext
                            .key()
                            .map_err(|err| bad(format!("bad PAX key: {err}")))?;
                        if key.starts_with("GNU.sparse.") {
                            return Err(bad("a sparse tar entry (GNU.sparse PAX records)"));
                        }
                        if pax
                            .insert(key.to_owned(), ext.value_bytes().to_vec())
                            .is_some()
                        {
                            return Err(bad(format!("the PAX key {key:?} twice for one entry")));
                        }
                    }
                }
                EntryType::GNULongName if long_name.is_some() => return Err(twice("long name")),
                EntryType::GNULongName => long_name = Some(until_nul(&data)),
                _ if long_link.is_some() => return Err(twice("long link")),
                _ => long_link = Some(until_nul(&data)),
            }
            continue;
        }
        e.kind = h.as_bytes()[156];
        e.name = long_name
            .or_else(|| pax.get("path").cloned())
            .unwrap_or_else(|| h.path_bytes().into_owned());
        e.link = long_link
            .or_else(|| pax.get("linkpath").cloned())
            .or_else(|| h.link_name_bytes().map(|l| l.into_owned()))
            .unwrap_or_default();
        let pax_number = |key: &str| -> io::Result<Option<u64>> {
            pax.get(key)
                .map(|v| {
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.split('.').next()?.parse().ok())
                        .ok_or_else(|| bad(format!("bad PAX {key}")))
                })
                .transpose()
        };
        e.size = pax_number("size")?.unwrap_or(size);
        e.mode = u32::try_from(field(&h, 100..108, h.mode().map(u64::from), "mode")?).unwrap_or(0);
        e.uid = pax_number("uid")?.map_or_else(|| field(&h, 108..116, h.uid(), "uid"), Ok)?;
        e.gid = pax_number("gid")?.map_or_else(|| field(&h, 116..124, h.gid(), "gid"), Ok)?;
        // A PAX mtime may carry a fraction (kept to the nanosecond).
        (e.mtime, e.mtime_nanos) = match pax.get("mtime") {
            Some(v) => pax_time(v).ok_or_else(|| bad("bad PAX mtime"))?,
            None => (field(&h, 136..148, h.mtime(), "mtime")?, 0),
        };
        e.uname = pax
            .get("uname")
            .cloned()
            .or_else(|| h.username_bytes().map(<[u8]>::to_vec))
            .unwrap_or_default();
        e.gname = pax
            .get("gname")
            .cloned()
            .or_else(|| h.groupname_bytes().map(<[u8]>::to_vec))
            .unwrap_or_default();
        if matches!(kind, EntryType::Char | EntryType::Block) {
            e.dev_major = number(
                h.device_major().map(|d| u64::from(d.unwrap_or(0))),
                "device",
            )?
            .try_into()
            .unwrap_or(0);
            e.dev_minor = number(
                h.device_minor().map(|d| u64::from(d.unwrap_or(0))),
                "device",
            )?
            .try_into()
            .unwrap_or(0);
        }
        e.xattrs = pax
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("SCHILY.xattr.")?.to_owned(), v.clone())))
            .collect();
        return Ok(Some(e));
    }
}

/// A path without `./` or `/` in front or `/` behind, as eStargz
/// readers compare names.
pub(crate) fn clean_name(name: &[u8]) -> &[u8] {
    let mut n = name;
    loop {
        if let Some(rest) = n.strip_prefix(b"./") {
            n = rest;
        } else if let Some(rest) = n.strip_prefix(b"/") {
            n = rest;
        } else {
            break;
        }
    }
    while let Some(rest) = n.strip_suffix(b"/") {
        n = rest;
    }
    if n == b"." { b"" } else { n }
}

/// Counts the bytes read through it: a position in the stream.
pub(crate) struct Position<R> {
    pub inner: R,
    pub pos: u64,
}

impl<R: Read> Read for Position<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_keep_their_nanoseconds() {
        assert_eq!(pax_time(b"1796465748"), Some((1_796_465_748, 0)));
        assert_eq!(
            pax_time(b"1796465748.5"),
            Some((1_796_465_748, 500_000_000))
        );
        assert_eq!(
            pax_time(b"1796465748.7654914651234"),
            Some((1_796_465_748, 765_491_465))
        );
        for bad in [&b""[..], b"-1", b".5", b"1.2.3", b"1e9", b" 1"] {
            assert_eq!(pax_time(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn names_are_cleaned_as_estargz_readers_clean_them() {
        assert_eq!(clean_name(b"./etc/"), b"etc");
        assert_eq!(clean_name(b"/usr/bin/x"), b"usr/bin/x");
        assert_eq!(clean_name(b"./"), b"");
        assert_eq!(clean_name(b"."), b"");
    }

    #[test]
    fn pax_and_gnu_records_resolve_into_the_entry_and_stay_in_its_bytes() {
        let mut b = tar::Builder::new(Vec::new());
        let long = "d/".to_owned() + &"n".repeat(150);
        let mut h = Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o4755);
        h.set_entry_type(EntryType::Regular);
        b.append_pax_extensions([("SCHILY.xattr.user.k", b"v".as_slice()), ("uid", b"70000")])
            .unwrap();
        b.append_data(&mut h, &long, b"abc".as_slice()).unwrap();
        let bytes = b.into_inner().unwrap();
        let mut r = Position {
            inner: bytes.as_slice(),
            pos: 0,
        };
        let e = next_entry(&mut r, 1 << 20).unwrap().unwrap();
        assert_eq!(e.name, long.as_bytes());
        assert_eq!((e.size, e.mode, e.uid), (3, 0o4755, 70000));
        assert_eq!(e.xattrs["user.k"], b"v");
        assert_eq!(e.raw.as_slice(), &bytes[..e.raw.len()]);
        assert_eq!(r.pos, e.raw.len() as u64);
        let mut data = [0u8; 512];
        r.read_exact(&mut data).unwrap();
        assert_eq!(&data[..3], b"abc");
        assert!(next_entry(&mut r, 1 << 20).unwrap().is_none());
        // A record larger than allowed is refused.
        let mut r = bytes.as_slice();
        assert!(next_entry(&mut r, 10).is_err());
    }

    /// A PAX record block with `records` (key, value), as a tar writer
    /// frames it.
    fn pax(records: &[(&str, &str)], kind: EntryType) -> Vec<u8> {
        let mut data = Vec::new();
        for (k, v) in records {
            // The length counts its own digits.
            let body = format!(" {k}={v}\n");
            let mut len = body.len();
            while body.len() + len.to_string().len() != len {
                len = body.len() + len.to_string().len();
            }
            data.extend(format!("{len}{body}").bytes());
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_path("PaxHeader").unwrap();
        h.set_mode(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend(&data);
        out.resize(out.len() + padding(data.len() as u64) as usize, 0);
        out
    }

    fn file(name: &str) -> Vec<u8> {
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_size(0);
        h.set_path(name).unwrap();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    /// Streams the tar crate reads one way and a hand-rolled reader
    /// another are refused, so the verifier and extraction never disagree.
    #[test]
    fn ambiguous_records_are_refused() {
        let refused = |stream: Vec<u8>, says: &str| {
            let err = next_entry(&mut stream.as_slice(), 1 << 20).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        };
        let mut dup = pax(&[("path", "good"), ("path", "evil")], EntryType::XHeader);
        dup.extend(file("a"));
        refused(dup, "twice");
        let mut two = pax(&[("path", "good")], EntryType::XHeader);
        two.extend(pax(&[("path", "evil")], EntryType::XHeader));
        two.extend(file("a"));
        refused(two, "two PAX records");
        let mut sparse = pax(&[("GNU.sparse.name", "usr/bin/sudo")], EntryType::XHeader);
        sparse.extend(file("GNUSparseFile.0/readme"));
        refused(sparse, "sparse");
        // A local record before a global header belongs to the global
        // header, which is an entry of its own.
        let mut global = pax(&[("path", "evil")], EntryType::XHeader);
        global.extend(pax(&[("comment", "x")], EntryType::XGlobalHeader));
        global.extend(file("a"));
        let mut r = global.as_slice();
        let g = next_entry(&mut r, 1 << 20).unwrap().unwrap();
        assert_eq!((g.kind, g.name.as_slice()), (b'g', b"evil".as_slice()));
        let mut data = vec![0u8; usize::try_from(g.size + padding(g.size)).unwrap()];
        r.read_exact(&mut data).unwrap();
        let a = next_entry(&mut r, 1 << 20).unwrap().unwrap();
        assert_eq!(a.name, b"a");
    }
}
