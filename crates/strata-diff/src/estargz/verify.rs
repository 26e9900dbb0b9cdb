//! Checking a layer against its TOC while it is applied: where the gzip
//! members start, and the uncompressed stream walked entry by entry.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, Read};
use std::rc::Rc;

use strata_core::{Algorithm, Digester};

use super::{Index, MAX_RECORD, TOC_NAME, toc_entry};
use crate::tarblock::{Position, clean_name, next_entry, padding};

/// Where each gzip member of a blob starts: compressed offset to
/// uncompressed offset, recorded while decompressing.
pub(crate) type MemberStarts = HashMap<u64, u64>;

/// A gzip decoder over a whole blob that records where members start.
pub(crate) struct MemberDecoder<'a, R: BufRead> {
    idle: Option<&'a mut R>,
    active: Option<flate2::bufread::GzDecoder<&'a mut R>>,
    /// Compressed bytes `R` has handed out so far.
    consumed: Box<dyn Fn(&R) -> u64 + 'a>,
    out: u64,
    /// The compressed offsets worth recording (the TOC's chunk offsets):
    /// memory stays bounded by the TOC, whatever the member count.
    wanted: HashSet<u64>,
    starts: Rc<RefCell<MemberStarts>>,
}

impl<'a, R: BufRead> MemberDecoder<'a, R> {
    /// Decodes `input`, recording into `starts` where the members the
    /// TOC of `index` points at start; `consumed` tells how many
    /// compressed bytes `input` has handed out.
    pub(crate) fn new(
        input: &'a mut R,
        consumed: impl Fn(&R) -> u64 + 'a,
        index: &Index,
        starts: Rc<RefCell<MemberStarts>>,
    ) -> Self {
        MemberDecoder {
            idle: Some(input),
            active: None,
            consumed: Box::new(consumed),
            out: 0,
            wanted: index
                .toc
                .entries
                .iter()
                .filter(|e| e.offset != 0)
                .map(|e| e.offset)
                .collect(),
            starts,
        }
    }
}

impl<R: BufRead> Read for MemberDecoder<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(d) = &mut self.active {
                let n = d.read(buf)?;
                if n > 0 || buf.is_empty() {
                    self.out += n as u64;
                    return Ok(n);
                }
                let d = self.active.take().expect("checked above");
                self.idle = Some(d.into_inner());
            }
            let input = self.idle.take().expect("one of the two is set");
            match input.fill_buf() {
                Ok([]) => {
                    self.idle = Some(input);
                    return Ok(0);
                }
                Ok(_) => {}
                Err(e) => {
                    self.idle = Some(input);
                    return Err(e);
                }
            }
            let at = (self.consumed)(input);
            if self.wanted.contains(&at) {
                self.starts.borrow_mut().insert(at, self.out);
            }
            self.active = Some(flate2::bufread::GzDecoder::new(input));
        }
    }
}

/// A chunk as the stream walk found it: the TOC's compressed offset for
/// it, and where its data is in the uncompressed stream.
pub(crate) struct ChunkAt {
    name: String,
    offset: u64,
    data: u64,
}

/// Walks a layer's uncompressed stream against `index`: the same entries
/// in the same order with the same metadata, every chunk and file digest
/// right, the TOC entry last and equal to `index`'s. Returns where each
/// chunk's data is, for [`check_offsets`]; the error says what differs.
pub(crate) fn verify_stream(stream: impl Read, index: &Index) -> Result<Vec<ChunkAt>, String> {
    let mut r = Position {
        inner: stream,
        pos: 0,
    };
    let mut toc = index.toc.entries.iter().peekable();
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    let io = |e: io::Error| format!("not a valid tar stream: {e}");
    while let Some(e) = next_entry(&mut r, MAX_RECORD).map_err(io)? {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        if clean_name(&e.name) == TOC_NAME.as_bytes() {
            let mut json = Digester::new(Algorithm::Sha256);
            let copied = io::copy(&mut (&mut r).take(e.size), &mut json).map_err(io)?;
            if copied != e.size || json.finish() != index.digest {
                return Err(
                    "the TOC entry in the stream is not the TOC the footer points to".into(),
                );
            }
            io::copy(&mut (&mut r).take(padding(e.size)), &mut io::sink()).map_err(io)?;
            if next_entry(&mut r, MAX_RECORD).map_err(io)?.is_some() {
                return Err(format!("an entry follows the TOC entry {TOC_NAME}"));
            }
            if let Some(left) = toc.next() {
                return Err(format!(
                    "the TOC lists {:?}, which the layer lacks",
                    left.name
                ));
            }
            return Ok(chunks);
        }
        let want = toc_entry(&e).map_err(|err| err.to_string())?;
        let Some(have) = toc.next() else {
            return Err(format!("{name:?} is in the layer but not in its TOC"));
        };
        let same = have.name == want.name
            && have.kind == want.kind
            && have.size == want.size
            && have.link_name == want.link_name
            && have.mode == want.mode
            && have.uid == want.uid
            && have.gid == want.gid
            && have.dev_major == want.dev_major
            && have.dev_minor == want.dev_minor
            && have.xattrs == want.xattrs
            && same_time(&have.mod_time, &want.mod_time);
        if !same {
            return Err(format!(
                "the TOC describes {:?} ({} {} bytes mode {:o} {}:{}) unlike the layer ({} {} bytes mode {:o} {}:{})",
                have.name,
                have.kind,
                have.size,
                have.mode,
                have.uid,
                have.gid,
                want.kind,
                want.size,
                want.mode,
                want.uid,
                want.gid
            ));
        }
        if want.kind != "reg" {
            if e.size > 0 {
                return Err(format!("{name:?}: a {} entry with data", want.kind));
            }
            continue;
        }
        let mut file = Digester::new(Algorithm::Sha256);
        let mut done = 0u64;
        let mut entry = have;
        while done < e.size {
            if entry.chunk_offset != done {
                return Err(format!(
                    "the TOC's chunk of {name:?} at {} leaves a gap at {done}",
                    entry.chunk_offset
                ));
            }
            let next_is_chunk = toc.peek().is_some_and(|n| n.kind == "chunk");
            let n = if next_is_chunk {
                entry.chunk_size
            } else {
                e.size - done
            };
            if n == 0 || n > e.size - done || (entry.chunk_size != 0 && entry.chunk_size != n) {
                return Err(format!(
                    "the TOC's chunk of {name:?} at {done} has a wrong size ({})",
                    entry.chunk_size
                ));
            }
            chunks.push(ChunkAt {
                name: name.clone(),
                offset: entry.offset,
                data: r.pos,
            });
            let mut chunk = Digester::new(Algorithm::Sha256);
            let mut left = n;
            while left > 0 {
                let k = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                r.read_exact(&mut buf[..k]).map_err(io)?;
                chunk.update(&buf[..k]);
                file.update(&buf[..k]);
                left -= k as u64;
            }
            let got = chunk.finish().to_string();
            if entry.chunk_digest != got {
                return Err(format!(
                    "the chunk of {name:?} at {done} has digest {got}, the TOC says {:?}",
                    entry.chunk_digest
                ));
            }
            done += n;
            if done < e.size {
                match toc.next() {
                    Some(c) if c.kind == "chunk" && c.name == have.name => entry = c,
                    _ => {
                        return Err(format!(
                            "the TOC's chunks of {name:?} stop at {done} of {} bytes",
                            e.size
                        ));
                    }
                }
            }
        }
        let got = file.finish().to_string();
        if !have.digest.is_empty() && have.digest != got {
            return Err(format!(
                "{name:?} has digest {got}, the TOC says {}",
                have.digest
            ));
        }
        io::copy(&mut (&mut r).take(padding(e.size)), &mut io::sink()).map_err(io)?;
    }
    Err(format!("the layer ends without its TOC entry {TOC_NAME}"))
}

/// Whether the TOC's time `toc` is the stream's `stream` (empty is the
/// epoch, as readers take it): to the nanosecond when the TOC has a
/// fraction of a second (Strata writes one), else to the second the
/// stream's time rounds to (the reference writer rounds).
fn same_time(toc: &str, stream: &str) -> bool {
    let parse = |s: &str| {
        if s.is_empty() {
            return Some(0);
        }
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(time::OffsetDateTime::unix_timestamp_nanos)
    };
    let (Some(t), Some(s)) = (parse(toc), parse(stream)) else {
        return false;
    };
    if toc.contains('.') {
        t == s
    } else {
        t == (s + 500_000_000).div_euclid(1_000_000_000) * 1_000_000_000
    }
}

/// Checks that every chunk's TOC offset is where a gzip member starts
/// with that chunk's data (what a reader of one chunk relies on).
pub(crate) fn check_offsets(chunks: &[ChunkAt], starts: &MemberStarts) -> Result<(), String> {
    for c in chunks {
        if starts.get(&c.offset) != Some(&c.data) {
            return Err(format!(
                "the TOC puts a chunk of {:?} at compressed offset {}, where no gzip member starts with it",
                c.name, c.offset
            ));
        }
    }
    Ok(())
}
