//! Publishing generations: the current-generation cell, the ledger of superseded ones, and
//! the drain watchdog that reports a generation held past its deadline.
//!
//! This is the layer the call path reads ([`Current`]) and the reload transaction writes
//! ([`Published::publish`]); it knows nothing of artifacts, history or operations.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::backend::Instance;
use crate::error::{DrainTimeout, LoadError};
use crate::generation::{Generation, Ledger};
use crate::hazard::Current;
use crate::route::Route;
use crate::status::{DrainedGeneration, GenerationState, GenerationStatus, PluginStatus};

/// Called with the status of a generation still held past the drain deadline.
pub type OverdueHook = Arc<dyn Fn(&GenerationStatus) + Send + Sync>;

/// The current generation and the superseded ones still held.
pub(crate) struct Published {
    /// Shared with every [`Binding`](crate::Binding): the call path needs nothing else.
    current: Arc<Current>,
    ledger: Arc<Ledger>,
    drain_deadline: Duration,
}

impl Published {
    /// Starts with the empty generation 0, and a watchdog thread that reports generations
    /// held past `drain_deadline` (to tracing and `on_overdue`) until this is dropped.
    pub fn start(
        drain_deadline: Duration,
        on_overdue: Option<OverdueHook>,
    ) -> Result<Published, LoadError> {
        let ledger = Arc::new(Ledger::default());
        let current = Arc::new(Current::new(Arc::new(Generation::new(
            0,
            vec![],
            None,
            ledger.clone(),
        ))));
        let (watched, weak) = (ledger.clone(), Arc::downgrade(&current));
        std::thread::Builder::new()
            .name("swapkit-drain".into())
            .spawn(move || watchdog(watched, weak, drain_deadline, on_overdue))
            .map_err(|source| LoadError::Thread {
                what: "drain watchdog",
                source,
            })?;
        Ok(Published {
            current,
            ledger,
            drain_deadline,
        })
    }

    /// The cell calls read the current generation from.
    pub fn current(&self) -> &Arc<Current> {
        &self.current
    }

    /// The current generation's number.
    pub fn id(&self) -> u64 {
        self.current.enter().get().id
    }

    /// A generation of `plugins`, numbered `id`, that reports to this ledger when it retires;
    /// with `route`, its last plugin is a canary.
    pub fn generation(
        &self,
        id: u64,
        plugins: Vec<Arc<Instance>>,
        route: Option<Route>,
    ) -> Arc<Generation> {
        Arc::new(Generation::new(id, plugins, route, self.ledger.clone()))
    }

    /// Makes `next` current with one atomic swap, and returns the generation it superseded.
    /// Hand that to [`retire`](Self::retire) once everything that must happen while both
    /// are known is done.
    pub fn publish(&self, next: Arc<Generation>) -> Arc<Generation> {
        self.current.swap(next)
    }

    /// Lists `old` as draining; it retires (its plugins' `on_free` runs) when its last call,
    /// pin or client goes, which may be right here.
    pub fn retire(&self, old: Arc<Generation>) {
        self.ledger.retiring(&old);
        drop(old);
    }

    /// The current generation, then every superseded one still held.
    #[cfg(feature = "ops")]
    pub fn alive(&self) -> Vec<Arc<Generation>> {
        let mut alive = vec![self.current.load_full()];
        alive.extend(self.ledger.lock().alive());
        alive
    }

    /// The status of the current generation, of the draining ones, and the drained record.
    pub fn snapshot(
        &self,
    ) -> (
        GenerationStatus,
        Vec<GenerationStatus>,
        Vec<DrainedGeneration>,
    ) {
        let deadline = Some(self.drain_deadline);
        let current = self.current.load_full();
        let current_status = generation_status(&current, &self.current, true, deadline);
        drop(current);
        let (alive, drained) = {
            let state = self.ledger.lock();
            (state.alive(), state.drained.iter().cloned().collect())
        };
        // Statuses are taken, and the upgraded references dropped, outside the ledger lock.
        let draining = alive
            .iter()
            .map(|g| generation_status(g, &self.current, false, deadline))
            .collect();
        drop(alive);
        (current_status, draining, drained)
    }

    /// Waits until every superseded generation has retired, or `timeout` passes.
    pub fn wait_drained(&self, timeout: Duration) -> Result<(), DrainTimeout> {
        let start = Instant::now();
        let mut state = self.ledger.lock();
        loop {
            state.retiring.retain(|r| r.generation.strong_count() > 0);
            if state.retiring.is_empty() {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= timeout {
                let alive = state.alive();
                drop(state);
                let deadline = Some(self.drain_deadline);
                let held = alive
                    .iter()
                    .map(|g| generation_status(g, &self.current, false, deadline))
                    .collect();
                drop(alive);
                return Err(DrainTimeout { waited, held });
            }
            let step = (timeout - waited).min(Duration::from_millis(50));
            state = self.ledger.wait(state, step);
        }
    }
}

impl Drop for Published {
    /// Stops the watchdog.
    fn drop(&mut self) {
        self.ledger.close();
    }
}

/// Reports generations held past the drain deadline, once each, until the ledger closes.
fn watchdog(
    ledger: Arc<Ledger>,
    current: Weak<Current>,
    deadline: Duration,
    on_overdue: Option<OverdueHook>,
) {
    let mut state = ledger.lock();
    loop {
        if state.closed {
            return;
        }
        let now = Instant::now();
        let mut overdue = vec![];
        let mut next_wake = Duration::from_secs(1);
        for r in state.retiring.iter_mut().filter(|r| !r.reported) {
            let due = r.since + deadline;
            if due <= now {
                r.reported = true;
                overdue.push(r.generation.clone());
            } else {
                next_wake = next_wake.min(due - now);
            }
        }
        if overdue.is_empty() {
            state = ledger.wait(state, next_wake);
            continue;
        }
        // Reports are made outside the ledger lock: dropping the last reference to a
        // generation takes that lock.
        drop(state);
        let Some(current) = current.upgrade() else {
            return;
        };
        for weak in overdue {
            let Some(generation) = weak.upgrade() else {
                continue;
            };
            let report = generation_status(&generation, &current, false, Some(deadline));
            drop(generation);
            let pins: Vec<&str> = report.pins.iter().map(|p| p.label.as_str()).collect();
            tracing::warn!(
                generation = report.id,
                calls = report.calls,
                pins = ?pins,
                refs = report.refs,
                "generation still held past the drain deadline of {deadline:?}"
            );
            if let Some(hook) = &on_overdue {
                hook(&report);
            }
        }
        drop(current);
        state = ledger.lock();
    }
}

/// The status of `g`, as `owner` sees it; `current` says whether it is the current one.
fn generation_status(
    g: &Arc<Generation>,
    owner: &Current,
    current: bool,
    deadline: Option<Duration>,
) -> GenerationStatus {
    // Ours, the swapper's pointer if it is current, and the retiring list's if it is on it.
    let internal = 1 + usize::from(current) + usize::from(owner.is_retiring(g));
    let state = match (current, g.superseded()) {
        (false, Some(t)) => {
            let since = t.elapsed();
            GenerationState::Draining {
                since,
                overdue: deadline.is_some_and(|d| since > d),
            }
        }
        _ => GenerationState::Current,
    };
    GenerationStatus {
        id: g.id,
        state,
        age: g.created.elapsed(),
        plugins: g
            .plugins
            .iter()
            .map(|p| PluginStatus {
                name: p.code.name.to_string(),
                version: p.code.version.to_string(),
                backend: p.code.backend,
                content_hash: crate::backend::hex(&p.code.content_hash),
                origin: p.code.origin.clone(),
                interfaces: p
                    .code
                    .manifest
                    .interfaces
                    .iter()
                    .map(|i| i.name.clone())
                    .collect(),
                lanes: p.code.lanes.count(),
                counts: p.stats.counts(),
            })
            .collect(),
        pin_count: g.pin_count(),
        pins: g.pin_labels(),
        calls: owner.calls_in(g),
        refs: Arc::strong_count(g).saturating_sub(internal),
    }
}
