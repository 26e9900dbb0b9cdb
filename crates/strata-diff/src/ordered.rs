//! Work done on a few threads and handed back in the order it was given:
//! the compressors (one gzip member in pieces, eStargz members) queue jobs
//! and write the results in stream order, with a bounded number in flight.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

type Work<T> = Box<dyn FnOnce() -> io::Result<T> + Send>;
type Reply<T> = mpsc::SyncSender<io::Result<T>>;

/// A pool of `workers` threads whose results come back in submission order.
pub(crate) struct OrderedPool<T> {
    jobs: Option<mpsc::SyncSender<(Work<T>, Reply<T>)>>,
    pending: VecDeque<mpsc::Receiver<io::Result<T>>>,
    pool: Vec<JoinHandle<()>>,
    depth: usize,
}

impl<T: Send + 'static> OrderedPool<T> {
    /// Starts `workers` threads (at least one) named `name-N`.
    pub(crate) fn new(name: &str, workers: usize) -> io::Result<Self> {
        let workers = workers.max(1);
        let (tx, rx) = mpsc::sync_channel::<(Work<T>, Reply<T>)>(workers);
        let rx = Arc::new(Mutex::new(rx));
        let pool = (0..workers)
            .map(|i| {
                let rx = Arc::clone(&rx);
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        loop {
                            let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                            let Ok((work, reply)) = job else { return };
                            // The submitter may have given up; nothing to do then.
                            let _gone = reply.send(work());
                        }
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(OrderedPool {
            jobs: Some(tx),
            pending: VecDeque::new(),
            pool,
            depth: 2 * workers,
        })
    }

    /// Queues `work`; hands `done` the oldest results while too many are in
    /// flight.
    pub(crate) fn submit(
        &mut self,
        work: impl FnOnce() -> io::Result<T> + Send + 'static,
        done: &mut impl FnMut(T) -> io::Result<()>,
    ) -> io::Result<()> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("the worker pool is finished"))?
            .send((Box::new(work), reply))
            .map_err(|_| io::Error::other("the workers stopped"))?;
        self.pending.push_back(rx);
        while self.pending.len() > self.depth {
            self.next(done)?;
        }
        Ok(())
    }

    fn next(&mut self, done: &mut impl FnMut(T) -> io::Result<()>) -> io::Result<()> {
        if let Some(rx) = self.pending.pop_front() {
            done(rx.recv().map_err(|_| io::Error::other("a worker died"))??)?;
        }
        Ok(())
    }

    /// Hands `done` every result still in flight, in order, and stops the
    /// threads.
    pub(crate) fn finish(mut self, done: &mut impl FnMut(T) -> io::Result<()>) -> io::Result<()> {
        self.jobs = None;
        while !self.pending.is_empty() {
            self.next(done)?;
        }
        for worker in self.pool.drain(..) {
            worker
                .join()
                .map_err(|_| io::Error::other("a worker panicked"))?;
        }
        Ok(())
    }
}
