//! Leases keep things alive; the garbage collector reclaims the rest.
//!
//! * [`LeaseManager`]: create, delete, list leases and add, remove, list
//!   their resources (`content`, `snapshots/<backend>`, `ingests`), scoped to
//!   a namespace, all in the metadata store.
//! * [`OpCtx`]: the explicit operation context (current lease or a lazy
//!   lease scope, cancellation, progress), with the guards of
//!   [`with_lease`], [`new_lease`] and [`LazyScope`].
//! * [`gc`]: tri-colour mark and sweep over the metadata graph; stores plug
//!   in through the narrow [`Collect`] seam; [`gc::Scheduler`] triggers it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod ctx;
mod error;
pub mod gc;
pub mod labels;
mod manager;
mod progress;

pub use ctx::{
    Hold, LazyScope, LeaseGuard, LeaseRef, OpCtx, ProgressEvent, new_lease, temporary_labels,
    with_lease,
};
pub use error::LeaseError;
pub use gc::{Collect, Collector, Node, Swept};
pub use manager::{Lease, LeaseManager, LeaseSpec, Resource};
pub use progress::{PROGRESS_EMIT_INTERVAL, ProgressTracker};

// The README's examples compile and run as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
