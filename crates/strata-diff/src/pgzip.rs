//! Parallel gzip, the way pigz does it: the stream is cut into pieces that
//! worker threads deflate independently (each primed with the 32 KiB before
//! it, so little ratio is lost) and end with a sync flush; the pieces are
//! written in order between one gzip header and one trailer (CRC-32 and
//! length of the whole). The result is one ordinary gzip member, and the
//! same bytes whatever the number of workers.

use std::io::{self, Write};

use flate2::{Compress, Compression, Crc, FlushCompress};

use crate::ordered::OrderedPool;

/// How much history primes each piece (deflate's window).
const WINDOW: usize = 32 << 10;

/// A gzip writer over `W` that deflates on `workers` threads.
pub(crate) struct ParallelGzip<W: Write> {
    sink: W,
    crc: Crc,
    tail: Vec<u8>,
    level: Compression,
    pool: OrderedPool<Vec<u8>>,
}

fn deflate(level: Compression, dictionary: &[u8], data: &[u8]) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(level, false);
    if !dictionary.is_empty() {
        c.set_dictionary(dictionary).map_err(io::Error::other)?;
    }
    let mut out = Vec::with_capacity(data.len() / 2 + 4096);
    let mut input = data;
    loop {
        let before = c.total_in();
        c.compress_vec(input, &mut out, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        let used = usize::try_from(c.total_in() - before).unwrap_or(input.len());
        input = &input[used..];
        // The flush is complete once it returns with room to spare.
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(out);
        }
        out.reserve(64 << 10);
    }
}

impl<W: Write> ParallelGzip<W> {
    pub(crate) fn new(mut sink: W, level: Compression, workers: usize) -> io::Result<Self> {
        // Header: magic, deflate, no flags, no mtime, no extra flags, OS
        // unknown (as flate2 writes it).
        sink.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255])?;
        Ok(ParallelGzip {
            sink,
            crc: Crc::new(),
            tail: Vec::new(),
            level,
            pool: OrderedPool::new("strata-gzip", workers)?,
        })
    }

    /// Queues one piece of the stream.
    pub(crate) fn piece(&mut self, data: Vec<u8>) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.crc.update(&data);
        let dictionary = std::mem::take(&mut self.tail);
        let keep = data.len().min(WINDOW);
        self.tail = data[data.len() - keep..].to_vec();
        if self.tail.len() < WINDOW {
            // A short piece: keep history from before it too.
            let mut t = dictionary.clone();
            t.extend_from_slice(&self.tail);
            let start = t.len().saturating_sub(WINDOW);
            self.tail = t[start..].to_vec();
        }
        let level = self.level;
        let sink = &mut self.sink;
        self.pool.submit(
            move || deflate(level, &dictionary, &data),
            &mut |piece: Vec<u8>| sink.write_all(&piece),
        )
    }

    /// Writes the rest, the final block and the trailer; returns the sink.
    pub(crate) fn finish(self) -> io::Result<W> {
        let ParallelGzip {
            mut sink,
            crc,
            pool,
            ..
        } = self;
        pool.finish(&mut |piece: Vec<u8>| sink.write_all(&piece))?;
        // An empty final block (fixed Huffman: BFINAL=1, BTYPE=01, end code).
        sink.write_all(&[0x03, 0x00])?;
        sink.write_all(&crc.sum().to_le_bytes())?;
        sink.write_all(&crc.amount().to_le_bytes())?;
        Ok(sink)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn gzip(data: &[u8], piece: usize, workers: usize) -> Vec<u8> {
        let mut g = ParallelGzip::new(Vec::new(), Compression::default(), workers).unwrap();
        for chunk in data.chunks(piece) {
            g.piece(chunk.to_vec()).unwrap();
        }
        g.finish().unwrap()
    }

    #[test]
    fn one_member_any_reader_accepts_and_the_same_for_any_worker_count() {
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 27) as u8 + b'a')
            .collect();
        let one = gzip(&data, 1 << 20, 1);
        assert_eq!(one, gzip(&data, 1 << 20, 3));
        // A single-member decoder reads it whole.
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(one.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // Small pieces still prime from the history before them.
        let small = gzip(&data, 10_000, 2);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(small.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // Empty input is a valid empty gzip.
        let empty = gzip(&[], 1, 2);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(empty.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }
}
