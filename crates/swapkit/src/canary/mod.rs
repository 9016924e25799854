//! Canaries: a second version of one plugin serving beside the stable one, in the same
//! generation, for a sticky share of request keys.
//!
//! [`Swapper::canary`](crate::Swapper::canary) loads the new version beside the stable one:
//! it receives the stable version's live data (`save`, then `migrate`, as a reload does) and
//! both share the Vault. Calls are routed by the request key
//! ([`patch::with_key`](crate::patch::with_key)) with the bucketing of a patch rollout, so a
//! key that saw the canary at 10% still sees it at 50%; rules (any key predicate) can send
//! chosen keys to either version first; calls without a key go to a default. A
//! [`Pin`](crate::Pin) keeps the version its first call chose.
//!
//! Every step (start, a new percentage, promote, abort) publishes a new generation with one
//! atomic swap, so calls in flight finish in the version they started in. Promoting makes the
//! canary the only version, with its own state; aborting drops it and leaves the stable
//! version's state as it was.
//!
//! A [`gate`](CanaryBuilder::gate) ([`Probation`]) compares the two versions over windows and
//! moves the canary through its steps, promotes it, or aborts it on its own.
//!
//! ```no_run
//! # mod api { #[swapkit::interface] pub trait Pricing { fn price(&self, sku: u64) -> u64; } }
//! use std::time::Duration;
//! use swapkit::{patch::with_key, Probation, Swapper};
//!
//! let swapper = Swapper::new()?;
//! swapper.load_dir("plugins/")?;
//! let pricing = swapper.client::<dyn api::Pricing>()?;
//! swapper
//!     .canary("releases/pricing-2.1.0.so")
//!     .percent(1.0)
//!     .gate(Probation::new(Duration::from_secs(30)).steps([1.0, 10.0, 50.0]))
//!     .start()?;
//! // Each request runs under its user's key: 1% of users see 2.1.0, always the same ones.
//! let price = with_key("user-42", || pricing.price(7))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod gate;
pub(crate) mod route;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::LoadError;
use crate::patch::Key;
use crate::reload::Reloader;
use crate::status::CallCounts;
use crate::Probation;
use route::Rule;

/// One of the two versions of a plugin with a canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The version that served before the canary started.
    Stable = 0,
    /// The new version on trial.
    Canary = 1,
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Variant::Stable => "stable",
            Variant::Canary => "canary",
        })
    }
}

/// A canary being set up: made by [`Swapper::canary`](crate::Swapper::canary), started by
/// [`start`](Self::start).
#[must_use = "a canary starts only when `start` is called"]
pub struct CanaryBuilder<'s> {
    core: &'s Arc<Reloader>,
    pub(crate) artifact: PathBuf,
    pub(crate) percent: f64,
    pub(crate) without_key: Variant,
    pub(crate) rules: Vec<Rule>,
    pub(crate) gate: Option<Probation>,
}

impl<'s> CanaryBuilder<'s> {
    pub(crate) fn new(
        core: &'s Arc<Reloader>,
        artifact: PathBuf,
        gate: Option<Probation>,
    ) -> CanaryBuilder<'s> {
        CanaryBuilder {
            core,
            artifact,
            percent: 0.0,
            without_key: Variant::Stable,
            rules: vec![],
            gate,
        }
    }

    /// The sticky share of keys, in percent (0 to 100, to two decimals), that the canary
    /// serves. 0 by default: only rules send calls to it.
    pub fn percent(mut self, percent: f64) -> Self {
        self.percent = percent;
        self
    }

    /// Where calls made without a key go; the stable version by default.
    pub fn without_key(mut self, variant: Variant) -> Self {
        self.without_key = variant;
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
        self.rules.push(Rule {
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
        self.gate = Some(gate);
        self
    }

    /// Runs the canary without a gate, even if the swapper has a default one.
    pub fn manual(mut self) -> Self {
        self.gate = None;
        self
    }

    /// Loads the artifact (checked as any load is, signatures included), hands it the stable
    /// version's live data, runs the host's `before_publish` check on the new generation, and
    /// publishes it. On any error nothing changes.
    pub fn start(self) -> Result<CanaryReport, LoadError> {
        let core = self.core;
        core.start_canary(self)
    }
}

impl std::fmt::Debug for CanaryBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CanaryBuilder")
            .field("artifact", &self.artifact)
            .field("percent", &self.percent)
            .field("without_key", &self.without_key)
            .field("rules", &self.rules.len())
            .field("gate", &self.gate)
            .finish()
    }
}

/// What starting a canary did.
#[derive(Debug, Clone)]
pub struct CanaryReport {
    /// The generation that serves both versions.
    pub generation: u64,
    /// The plugin.
    pub plugin: String,
    /// The stable version.
    pub stable: String,
    /// The canary's version.
    pub canary: String,
    /// The share of keys it serves, in percent.
    pub percent: f64,
    /// From reading the artifact to publication.
    pub took: Duration,
}

/// A running canary, as [`Swapper::canary_status`](crate::Swapper::canary_status) sees it.
#[derive(Debug, Clone)]
pub struct CanaryStatus {
    /// The plugin.
    pub plugin: String,
    /// The share of keys the canary serves, in percent.
    pub percent: f64,
    /// Where calls without a key go.
    pub without_key: Variant,
    /// How many key rules come before the percentage.
    pub rules: usize,
    /// Time since it started.
    pub running_for: Duration,
    /// The stable version's calls since the canary started.
    pub stable: VersionStatus,
    /// The canary's calls since it started.
    pub canary: VersionStatus,
    /// Its gate, if it has one.
    pub gate: Option<GateStatus>,
}

/// One version's calls since a canary started.
#[derive(Debug, Clone)]
pub struct VersionStatus {
    /// Its version.
    pub version: String,
    /// Calls and failures.
    pub counts: CallCounts,
    /// Calls timed for the latency figures (a sample: see `docs::performance`).
    pub timed: u64,
    /// Median latency of the timed calls.
    pub p50: Option<Duration>,
    /// 99th percentile latency of the timed calls.
    pub p99: Option<Duration>,
}

/// Where a canary's gate is.
#[derive(Debug, Clone)]
pub struct GateStatus {
    /// The steps, in percent; promotion follows the last.
    pub steps: Vec<f64>,
    /// The step the canary is on, if it is on one.
    pub step: Option<usize>,
    /// Failed checks so far, and how many abort.
    pub failed_checks: (u32, u32),
    /// Time left in the current window.
    pub window_left: Duration,
    /// What the last check found.
    pub last_check: Option<String>,
}
