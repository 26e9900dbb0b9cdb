//! A stream handed from one thread to another in chunks, read back as a
//! [`Read`]: the layer writer's tar on its way to the eStargz writer, the
//! applied layer's stream on its way to the hashing thread.

use std::io::{self, Read};
use std::ops::Deref;
use std::sync::mpsc;

/// Reads the chunks `rx` delivers, in order, until the sender is gone;
/// `seen` is shown each chunk as it arrives.
pub(crate) struct ChannelReader<T, F> {
    pub(crate) rx: mpsc::Receiver<T>,
    current: T,
    pos: usize,
    pub(crate) seen: F,
}

impl<T: Deref<Target: AsRef<[u8]>> + Default, F: FnMut(&[u8])> ChannelReader<T, F> {
    pub(crate) fn new(rx: mpsc::Receiver<T>, seen: F) -> Self {
        ChannelReader {
            rx,
            current: T::default(),
            pos: 0,
            seen,
        }
    }
}

impl<T: Deref<Target: AsRef<[u8]>> + Default, F: FnMut(&[u8])> Read for ChannelReader<T, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.deref().as_ref().len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    (self.seen)(chunk.deref().as_ref());
                    self.current = chunk;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let current = &self.current.deref().as_ref()[self.pos..];
        let n = buf.len().min(current.len());
        buf[..n].copy_from_slice(&current[..n]);
        self.pos += n;
        Ok(n)
    }
}
