//! The operation context and lease scopes.
//!
//! An [`OpCtx`] is passed explicitly through every operation: it carries the
//! current lease (an id, or a [`LazyScope`] that creates one at the first
//! create boundary), a cancellation flag and a progress sink. Guards release
//! what they created when dropped.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use strata_core::Labels;

use crate::error::LeaseError;
use crate::labels::{TEMPORARY, format_time};
use crate::manager::{LeaseManager, LeaseSpec, Resource};

/// How long [`new_lease`] leases live unless released.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(3600);

type Progress = Arc<dyn Fn(u64) + Send + Sync>;
type Events = Arc<dyn Fn(&ProgressEvent) + Send + Sync>;

/// One progress report of a named item (the seed's progress log record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressEvent {
    /// What is progressing (a layer digest, an image name).
    pub item: String,
    /// Units done.
    pub current: u64,
    /// Units in all (0 when unknown).
    pub total: u64,
    /// The unit (`bytes`), empty when none.
    pub unit: String,
}

#[derive(Clone, Debug, Default)]
enum Slot {
    #[default]
    None,
    Lease(String),
    Lazy(Arc<LazyScope>),
}

/// The operation context.
#[derive(Clone, Default)]
pub struct OpCtx {
    slot: Slot,
    cancelled: Arc<AtomicBool>,
    progress: Option<Progress>,
    events: Option<Events>,
}

impl fmt::Debug for OpCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpCtx")
            .field("lease", &self.slot)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl OpCtx {
    /// A context with no lease.
    pub fn new() -> OpCtx {
        OpCtx::default()
    }

    /// This context running under lease `id`.
    pub fn with_lease_id(&self, id: &str) -> OpCtx {
        OpCtx {
            slot: Slot::Lease(id.to_owned()),
            ..self.clone()
        }
    }

    /// This context with a lazy scope, unless it already has a lease or a
    /// scope (nested scopes collapse into the outer one).
    pub fn with_lazy_scope(&self, scope: Arc<LazyScope>) -> OpCtx {
        match self.slot {
            Slot::None => OpCtx {
                slot: Slot::Lazy(scope),
                ..self.clone()
            },
            _ => self.clone(),
        }
    }

    /// This context without any lease (work deliberately outside the
    /// operation lease).
    pub fn without_lease(&self) -> OpCtx {
        OpCtx {
            slot: Slot::None,
            ..self.clone()
        }
    }

    /// This context reporting progress to `f` (bytes processed).
    pub fn with_progress(&self, f: impl Fn(u64) + Send + Sync + 'static) -> OpCtx {
        OpCtx {
            progress: Some(Arc::new(f)),
            ..self.clone()
        }
    }

    /// This context sending progress events of named items to `f`.
    pub fn with_events(&self, f: impl Fn(&ProgressEvent) + Send + Sync + 'static) -> OpCtx {
        OpCtx {
            events: Some(Arc::new(f)),
            ..self.clone()
        }
    }

    /// Sends a progress event, if anyone listens.
    pub fn emit(&self, event: &ProgressEvent) {
        if let Some(f) = &self.events {
            f(event);
        }
    }

    /// True when someone listens to progress events.
    pub fn has_events(&self) -> bool {
        self.events.is_some()
    }

    /// The current lease id, without creating a lazy one.
    pub fn lease(&self) -> Option<String> {
        match &self.slot {
            Slot::None => None,
            Slot::Lease(id) => Some(id.clone()),
            Slot::Lazy(scope) => scope.current(),
        }
    }

    /// True when a lazy scope is installed.
    pub fn has_lazy_scope(&self) -> bool {
        matches!(self.slot, Slot::Lazy(_))
    }

    /// A create boundary: the lease new objects go to, creating the lazy
    /// one now if needed. `None` when the context has neither.
    pub fn ensure_lease(&self) -> Result<Option<String>, LeaseError> {
        match &self.slot {
            Slot::None => Ok(None),
            Slot::Lease(id) => Ok(Some(id.clone())),
            Slot::Lazy(scope) => scope.ensure().map(Some),
        }
    }

    /// Asks every holder of this context (and its clones) to stop.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// `Err(Cancelled)` once cancelled: call between steps.
    pub fn check(&self) -> Result<(), LeaseError> {
        if self.is_cancelled() {
            Err(LeaseError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Reports `bytes` of progress.
    pub fn progress(&self, bytes: u64) {
        if let Some(p) = &self.progress {
            p(bytes);
        }
    }
}

/// Labels of a temporary lease (`buildkit/lease.temporary` = now).
pub fn temporary_labels() -> Labels {
    Labels::from([(TEMPORARY.to_string(), format_time(SystemTime::now()))])
}

/// A lease created on first need, at most once even under concurrency, and
/// deleted on release (or drop).
pub struct LazyScope {
    lm: LeaseManager,
    labels: Labels,
    state: Mutex<(Option<String>, bool)>,
}

impl fmt::Debug for LazyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazyScope")
            .field("lease", &self.current())
            .finish()
    }
}

impl LazyScope {
    /// A scope whose lease (when made) has `labels`, a random id and the
    /// default one-hour expiry.
    pub fn new(lm: LeaseManager, labels: Labels) -> Arc<LazyScope> {
        Arc::new(LazyScope {
            lm,
            labels,
            state: Mutex::new((None, false)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<String>, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> Option<String> {
        self.lock().0.clone()
    }

    /// The scope's lease, created now if this is the first need.
    pub fn ensure(&self) -> Result<String, LeaseError> {
        let mut state = self.lock();
        if state.1 {
            return Err(LeaseError::Released);
        }
        if let Some(id) = &state.0 {
            return Ok(id.clone());
        }
        let lease = self.lm.create(LeaseSpec {
            id: None,
            labels: self.labels.clone(),
            expire: Some(DEFAULT_EXPIRY),
        })?;
        state.0 = Some(lease.id.clone());
        Ok(lease.id)
    }

    /// Ends the scope: its lease (if any was made) is deleted. Idempotent.
    pub fn release(&self) -> Result<(), LeaseError> {
        let lease = {
            let mut state = self.lock();
            state.1 = true;
            state.0.take()
        };
        match lease {
            Some(id) => self.lm.delete(&id),
            None => Ok(()),
        }
    }
}

impl Drop for LazyScope {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::debug!(error = %e, "releasing a lazy lease scope on drop");
        }
    }
}

/// A lease made by [`new_lease`]: adopt its resources into another lease,
/// or discard it. Dropped without either, it is discarded.
#[derive(Debug)]
pub struct LeaseRef {
    lm: LeaseManager,
    id: String,
    resources: OnceLock<Result<Vec<Resource>, String>>,
    discarded: AtomicBool,
}

impl LeaseRef {
    /// The lease's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds every resource this lease holds (listed once, on the first
    /// call) to lease `target`, then discards this lease.
    pub fn adopt(&self, target: Option<&str>) -> Result<(), LeaseError> {
        let Some(target) = target.filter(|t| !t.is_empty()) else {
            return Err(LeaseError::Invalid(
                "missing lease requirement for adopt".into(),
            ));
        };
        let listed = self
            .resources
            .get_or_init(|| self.lm.list_resources(&self.id).map_err(|e| e.to_string()));
        let resources = listed.as_ref().map_err(|e| LeaseError::Collect {
            what: format!("resources of lease {:?}", self.id),
            reason: e.clone(),
        })?;
        for r in resources {
            self.lm.add_resource(target, r)?;
        }
        self.discard()
    }

    /// Deletes the lease (once; later calls do nothing).
    pub fn discard(&self) -> Result<(), LeaseError> {
        if self.discarded.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        match self.lm.delete(&self.id) {
            Err(LeaseError::NotFound(_)) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for LeaseRef {
    fn drop(&mut self) {
        if let Err(e) = self.discard() {
            tracing::debug!(lease = %self.id, error = %e, "discarding a lease on drop");
        }
    }
}

/// Creates a lease with a random id, the default one-hour expiry and
/// `labels`.
pub fn new_lease(lm: &LeaseManager, labels: Labels) -> Result<LeaseRef, LeaseError> {
    let lease = lm.create(LeaseSpec {
        id: None,
        labels,
        expire: Some(DEFAULT_EXPIRY),
    })?;
    Ok(LeaseRef {
        lm: lm.clone(),
        id: lease.id,
        resources: OnceLock::new(),
        discarded: AtomicBool::new(false),
    })
}

/// Releases the lease [`with_lease`] created, when dropped or released.
#[derive(Debug)]
pub struct LeaseGuard {
    lease: Option<LeaseRef>,
}

impl LeaseGuard {
    /// Deletes the lease now (nothing when the context already had one).
    pub fn release(mut self) -> Result<(), LeaseError> {
        match self.lease.take() {
            Some(l) => l.discard(),
            None => Ok(()),
        }
    }
}

/// The context itself when it already has a lease or a lazy scope, whose
/// lease is made now (the seed's `EnsureLease`: what the caller's work
/// creates must stay in the caller's lease; the guard does nothing);
/// otherwise a context under a new temporary lease and a guard that
/// deletes it.
pub fn with_lease(ctx: &OpCtx, lm: &LeaseManager) -> Result<(OpCtx, LeaseGuard), LeaseError> {
    if ctx.ensure_lease()?.is_some() {
        return Ok((ctx.clone(), LeaseGuard { lease: None }));
    }
    let lease = new_lease(lm, temporary_labels())?;
    let ctx = ctx.with_lease_id(lease.id());
    Ok((ctx, LeaseGuard { lease: Some(lease) }))
}

/// An operation's lease as a store sees it: the store records a new object
/// and this hold in one write transaction, so no collection can ever see
/// the object unheld (containerd's lease integration).
#[derive(Clone, Debug)]
pub struct Hold {
    lm: LeaseManager,
    lease: String,
}

impl Hold {
    /// `ctx`'s lease (the lazy one made now), or `None` when the context
    /// has none. Call before opening the write transaction: making a lazy
    /// lease takes one of its own.
    pub fn of(ctx: &OpCtx, lm: &LeaseManager) -> Result<Option<Hold>, LeaseError> {
        Ok(ctx.ensure_lease()?.map(|lease| Hold {
            lm: lm.clone(),
            lease,
        }))
    }

    /// The lease's id.
    pub fn lease(&self) -> &str {
        &self.lease
    }

    /// Adds `r` to the lease inside `tx`.
    pub fn add_in(&self, tx: &strata_metadata::WriteTx, r: &Resource) -> Result<(), LeaseError> {
        self.lm.add_resource_in(tx, &self.lease, r)
    }

    /// Removes `r` from the lease inside `tx` (an object renamed away).
    pub fn remove_in(&self, tx: &strata_metadata::WriteTx, r: &Resource) -> Result<(), LeaseError> {
        self.lm.delete_resource_in(tx, &self.lease, r)
    }
}
