//! Uses of immutable refs, counted in memory and written in batches.
//!
//! Releasing an immutable ref counts a use (the seed's usage count and
//! last-used time, which order `prune`'s choices). Releases happen on drop,
//! often on an async thread, and one fsynced write transaction per drop
//! would stall it: the counts wait here and go to disk with the next record
//! edit, when many are waiting, before a prune measures, and when the
//! manager goes away. Readers of records see them at once. A crash loses
//! the uses not yet written, nothing else: they are advisory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use strata_metadata::WriteTx;
use strata_metadata::records::{RefRecord, from_system_time};

use crate::error::Result;
use crate::metadata::{self, Edit, RefMetadata};

/// How many records may wait before a release writes them.
const BATCH: usize = 512;

#[derive(Clone, Copy, Debug)]
struct Pending {
    count: u64,
    last: SystemTime,
}

/// The uses counted since the last write.
#[derive(Debug, Default)]
pub(crate) struct Uses {
    pending: Mutex<HashMap<String, Pending>>,
    /// A batch write is scheduled and has not drained yet: releases past
    /// the threshold meanwhile schedule no other.
    scheduled: std::sync::atomic::AtomicBool,
}

impl Uses {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one use of record `id`, now; true when the caller should
    /// schedule a batch write (enough records wait and none is scheduled).
    pub(crate) fn record(&self, id: &str) -> bool {
        let mut pending = self.pending();
        let now = SystemTime::now();
        let p = pending.entry(id.to_owned()).or_insert(Pending {
            count: 0,
            last: now,
        });
        p.count += 1;
        p.last = now;
        pending.len() >= BATCH
            && !self
                .scheduled
                .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Forgets a scheduled write that could not start, so a later release
    /// schedules another.
    pub(crate) fn unschedule(&self) {
        self.scheduled
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// True when nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending().is_empty()
    }

    /// Record `id` as stored, with the uses waiting for it.
    pub(crate) fn view(&self, id: &str, record: RefRecord) -> RefMetadata {
        let md = RefMetadata::new(id, record);
        match self.pending().get(id).copied() {
            Some(p) => with_uses(md, p),
            None => md,
        }
    }

    /// Writes every waiting use into `tx` (records deleted meanwhile are
    /// skipped). The uses leave memory now: if `tx` does not commit they
    /// are lost, as a crash would lose them.
    pub(crate) fn write(&self, tx: &WriteTx) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending());
        self.unschedule();
        for (id, p) in pending {
            let Some(r) = strata_metadata::Reader::get::<RefRecord>(tx, &id)? else {
                continue;
            };
            let count = RefMetadata::new(&id, r).usage_count() + p.count;
            metadata::apply_edit(tx, &id, edit(count, p.last))?;
        }
        Ok(())
    }
}

fn edit(count: u64, last: SystemTime) -> Edit {
    Edit::default()
        .set(metadata::USAGE_COUNT, &count)
        .set(metadata::LAST_USED_AT, &from_system_time(last))
}

fn with_uses(md: RefMetadata, p: Pending) -> RefMetadata {
    let count = md.usage_count() + p.count;
    let id = md.id().to_owned();
    let mut record = md.record;
    edit(count, p.last).apply_to(&mut record);
    RefMetadata::new(&id, record)
}

#[cfg(test)]
mod tests {
    use super::{BATCH, Uses};

    /// A burst of releases past the threshold schedules one write, and
    /// another only once that one has started.
    #[test]
    fn a_burst_schedules_one_write() {
        let uses = Uses::default();
        let scheduled = (0..BATCH + 100)
            .filter(|i| uses.record(&format!("r{i}")))
            .count();
        assert_eq!(scheduled, 1);
        uses.unschedule();
        assert!(uses.record("one-more"), "the next release schedules again");
        assert!(!uses.record("and-another"));
    }
}
