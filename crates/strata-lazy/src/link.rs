//! The link a mount's layers share, and who may use it: a read that waits
//! for a fetch comes first; prefetch fetches only when no read has waited
//! for a while, one fetch at a time across every layer. Prefetch running
//! beside a program's first reads took the bandwidth those reads needed:
//! the program started later with prefetch on than with it off.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Demand on a link, shared by the layers of a mount.
#[derive(Debug)]
pub struct Link {
    state: Mutex<State>,
    changed: Condvar,
    quiet: Duration,
}

#[derive(Debug)]
struct State {
    /// Reads waiting for a fetch now.
    waiting: usize,
    /// When the last of them ended (or when the link was made).
    last: Instant,
    /// Whether a prefetch fetch is under way.
    background: bool,
}

/// A read's claim on the link, from its cache miss until its chunk is
/// fetched (or has failed).
#[derive(Debug)]
pub(crate) struct Demand<'a>(&'a Link);

/// A prefetch fetch's turn on the link.
#[derive(Debug)]
pub(crate) struct Background<'a>(&'a Link);

impl Link {
    /// A link on which prefetch waits until no read has waited for
    /// `quiet` (counted from now, so a program started on a fresh mount
    /// gets its first reads in first).
    pub fn new(quiet: Duration) -> Link {
        Link {
            state: Mutex::new(State {
                waiting: 0,
                last: Instant::now(),
                background: false,
            }),
            changed: Condvar::new(),
            quiet,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A read needs a fetch: prefetch holds back until it is done.
    pub(crate) fn demand(&self) -> Demand<'_> {
        self.state().waiting += 1;
        Demand(self)
    }

    /// Waits until prefetch may fetch: no read waiting, none for the quiet
    /// period, and no other prefetch fetch under way. `None` once `stop` is
    /// set.
    pub(crate) fn background(&self, stop: &AtomicBool) -> Option<Background<'_>> {
        let mut s = self.state();
        loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            let idle = s.last.elapsed();
            if s.waiting == 0 && !s.background && idle >= self.quiet {
                s.background = true;
                return Some(Background(self));
            }
            // Woken when a read or a prefetch fetch ends; the timeout
            // covers the rest of the quiet period and looks at `stop`.
            let wait = self
                .quiet
                .saturating_sub(idle)
                .clamp(Duration::from_millis(1), Duration::from_millis(50));
            s = self
                .changed
                .wait_timeout(s, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for Demand<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.waiting -= 1;
        s.last = Instant::now();
        drop(s);
        self.0.changed.notify_all();
    }
}

impl Drop for Background<'_> {
    fn drop(&mut self) {
        self.0.state().background = false;
        self.0.changed.notify_all();
    }
}
