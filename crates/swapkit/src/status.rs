//! Status reports: the generations alive, their plugins and versions, the pins held, and the
//! generations that drained.

use std::time::{Duration, Instant};

use crate::backend::BackendKind;

/// A snapshot of a swapper.
#[derive(Debug, Clone)]
pub struct Status {
    /// The generation new calls and pins go to.
    pub current: GenerationStatus,
    /// Superseded generations still held by a pin or an in-flight call.
    pub draining: Vec<GenerationStatus>,
    /// The most recently retired generations, oldest first.
    pub drained: Vec<DrainedGeneration>,
    /// How many earlier selections a rollback can return to.
    pub history: usize,
}

/// One live generation.
#[derive(Debug, Clone)]
pub struct GenerationStatus {
    /// The generation's number; 0 is the empty generation a swapper starts with.
    pub id: u64,
    /// Current or draining.
    pub state: GenerationState,
    /// Time since it was published.
    pub age: Duration,
    /// Its plugins, dependencies first.
    pub plugins: Vec<PluginStatus>,
    /// Explicit pins held ([`Swapper::pin`](crate::Swapper::pin)).
    pub pin_count: usize,
    /// Labelled pins ([`Swapper::pin_labeled`](crate::Swapper::pin_labeled)).
    pub pins: Vec<PinInfo>,
    /// Calls in flight in it right now, through clients made by
    /// [`Swapper::client`](crate::Swapper::client).
    pub calls: usize,
    /// Strong references held outside the swapper: explicit pins and clients made from a pin.
    pub refs: usize,
}

/// Where a generation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationState {
    /// New pins and calls go to it.
    Current,
    /// Superseded; it retires when its last reference goes.
    Draining {
        /// Time since it was superseded.
        since: Duration,
        /// Whether that is past the drain deadline.
        overdue: bool,
    },
}

/// One plugin of a generation.
#[derive(Debug, Clone)]
pub struct PluginStatus {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The backend it runs on.
    pub backend: BackendKind,
    /// SHA-256 of the artifact, in hex.
    pub content_hash: String,
    /// The artifact's path, or `static:<crate>`.
    pub origin: String,
    /// The interfaces it exports.
    pub interfaces: Vec<String>,
    /// How many of their methods it serves through a direct lane (arguments passed as they
    /// are, no encoding). 0 for a plugin built before lanes: its calls all take the encoded
    /// path.
    pub lanes: usize,
    /// What calls into this instance did since it was loaded.
    pub counts: CallCounts,
}

/// Calls into one plugin instance through typed clients, and how many failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Calls made.
    pub calls: u64,
    /// Calls that failed with an error status or a result that did not decode.
    pub errors: u64,
    /// Calls that panicked.
    pub panics: u64,
    /// Calls that trapped, timed out or hit a resource limit (wasm).
    pub traps: u64,
}

/// A labelled pin.
#[derive(Debug, Clone)]
pub struct PinInfo {
    /// The label it was taken with.
    pub label: String,
    /// How long it has been held.
    pub held_for: Duration,
}

/// A generation that was retired: its last reference went, and its plugins were freed.
#[derive(Debug, Clone)]
pub struct DrainedGeneration {
    /// The generation's number.
    pub id: u64,
    /// Its plugins' names and versions.
    pub plugins: Vec<(String, String)>,
    /// Time from being superseded to retiring; `None` if it was never superseded (the swapper
    /// itself was dropped).
    pub drained_after: Option<Duration>,
    /// When it retired.
    pub at: Instant,
}

/// How many drained generations `Status`'s `Display` lists; the rest are counted.
const DRAINED_SHOWN: usize = 5;

impl std::fmt::Display for Status {
    /// A few lines for a log or a terminal:
    ///
    /// ```text
    /// generation 3 [current] in flight: 0 calls, 0 pins, 0 other refs
    ///   greeter 1.0.0 (native, 804c7b820f54…) calls=12 errors=0 panics=1 traps=0 /tmp/…/libgreeter.so
    /// drained generation 2 [greeter 2.0.0] 16.4µs after it was superseded
    /// ```
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for g in std::iter::once(&self.current).chain(&self.draining) {
            let state = match g.state {
                GenerationState::Current => "current".to_owned(),
                GenerationState::Draining { since, overdue } => {
                    format!(
                        "draining for {since:.1?}{}",
                        if overdue { " (OVERDUE)" } else { "" }
                    )
                }
            };
            writeln!(
                f,
                "generation {} [{state}] in flight: {} calls, {} pins, {} other refs",
                g.id, g.calls, g.pin_count, g.refs
            )?;
            for p in &g.plugins {
                let c = &p.counts;
                writeln!(
                    f,
                    "  {} {} ({}, {}…) calls={} errors={} panics={} traps={} {}",
                    p.name,
                    p.version,
                    p.backend,
                    &p.content_hash[..12],
                    c.calls,
                    c.errors,
                    c.panics,
                    c.traps,
                    p.origin
                )?;
            }
            for pin in &g.pins {
                writeln!(f, "  pinned by `{}` for {:.1?}", pin.label, pin.held_for)?;
            }
        }
        let skipped = self.drained.len().saturating_sub(DRAINED_SHOWN);
        if skipped > 0 {
            writeln!(f, "({skipped} earlier generations drained)")?;
        }
        for d in &self.drained[skipped..] {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for DrainedGeneration {
    /// `drained generation 7 [greeter 1.0.0] 1.2ms after it was superseded`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .plugins
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        write!(f, "drained generation {} [{}]", self.id, names.join(", "))?;
        if let Some(t) = self.drained_after {
            write!(f, " {t:.1?} after it was superseded")?;
        }
        Ok(())
    }
}
