//! Random-access reads of a committed blob.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// A committed blob opened for reading: random access with
/// [`ReaderAt::read_at`], or sequential through `Read` and `Seek`.
#[derive(Debug)]
pub struct ReaderAt {
    file: File,
    size: u64,
    pos: u64,
}

impl ReaderAt {
    pub(crate) fn new(file: File, size: u64) -> Self {
        ReaderAt { file, size, pos: 0 }
    }

    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads at `offset`; returns 0 at or past the end.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let max = usize::try_from(self.size - offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        self.file.read_at(&mut buf[..max], offset)
    }
}

impl Read for ReaderAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ReaderAt {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the blob",
            )
        })?;
        Ok(self.pos)
    }
}
