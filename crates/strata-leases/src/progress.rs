//! Progress (seed §7.3): a tracker that reports a named item's progress
//! through the operation context, at most every
//! [`PROGRESS_EMIT_INTERVAL`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ctx::{OpCtx, ProgressEvent};

/// The least time between two reports of one tracker's updates.
pub const PROGRESS_EMIT_INTERVAL: Duration = Duration::from_millis(100);

/// Throttled progress of one item.
#[derive(Debug)]
pub struct ProgressTracker {
    ctx: OpCtx,
    item: String,
    total: u64,
    unit: String,
    state: Mutex<(u64, Option<Instant>)>,
}

impl ProgressTracker {
    /// A tracker of `item` out of `total` `unit`s (0: unknown); a known
    /// total is reported at once as `(0, total)`.
    pub fn new(ctx: &OpCtx, item: &str, total: u64, unit: &str) -> ProgressTracker {
        let t = ProgressTracker {
            ctx: ctx.clone(),
            item: item.to_owned(),
            total,
            unit: unit.to_owned(),
            state: Mutex::new((0, None)),
        };
        if total > 0 {
            t.emit(0, total);
        }
        t
    }

    fn emit(&self, current: u64, total: u64) {
        self.ctx.emit(&ProgressEvent {
            item: self.item.clone(),
            current,
            total,
            unit: self.unit.clone(),
        });
    }

    /// Records `current`; reports it unless the last update's report was
    /// less than [`PROGRESS_EMIT_INTERVAL`] ago (the first always reports).
    pub fn update(&self, current: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 = current;
        let now = Instant::now();
        if s.1
            .is_none_or(|last| now.duration_since(last) >= PROGRESS_EMIT_INTERVAL)
        {
            s.1 = Some(now);
            drop(s);
            self.emit(current, self.total);
        }
    }

    /// Reports the final state (the current count as the total when none
    /// was known); nothing when nothing happened and no total was known.
    pub fn finish(&self) {
        let current = self.state.lock().unwrap_or_else(|p| p.into_inner()).0;
        if current == 0 && self.total == 0 {
            return;
        }
        let total = if self.total > 0 { self.total } else { current };
        self.emit(current, total);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn trackers_throttle_and_finish() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let ctx = OpCtx::new().with_events(move |e| {
            sink.lock()
                .unwrap()
                .push((e.current, e.total, e.unit.clone()));
        });
        let t = ProgressTracker::new(&ctx, "layer", 100, "bytes");
        t.update(10);
        t.update(20);
        t.update(30);
        t.finish();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.first(),
            Some(&(0, 100, "bytes".into())),
            "the total at once"
        );
        assert_eq!(
            seen[1],
            (10, 100, "bytes".into()),
            "the first update always"
        );
        assert_eq!(seen.last(), Some(&(30, 100, "bytes".into())), "the end");
        assert!(
            seen.len() <= 4,
            "updates within the interval are not reported: {seen:?}"
        );
        let quiet = ProgressTracker::new(&ctx, "nothing", 0, "");
        quiet.finish();
        let unknown = ProgressTracker::new(&OpCtx::new(), "x", 0, "");
        unknown.update(5);
        unknown.finish();
    }
}
