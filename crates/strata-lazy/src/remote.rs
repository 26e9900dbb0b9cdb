//! Where a lazy layer's bytes come from: any source of byte ranges of one
//! blob (a registry, in the command line; a file, in tests), and the two
//! reads that find its TOC.

use std::io;

pub(crate) use strata_diff::estargz::index_of_tail;
use strata_diff::estargz::{FOOTER_SIZE, Index, toc_offset_in};

/// Byte ranges of one blob. Called from FUSE and prefetch threads, so it
/// blocks; an error is returned to the reader as EIO, so it should say
/// what failed (it is logged).
pub trait RangeSource: Send + Sync {
    /// The blob's size.
    fn size(&self) -> u64;

    /// Exactly the `len` bytes at `offset` (never fewer: a short answer is
    /// an error).
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>>;

    /// For a source that keeps what is read through it: the byte ranges of
    /// the blob it has not kept yet (empty once it has all of them).
    /// `None` for a source that keeps nothing, or has stopped keeping.
    fn unkept(&self) -> Option<Vec<(u64, u64)>> {
        None
    }
}

/// A blob in a local file: for tests and for layers already stored.
#[derive(Debug)]
pub struct FileSource {
    file: std::fs::File,
    size: u64,
}

impl FileSource {
    /// Opens `path`.
    pub fn open(path: &std::path::Path) -> io::Result<FileSource> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        Ok(FileSource { file, size })
    }
}

impl RangeSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

/// The TOC of the eStargz blob `src` serves, in two range reads (the
/// footer, then everything from the TOC's member to the end); `None` when
/// the blob has no eStargz footer.
pub fn read_index(src: &dyn RangeSource) -> io::Result<Option<Index>> {
    match read_tail(src)? {
        Some((offset, bytes)) => index_of_tail(offset, &bytes),
        None => Ok(None),
    }
}

/// The end of the eStargz blob `src` serves, from its TOC's member on,
/// and where that starts, in two range reads (the footer, then the rest);
/// `None` when the blob has no eStargz footer.
pub(crate) fn read_tail(src: &dyn RangeSource) -> io::Result<Option<(u64, Vec<u8>)>> {
    let size = src.size();
    let footer_len = size.min(FOOTER_SIZE);
    let footer = src.read_range(size - footer_len, footer_len)?;
    let Some(toc_offset) = toc_offset_in(&footer, size)? else {
        return Ok(None);
    };
    let bytes = src.read_range(toc_offset, size - toc_offset)?;
    Ok(Some((toc_offset, bytes)))
}
