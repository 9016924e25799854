//! [`CanaryBuilder`]: setting up a canary (see [`canary`](mod@crate::canary)).

use std::path::PathBuf;
use std::sync::Arc;

use crate::canary::{CanaryReport, Plan, Variant};
use crate::error::LoadError;
use crate::key::Key;
use crate::reload::Reloader;
use crate::route::Rule;
use crate::Probation;

/// A canary being set up: made by [`Swapper::canary`](crate::Swapper::canary), started by
/// [`start`](Self::start).
#[must_use = "a canary starts only when `start` is called"]
pub struct CanaryBuilder<'s> {
    core: &'s Arc<Reloader>,
    plan: Plan,
}

impl<'s> CanaryBuilder<'s> {
    pub(crate) fn new(
        core: &'s Arc<Reloader>,
        artifact: PathBuf,
        gate: Option<Probation>,
    ) -> CanaryBuilder<'s> {
        CanaryBuilder {
            core,
            plan: Plan::new(artifact, gate),
        }
    }

    /// The sticky share of keys, in percent (0 to 100, to two decimals), that the canary
    /// serves. 0 by default: only rules send calls to it.
    pub fn percent(mut self, percent: f64) -> Self {
        self.plan.percent = percent;
        self
    }

    /// Where calls made without a key go; the stable version by default.
    pub fn without_key(mut self, variant: Variant) -> Self {
        self.plan.without_key = variant;
        self
    }

    /// Sends the keys `predicate` admits to `variant`, before the percentage is consulted:
    /// an A/B test by tenant, region or header rather than by share. Rules are tried in the
    /// order they were added; the first that admits a key decides.
    pub fn route(
        mut self,
        predicate: impl Fn(&Key) -> bool + Send + Sync + 'static,
        variant: Variant,
    ) -> Self {
        self.plan.rules.push(Rule {
            predicate: Arc::new(predicate),
            variant,
        });
        self
    }

    /// Judges the canary against the stable version and moves it on its own (see
    /// [`Probation`]). Without a gate (and without
    /// [`SwapperBuilder::canary_gate`](crate::SwapperBuilder::canary_gate)), an operator sets
    /// the percentage, promotes and aborts.
    pub fn gate(mut self, gate: Probation) -> Self {
        self.plan.gate = Some(gate);
        self
    }

    /// Runs the canary without a gate, even if the swapper has a default one.
    pub fn manual(mut self) -> Self {
        self.plan.gate = None;
        self
    }

    /// Loads the artifact (checked as any load is, signatures included), hands it the stable
    /// version's live data, runs the host's `before_publish` check on the new generation, and
    /// publishes it. On any error nothing changes.
    pub fn start(self) -> Result<CanaryReport, LoadError> {
        self.core.start_canary(self.plan)
    }
}

impl std::fmt::Debug for CanaryBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CanaryBuilder")
            .field("artifact", &self.plan.artifact)
            .field("percent", &self.plan.percent)
            .field("without_key", &self.plan.without_key)
            .field("rules", &self.plan.rules.len())
            .field("gate", &self.plan.gate)
            .finish()
    }
}
