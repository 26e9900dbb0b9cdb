//! A watch on the tar stream's layout, ahead of the tar parser.
//!
//! The tar crate reads GNU long names, long link names and PAX records
//! into memory whole before handing out the entry they describe; a hostile
//! layer could declare a record of many gigabytes. [`HeaderGuard`] follows
//! the block layout itself (headers, GNU sparse extension blocks, data and
//! padding, a PAX `size` overriding the next entry's) and fails the stream
//! before the parser sees a metadata record over its cap or an entry whose
//! size is absurd. Blocks whose checksum is wrong are left for the parser
//! to refuse; after the end-of-archive marker the rest passes unchanged.

use std::io::{self, Read};

const BLOCK: usize = 512;

/// Where in the layout the next byte is.
enum State {
    /// Filling a header block.
    Header,
    /// Inside a GNU sparse header's extension blocks, then `data` bytes.
    Extension { data: u64 },
    /// Passing `left` bytes of data and padding; PAX data is kept when
    /// `keep`.
    Data { left: u64, keep: bool },
    /// After the end-of-archive marker.
    Done,
}

/// Wraps the uncompressed tar stream.
pub(crate) struct HeaderGuard<R> {
    inner: R,
    state: State,
    block: Vec<u8>,
    pax: Vec<u8>,
    next_size: Option<u64>,
    zero_blocks: u32,
    max_record: u64,
    max_size: u64,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// An octal or base-256 numeric field.
fn numeric(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut v: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ' || *b == 0)
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

fn checksum_ok(h: &[u8]) -> bool {
    let Some(want) = numeric(&h[148..156]) else {
        return false;
    };
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    sum == want
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// The `size` record of PAX data, if any (padding and anything malformed
/// after the records end the scan).
fn pax_size(data: &[u8]) -> Option<u64> {
    let mut rest = data;
    let mut found = None;
    while let Some(space) = rest.iter().position(|b| *b == b' ') {
        let Some(len) = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|&l| l > space && l <= rest.len())
        else {
            break;
        };
        let record = &rest[space + 1..len];
        if let Some(v) = record.strip_prefix(b"size=") {
            let v = v.strip_suffix(b"\n").unwrap_or(v);
            found = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
        }
        rest = &rest[len..];
    }
    found
}

impl<R: Read> HeaderGuard<R> {
    /// Metadata records (long names, PAX) may hold at most `max_record`
    /// bytes, an entry at most `max_size`.
    pub(crate) fn new(inner: R, max_record: u64, max_size: u64) -> Self {
        HeaderGuard {
            inner,
            state: State::Header,
            block: Vec::with_capacity(BLOCK),
            pax: Vec::new(),
            next_size: None,
            zero_blocks: 0,
            max_record,
            max_size,
        }
    }

    /// A complete header block: where its data ends.
    fn header(&mut self) -> io::Result<()> {
        let h = std::mem::take(&mut self.block);
        if h.iter().all(|b| *b == 0) {
            self.zero_blocks += 1;
            self.state = if self.zero_blocks >= 2 {
                State::Done
            } else {
                State::Header
            };
            return Ok(());
        }
        self.zero_blocks = 0;
        if !checksum_ok(&h) {
            // The parser reports it.
            self.state = State::Done;
            return Ok(());
        }
        let kind = h[156];
        let declared = numeric(&h[124..136])
            .ok_or_else(|| invalid("a tar header declares a negative or unreadable size".into()))?;
        let metadata = matches!(kind, b'L' | b'K' | b'x' | b'g');
        // A PAX size applies to whatever header comes next (as the parser
        // does it), and every entry type is followed by its size in data.
        let size = self.next_size.take().unwrap_or(declared);
        if metadata && size > self.max_record {
            return Err(invalid(format!(
                "a tar metadata record (type {:?}) of {size} bytes is over the {} byte cap",
                char::from(kind),
                self.max_record
            )));
        }
        if size > self.max_size {
            return Err(invalid(format!(
                "a tar entry declares {size} bytes, over the {} byte cap",
                self.max_size
            )));
        }
        self.state = if kind == b'S' && h[482] != 0 {
            State::Extension { data: size }
        } else {
            State::Data {
                left: padded(size),
                keep: kind == b'x',
            }
        };
        self.pax.clear();
        if matches!(self.state, State::Data { left: 0, .. }) {
            self.state = State::Header;
        }
        Ok(())
    }

    /// Follows the layout over `buf`, which was just read.
    fn observe(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Header | State::Extension { .. } => {
                    let take = (BLOCK - self.block.len()).min(buf.len());
                    self.block.extend_from_slice(&buf[..take]);
                    buf = &buf[take..];
                    if self.block.len() < BLOCK {
                        continue;
                    }
                    if let State::Extension { data } = self.state {
                        let more = self.block[504] != 0;
                        self.block.clear();
                        if !more {
                            self.state = State::Data {
                                left: padded(data),
                                keep: false,
                            };
                        }
                    } else {
                        self.header()?;
                    }
                }
                State::Data { left, keep } => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    if *keep {
                        self.pax.extend_from_slice(&buf[..take]);
                    }
                    *left -= take as u64;
                    buf = &buf[take..];
                    if *left == 0 {
                        if *keep {
                            self.next_size = pax_size(&self.pax);
                        }
                        self.state = State::Header;
                    }
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: u8, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_size(size);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn run(stream: &[u8]) -> io::Result<u64> {
        let mut g = HeaderGuard::new(stream, 1024, 1 << 30);
        io::copy(&mut g, &mut io::sink())
    }

    #[test]
    fn caps_metadata_records_and_follows_pax_sizes() {
        // A long-name record over the cap fails before its data is read.
        let mut s = header("././@LongLink", b'L', 1 << 20);
        s.extend(vec![b'a'; 512]);
        assert!(
            run(&s)
                .unwrap_err()
                .to_string()
                .contains("over the 1024 byte cap")
        );
        // A PAX size makes the next entry longer than its ustar field says:
        // the guard follows it and sees the next header in place.
        let record = b"19 size=1073741825\n";
        let mut s = header("pax", b'x', record.len() as u64);
        s.extend_from_slice(record);
        s.resize(s.len().div_ceil(512) * 512, 0);
        s.extend(header("big", b'0', 0));
        assert!(
            run(&s)
                .unwrap_err()
                .to_string()
                .contains("over the 1073741824 byte cap")
        );
        // Ordinary streams pass untouched.
        let mut s = header("f", b'0', 3);
        s.extend_from_slice(b"abc");
        s.resize(1024, 0);
        s.extend(vec![0; 1024]);
        s.extend_from_slice(b"trailing garbage");
        assert_eq!(run(&s).unwrap(), s.len() as u64);
        assert_eq!(numeric(&[0x80, 0, 0, 1, 0]), Some(256));
        assert_eq!(numeric(&[0xff, 0xff]), None);
    }
}
