//! Sparse files: old GNU sparse entries (their maps taken out of the
//! stream by the tar guard) and PAX sparse files, as GNU tar writes them with `--sparse --format=posix`:
//! format 0.0 (`GNU.sparse.offset`/`numbytes` records in pairs), 0.1 (one
//! `GNU.sparse.map` of comma-separated pairs) and 1.0 (the map at the start
//! of the data: a count, then offset and size pairs, one number a line,
//! padded to 512 bytes). The entry's data is the data chunks one after the
//! other; they are written at their offsets and the holes are left as
//! holes, so the work follows the data, never the apparent size. The real
//! name replaces the stand-in `GNUSparseFile.N/...` name.

use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// A PAX sparse file's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sparse {
    /// The real name (`GNU.sparse.name`), when given.
    pub(crate) name: Option<Vec<u8>>,
    /// The apparent size.
    real_size: u64,
    /// (offset, length) of each data chunk; `None` for format 1.0, whose
    /// map opens the data.
    chunks: Option<Vec<(u64, u64)>>,
}

fn number(what: &str, v: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("bad PAX sparse {what} {:?}", String::from_utf8_lossy(v)))
}

/// Most chunks in one map (each costs 16 bytes of memory).
const MAX_CHUNKS: usize = 1 << 20;

impl Sparse {
    /// The sparse description in an entry's PAX records, if it has one.
    /// `max_size` bounds the apparent size.
    pub(crate) fn parse(
        pax: &[(String, Vec<u8>)],
        max_size: u64,
    ) -> Result<Option<Sparse>, String> {
        if !pax.iter().any(|(k, _)| k.starts_with("GNU.sparse.")) {
            return Ok(None);
        }
        let get = |k: &str| {
            pax.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_slice())
        };
        let major = get("GNU.sparse.major")
            .map(|v| number("major", v))
            .transpose()?;
        let minor = get("GNU.sparse.minor")
            .map(|v| number("minor", v))
            .transpose()?;
        let real_size = match get("GNU.sparse.realsize").or_else(|| get("GNU.sparse.size")) {
            Some(v) => number("size", v)?,
            None => return Err("PAX sparse file without its size".into()),
        };
        if real_size > max_size {
            return Err(format!(
                "sparse file of {real_size} bytes, more than the {max_size} allowed"
            ));
        }
        let name = get("GNU.sparse.name").map(<[u8]>::to_vec);
        let chunks = match (major, minor) {
            (Some(1), Some(0)) => None,
            (Some(m), _) if m != 0 => return Err(format!("PAX sparse format {m} is unknown")),
            _ => Some(match get("GNU.sparse.map") {
                // 0.1: one map.
                Some(map) => {
                    let text = std::str::from_utf8(map).map_err(|_| "bad PAX sparse map")?;
                    let nums: Vec<u64> = text
                        .split(',')
                        .filter(|t| !t.is_empty())
                        .map(|t| number("map", t.as_bytes()))
                        .collect::<Result<_, _>>()?;
                    if !nums.len().is_multiple_of(2) {
                        return Err("PAX sparse map with an odd count".into());
                    }
                    nums.chunks(2).map(|p| (p[0], p[1])).collect()
                }
                // 0.0: offset and numbytes records in pairs, in order.
                None => {
                    let offsets = pax.iter().filter(|(k, _)| k == "GNU.sparse.offset");
                    let sizes = pax.iter().filter(|(k, _)| k == "GNU.sparse.numbytes");
                    offsets
                        .zip(sizes)
                        .map(|((_, o), (_, n))| Ok((number("offset", o)?, number("numbytes", n)?)))
                        .collect::<Result<Vec<_>, String>>()?
                }
            }),
        };
        let pax = Sparse {
            name,
            real_size,
            chunks,
        };
        if let Some(chunks) = &pax.chunks {
            pax.check(chunks)?;
        }
        Ok(Some(pax))
    }

    /// An old GNU sparse entry's map (the tar guard takes it out of the
    /// stream).
    pub(crate) fn gnu(
        chunks: Vec<(u64, u64)>,
        real_size: u64,
        max_size: u64,
    ) -> Result<Sparse, String> {
        if real_size > max_size {
            return Err(format!(
                "sparse file of {real_size} bytes, more than the {max_size} allowed"
            ));
        }
        let sparse = Sparse {
            name: None,
            real_size,
            chunks: Some(chunks),
        };
        sparse.check(sparse.chunks.as_deref().unwrap_or_default())?;
        Ok(sparse)
    }

    /// Chunks in order, not overlapping, inside the apparent size.
    fn check(&self, chunks: &[(u64, u64)]) -> Result<(), String> {
        if chunks.len() > MAX_CHUNKS {
            return Err(format!("a sparse map of more than {MAX_CHUNKS} chunks"));
        }
        let mut end = 0u64;
        for &(offset, len) in chunks {
            let stop = offset
                .checked_add(len)
                .filter(|&s| offset >= end && s <= self.real_size)
                .ok_or_else(|| {
                    format!(
                        "sparse chunk {offset}+{len} overlaps another or ends past the size {}",
                        self.real_size
                    )
                })?;
            end = stop;
        }
        Ok(())
    }

    /// Writes the entry's data chunks into `file` at their offsets and
    /// sets the apparent size.
    pub(crate) fn write(
        &self,
        data: &mut impl Read,
        file: &mut std::fs::File,
        buf: &mut [u8],
    ) -> io::Result<()> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let chunks = match &self.chunks {
            Some(c) => c.clone(),
            None => {
                let chunks = read_map(data)?;
                self.check(&chunks).map_err(invalid)?;
                chunks
            }
        };
        for (offset, len) in chunks {
            let mut done = 0u64;
            while done < len {
                let want = usize::try_from((len - done).min(buf.len() as u64)).unwrap_or(buf.len());
                data.read_exact(&mut buf[..want])?;
                file.write_all_at(&buf[..want], offset + done)?;
                done += want as u64;
            }
        }
        file.set_len(self.real_size)
    }
}

/// Format 1.0's map: decimal numbers a line (the count, then offset and
/// size pairs), padded with NULs to a 512-byte boundary.
fn read_map(data: &mut impl Read) -> io::Result<Vec<(u64, u64)>> {
    let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let mut consumed = 0usize;
    let mut line = Vec::new();
    let mut next = |data: &mut dyn Read| -> io::Result<u64> {
        line.clear();
        let mut byte = [0u8; 1];
        loop {
            data.read_exact(&mut byte)?;
            consumed += 1;
            if byte[0] == b'\n' {
                break;
            }
            if line.len() > 20 {
                return Err(invalid("a PAX sparse map number is too long"));
            }
            line.push(byte[0]);
        }
        std::str::from_utf8(&line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("a PAX sparse map holds something not a number"))
    };
    let count = usize::try_from(next(data)?).unwrap_or(usize::MAX);
    if count > MAX_CHUNKS {
        return Err(invalid("a PAX sparse map of too many chunks"));
    }
    let mut chunks = Vec::with_capacity(count);
    for _ in 0..count {
        let offset = next(data)?;
        let len = next(data)?;
        chunks.push((offset, len));
    }
    let pad = (512 - consumed % 512) % 512;
    io::copy(&mut data.take(pad as u64), &mut io::sink())?;
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(r: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        r.iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn the_three_formats_parse() {
        let v00 = recs(&[
            ("GNU.sparse.size", "100"),
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.offset", "0"),
            ("GNU.sparse.numbytes", "10"),
            ("GNU.sparse.offset", "50"),
            ("GNU.sparse.numbytes", "5"),
        ]);
        let p = Sparse::parse(&v00, 1 << 20).unwrap().unwrap();
        assert_eq!(p.chunks, Some(vec![(0, 10), (50, 5)]));
        let v01 = recs(&[
            ("GNU.sparse.size", "100"),
            ("GNU.sparse.map", "0,10,50,5"),
            ("GNU.sparse.name", "real"),
        ]);
        let p = Sparse::parse(&v01, 1 << 20).unwrap().unwrap();
        assert_eq!(
            (p.chunks.clone(), p.name.clone()),
            (Some(vec![(0, 10), (50, 5)]), Some(b"real".to_vec()))
        );
        let v10 = recs(&[
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.realsize", "100"),
        ]);
        assert_eq!(Sparse::parse(&v10, 1 << 20).unwrap().unwrap().chunks, None);
        assert!(
            Sparse::parse(&recs(&[("path", "x")]), 10)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_maps_are_refused() {
        let over = recs(&[("GNU.sparse.size", "10"), ("GNU.sparse.map", "0,20")]);
        assert!(Sparse::parse(&over, 1 << 20).is_err());
        let overlap = recs(&[("GNU.sparse.size", "100"), ("GNU.sparse.map", "10,10,15,5")]);
        assert!(Sparse::parse(&overlap, 1 << 20).is_err());
        let huge = recs(&[
            ("GNU.sparse.size", "99999999999"),
            ("GNU.sparse.map", "0,1"),
        ]);
        assert!(
            Sparse::parse(&huge, 1 << 20)
                .unwrap_err()
                .contains("more than")
        );
        let odd = recs(&[("GNU.sparse.size", "10"), ("GNU.sparse.map", "0,1,2")]);
        assert!(Sparse::parse(&odd, 1 << 20).is_err());
        let mut data = &b"2\n0\n5\n"[..];
        assert!(read_map(&mut data).is_err(), "a map cut short");
    }
}
