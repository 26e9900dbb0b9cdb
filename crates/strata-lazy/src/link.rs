//! The link a mount's layers share, and who may use it: a read that waits
//! for a fetch comes first; prefetch fetches only when no read has waited
//! for a while, one fetch at a time across every layer, the layers taking
//! turns in the order they asked. Prefetch running beside a program's
//! first reads took the bandwidth those reads needed: the program started
//! later with prefetch on than with it off.

use std::collections::VecDeque;
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
    /// When the last of them ended (or when the quiet period was last
    /// restarted).
    last: Instant,
    /// Whether a prefetch fetch is under way.
    background: bool,
    /// The prefetch turns asked for and not yet given, oldest first.
    queue: VecDeque<u64>,
    /// The number of the next turn asked for.
    next: u64,
}

/// A read's claim on the link, from its cache miss until its chunk is
/// fetched (or has failed).
#[derive(Debug)]
pub(crate) struct Demand<'a>(&'a Link);

/// A prefetch fetch's turn on the link.
#[derive(Debug)]
pub(crate) struct Background<'a>(&'a Link);

/// How long a waiting prefetch sleeps between looks at `stop` when the
/// quiet period is not what holds it back (a guard's end wakes it).
const POLL: Duration = Duration::from_millis(50);

impl Link {
    /// A link on which prefetch waits until no read has waited for
    /// `quiet`, counted from now at first.
    pub fn new(quiet: Duration) -> Link {
        Link {
            state: Mutex::new(State {
                waiting: 0,
                last: Instant::now(),
                background: false,
                queue: VecDeque::new(),
                next: 0,
            }),
            changed: Condvar::new(),
            quiet,
        }
    }

    /// Starts the quiet period again from now: called when the mount is
    /// ready, so a program started on it gets its first reads in before
    /// prefetch, however long the mount took.
    pub fn quiet_from_now(&self) {
        self.state().last = Instant::now();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A read needs a fetch: prefetch holds back until it is done.
    pub(crate) fn demand(&self) -> Demand<'_> {
        self.state().waiting += 1;
        Demand(self)
    }

    /// Waits until prefetch may fetch: this caller's turn (turns go in the
    /// order asked, so the layers alternate), no read waiting, none for
    /// the quiet period, and no other prefetch fetch under way. `None`
    /// once `stop` is set.
    pub(crate) fn background(&self, stop: &AtomicBool) -> Option<Background<'_>> {
        let mut s = self.state();
        let turn = s.next;
        s.next += 1;
        s.queue.push_back(turn);
        loop {
            if stop.load(Ordering::Relaxed) {
                s.queue.retain(|&t| t != turn);
                drop(s);
                self.changed.notify_all();
                return None;
            }
            let idle = s.last.elapsed();
            let blocked = s.waiting > 0 || s.background || s.queue.front() != Some(&turn);
            if !blocked && idle >= self.quiet {
                s.queue.pop_front();
                s.background = true;
                return Some(Background(self));
            }
            let wait = if blocked {
                POLL
            } else {
                (self.quiet - idle).clamp(Duration::from_millis(1), POLL)
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_turns_go_in_the_order_asked() {
        let link = Link::new(Duration::ZERO);
        let stop = AtomicBool::new(false);
        let order = Mutex::new(Vec::new());
        let queued = |n: usize| {
            while link.state().queue.len() < n {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let first = link.background(&stop).expect("a turn");
        std::thread::scope(|s| {
            // Two other layers ask while the first holds the turn...
            for layer in ["b", "c"] {
                let (link, stop, order) = (&link, &stop, &order);
                let waiting = link.state().queue.len();
                s.spawn(move || {
                    let _turn = link.background(stop).expect("a turn");
                    order.lock().unwrap().push(layer);
                });
                queued(waiting + 1);
            }
            // ...and the first asks again the moment it is done: it goes
            // after them, not straight back in.
            drop(first);
            let _turn = link.background(&stop).expect("a turn");
            order.lock().unwrap().push("a");
        });
        assert_eq!(order.into_inner().unwrap(), ["b", "c", "a"]);
    }

    #[test]
    fn a_stopped_prefetch_gives_its_turn_up() {
        let link = Link::new(Duration::ZERO);
        let stop = AtomicBool::new(true);
        assert!(link.background(&stop).is_none());
        // The turn it asked for is not in anyone's way.
        assert!(link.background(&AtomicBool::new(false)).is_some());
    }
}
