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
//! A [`gate`](crate::CanaryBuilder::gate) ([`Probation`]) compares the two versions over windows and
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

use std::path::PathBuf;
use std::time::Duration;

use crate::route::Rule;
pub use crate::route::Variant;
use crate::status::CallCounts;
use crate::Probation;

/// What a [`CanaryBuilder`](crate::CanaryBuilder) asks for.
pub(crate) struct Plan {
    pub artifact: PathBuf,
    pub percent: f64,
    pub without_key: Variant,
    pub rules: Vec<Rule>,
    pub gate: Option<Probation>,
}

impl Plan {
    /// A canary of `artifact` at 0%, calls without a key to the stable version, judged by
    /// `gate` if there is one.
    pub fn new(artifact: PathBuf, gate: Option<Probation>) -> Plan {
        Plan {
            artifact,
            percent: 0.0,
            without_key: Variant::Stable,
            rules: vec![],
            gate,
        }
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
