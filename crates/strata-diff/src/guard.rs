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
//!
//! Old GNU sparse entries (type `S`) are handed on as plain files of their
//! stored data, their extension blocks dropped, and their maps published
//! by the position of their header in the stream the parser reads: the
//! applier writes the chunks at their offsets, and the parser never
//! produces the zeros of the holes (a 64 GiB hole would cost a minute).

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

const BLOCK: usize = 512;

/// A GNU sparse entry's map: (offset, length) chunks and the apparent
/// size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GnuSparse {
    pub(crate) chunks: Vec<(u64, u64)>,
    pub(crate) real_size: u64,
}

/// Sparse maps by the position of their entry's header in the guard's
/// output.
pub(crate) type SparseMaps = Arc<Mutex<HashMap<u64, GnuSparse>>>;

/// Where in the layout the next byte is.
enum State {
    /// Filling a header block.
    Header,
    /// Inside a GNU sparse header's extension blocks, then `data` bytes;
    /// the map goes out under `at` when complete.
    Extension { data: u64, at: u64, map: GnuSparse },
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
    /// A processed header block waiting to be read out.
    out: Vec<u8>,
    out_pos: usize,
    /// Bytes handed to the parser so far.
    emitted: u64,
    maps: SparseMaps,
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
    pub(crate) fn new(inner: R, max_record: u64, max_size: u64, maps: SparseMaps) -> Self {
        HeaderGuard {
            inner,
            state: State::Header,
            block: Vec::with_capacity(BLOCK),
            out: Vec::with_capacity(BLOCK),
            out_pos: 0,
            emitted: 0,
            maps,
            pax: Vec::new(),
            next_size: None,
            zero_blocks: 0,
            max_record,
            max_size,
        }
    }

    /// A complete header block: where its data ends; the block to hand on
    /// (an old GNU sparse header rewritten as a plain file's).
    fn header(&mut self, mut h: Vec<u8>) -> io::Result<Vec<u8>> {
        if h.iter().all(|b| *b == 0) {
            self.zero_blocks += 1;
            self.state = if self.zero_blocks >= 2 {
                State::Done
            } else {
                State::Header
            };
            return Ok(h);
        }
        self.zero_blocks = 0;
        if !checksum_ok(&h) {
            // The parser reports it.
            self.state = State::Done;
            return Ok(h);
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
        self.pax.clear();
        if kind == b'S' {
            let mut map = GnuSparse {
                chunks: chunks(&h[386..482])?,
                real_size: numeric(&h[483..495])
                    .ok_or_else(|| invalid("a GNU sparse header's size is unreadable".into()))?,
            };
            map.chunks.shrink_to_fit();
            let at = self.emitted;
            let extended = h[482] != 0;
            // The parser sees a plain file of the stored data.
            h[156] = b'0';
            set_checksum(&mut h);
            self.state = if extended {
                State::Extension {
                    data: size,
                    at,
                    map,
                }
            } else {
                self.publish(at, map);
                State::Data {
                    left: padded(size),
                    keep: false,
                }
            };
        } else {
            self.state = State::Data {
                left: padded(size),
                keep: kind == b'x',
            };
        }
        if matches!(self.state, State::Data { left: 0, .. }) {
            self.state = State::Header;
        }
        Ok(h)
    }

    fn publish(&self, at: u64, map: GnuSparse) {
        self.maps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(at, map);
    }

    /// An extension block of a sparse map: dropped from the output.
    fn extension(&mut self, block: &[u8]) -> io::Result<()> {
        let State::Extension { data, at, map } = &mut self.state else {
            return Ok(());
        };
        map.chunks.extend(chunks(&block[..504])?);
        if map.chunks.len() > MAX_CHUNKS {
            return Err(invalid(format!(
                "a GNU sparse map of more than {MAX_CHUNKS} chunks"
            )));
        }
        if block[504] == 0 {
            let (data, at, map) = (*data, *at, std::mem::take(map));
            self.publish(at, map);
            self.state = State::Data {
                left: padded(data),
                keep: false,
            };
            if data == 0 {
                self.state = State::Header;
            }
        }
        Ok(())
    }

    /// Follows data bytes just read (never past the current entry's data).
    fn observe_data(&mut self, buf: &[u8]) {
        if let State::Data { left, keep } = &mut self.state {
            let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
            if *keep {
                self.pax.extend_from_slice(&buf[..take]);
            }
            *left -= take as u64;
            if *left == 0 {
                if *keep {
                    self.next_size = pax_size(&self.pax);
                }
                self.state = State::Header;
            }
        }
    }

    /// Reads one whole block (or what is left of the stream).
    fn fill_block(&mut self) -> io::Result<()> {
        while self.block.len() < BLOCK {
            let start = self.block.len();
            self.block.resize(BLOCK, 0);
            let n = match self.inner.read(&mut self.block[start..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    self.block.truncate(start);
                    return Err(e);
                }
            };
            self.block.truncate(start + n);
            if n == 0 {
                break;
            }
        }
        Ok(())
    }
}

/// The (offset, length) pairs of a GNU sparse map area, skipping unused
/// (all-zero) slots.
fn chunks(area: &[u8]) -> io::Result<Vec<(u64, u64)>> {
    let bad = || invalid("a GNU sparse map holds an unreadable number".into());
    area.chunks_exact(24)
        .filter(|slot| slot.iter().any(|b| *b != 0))
        .map(|slot| {
            Ok((
                numeric(&slot[..12]).ok_or_else(bad)?,
                numeric(&slot[12..]).ok_or_else(bad)?,
            ))
        })
        .collect()
}

/// Most chunks in one GNU sparse map.
const MAX_CHUNKS: usize = 1 << 20;

/// Rewrites a header's checksum field after a change.
fn set_checksum(h: &mut [u8]) {
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let field = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(field.as_bytes());
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.out_pos < self.out.len() {
                let n = (self.out.len() - self.out_pos).min(buf.len());
                buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                self.emitted += n as u64;
                return Ok(n);
            }
            match self.state {
                State::Done => {
                    let n = self.inner.read(buf)?;
                    self.emitted += n as u64;
                    return Ok(n);
                }
                State::Data { left, .. } => {
                    // Never past the entry's data: the next header is ours
                    // to look at first.
                    let max = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let n = self.inner.read(&mut buf[..max])?;
                    self.observe_data(&buf[..n]);
                    self.emitted += n as u64;
                    return Ok(n);
                }
                State::Header | State::Extension { .. } => {
                    self.fill_block()?;
                    let block = std::mem::take(&mut self.block);
                    if block.len() < BLOCK {
                        // The stream ends inside a block: hand on what
                        // there is, for the parser to refuse.
                        self.state = State::Done;
                        self.out = block;
                    } else if matches!(self.state, State::Extension { .. }) {
                        self.extension(&block)?;
                        self.out.clear();
                    } else {
                        self.out = self.header(block)?;
                        // A sparse map's extension blocks are read before
                        // its header goes on: the parser hands the entry
                        // out as soon as it has the header, and the map
                        // must be published by then.
                        while matches!(self.state, State::Extension { .. }) {
                            self.fill_block()?;
                            let ext = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
                            if ext.len() < BLOCK {
                                return Err(invalid(
                                    "the stream ends inside a GNU sparse map".into(),
                                ));
                            }
                            self.extension(&ext)?;
                        }
                    }
                    self.out_pos = 0;
                    self.block = Vec::with_capacity(BLOCK);
                    if self.out.is_empty() && matches!(self.state, State::Done) {
                        return Ok(0);
                    }
                }
            }
        }
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
        let mut g = HeaderGuard::new(stream, 1024, 1 << 30, SparseMaps::default());
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
