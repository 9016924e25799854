//! What a reload tells those who watch it. The core reports each step through an
//! [`Observer`] and never depends on who listens: operations (`ops/`) is one observer, and a
//! build without the `ops` feature has none.

#![cfg_attr(not(feature = "ops"), allow(dead_code))]

use std::time::Duration;

use crate::error::LoadError;
use crate::load::Source;
use crate::trigger::Trigger;

/// A generation was published.
#[derive(Debug)]
pub(crate) struct PublishedEvent<'a> {
    pub generation: u64,
    /// The plugins the reload gave new instances: the ones a probation would judge.
    pub fresh: Vec<String>,
    pub trigger: &'a Trigger,
    /// The first generation with plugins in it (there is nothing to roll back to).
    pub first: bool,
    pub took: Duration,
}

/// Whether a published generation is known-good now, or once an observer says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Persist it as known-good right away.
    KnownGood,
    /// An observer holds it on probation, and marks it known-good when that passes
    /// ([`Reloader::mark_known_good`](super::Reloader::mark_known_good)).
    Held,
}

/// Watches reloads. Every method is called with the reload lock held, so events arrive in
/// order and never overlap; an observer must not call back into the reloader from them.
pub(crate) trait Observer: Send + Sync {
    /// A load is about to read `source` (or, after a failed load, the source is `source`
    /// again): watch it from now on, so that nothing written after the read is missed.
    fn source(&self, source: &Source);
    /// A load, reload or rollback failed; the current generation keeps serving.
    fn failed(&self, error: &LoadError);
    /// A generation was published.
    fn published(&self, event: &PublishedEvent<'_>) -> Verdict;
    /// `generation` is the known-good one now.
    fn known_good(&self, generation: u64);
}
