//! Operating a swapper: reload triggers (the API, a file watcher, a signal), coalesced so
//! that two reloads never run at once; swap counts; probation and auto-rollback; metrics;
//! and the admin socket. One background thread runs it all, started only when the builder
//! asks for one of these, and stopped when the [`Swapper`](crate::Swapper) is dropped.

mod admin;
mod metrics;
mod watch;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::LoadError;
use crate::history::RollbackTarget;
use crate::load::Source;
use crate::lock::{lock, wait, wait_timeout};
use crate::reload::{Observer, PublishedEvent, ReloadReport, Reloader, Verdict};
use crate::stats::Counts;
use crate::trigger::Trigger;
use crate::Probation;

/// What the builder asked for.
#[derive(Default)]
pub(crate) struct Config {
    pub admin: Option<PathBuf>,
    pub allow: Vec<u32>,
    /// How long an admin connection may stay silent (`None`: the default).
    pub idle: Option<Duration>,
    pub watch: Option<Duration>,
    pub signal: Option<i32>,
    pub probation: Option<Probation>,
    pub metrics: Option<Duration>,
}

impl Config {
    fn wanted(&self) -> bool {
        self.admin.is_some()
            || self.watch.is_some()
            || self.signal.is_some()
            || self.probation.is_some()
            || self.metrics.is_some()
    }
}

/// Counts of swaps, for status and metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct SwapCounts {
    pub published: u64,
    pub failed: u64,
    pub auto_rollbacks: u64,
    pub last_took: Option<Duration>,
    pub last_error: Option<String>,
}

/// A reload trigger that is armed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Armed {
    /// The admin socket's `reload` request.
    Admin,
    /// A signal, by name (`HUP`).
    Signal(String),
    /// The file watcher, on this directory.
    Watch(PathBuf),
}

impl std::fmt::Display for Armed {
    /// As the admin protocol's status reports it: `admin`, `signal:HUP`, `watch:/srv/plugins`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Armed::Admin => f.write_str("admin"),
            Armed::Signal(name) => write!(f, "signal:{name}"),
            Armed::Watch(dir) => write!(f, "watch:{}", dir.display()),
        }
    }
}

/// A generation on probation.
#[derive(Debug, Clone)]
pub(crate) struct OnProbation {
    pub generation: u64,
    /// The plugins its reload loaded: only their calls are judged.
    pub fresh: Vec<String>,
    pub until: Instant,
}

pub(crate) struct State {
    /// The trigger of the reload to run next, if one is due.
    pending: Option<Trigger>,
    /// Reloads the ops thread started, and finished.
    started: u64,
    finished: u64,
    last: Option<Result<ReloadReport, String>>,
    stop: bool,
    running: bool,
    pub counts: SwapCounts,
    pub probation: Option<OnProbation>,
    pub known_good: Option<u64>,
    pub watch: watch::WatchState,
    /// The reload triggers armed, for status.
    pub triggers: Vec<Armed>,
}

/// What ops shares between its threads; the reloader reports to it as its [`Observer`].
pub(crate) struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    policy: Option<Probation>,
    /// The notify watcher. Its callback takes `state`, never this lock.
    watcher: Mutex<watch::Watcher>,
    /// This, for the watcher's callback, which must not keep it alive.
    me: Weak<Shared>,
}

impl Shared {
    pub fn new(policy: Option<Probation>) -> Arc<Shared> {
        Arc::new_cyclic(|me| Shared {
            state: Mutex::new(State {
                pending: None,
                started: 0,
                finished: 0,
                last: None,
                stop: false,
                running: false,
                counts: SwapCounts::default(),
                probation: None,
                known_good: None,
                watch: Default::default(),
                triggers: vec![],
            }),
            cv: Condvar::new(),
            policy,
            watcher: Mutex::new(watch::Watcher::default()),
            me: me.clone(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Asks for a reload without waiting: the ops thread runs one soon, once for all the
    /// triggers that arrive before it starts.
    pub fn trigger(&self, origin: Trigger) {
        let mut state = self.lock();
        if state.pending.is_none() {
            tracing::info!(trigger = %origin, "reload requested");
            state.pending = Some(origin);
        } else {
            tracing::debug!(trigger = %origin, "reload already pending; coalesced");
        }
        self.cv.notify_all();
    }

    /// Asks for a reload and waits for one that started after the request: concurrent
    /// requests share a reload rather than queueing one each.
    pub fn request_reload(&self, origin: Trigger) -> Result<ReloadReport, String> {
        let mut state = self.lock();
        if !state.running {
            return Err("the swapper's ops thread is not running".into());
        }
        if state.pending.is_none() {
            state.pending = Some(origin);
        }
        let target = state.started + 1;
        self.cv.notify_all();
        while state.finished < target && !state.stop {
            state = wait(&self.cv, state);
        }
        state
            .last
            .clone()
            .unwrap_or_else(|| Err("the swapper is shutting down".into()))
    }

    /// Stops watching.
    fn unwatch(&self) {
        *lock(&self.watcher) = watch::Watcher::default();
    }

    /// The probation in progress, with its calls and failures so far.
    pub fn probation_counts(&self, core: &Reloader) -> Option<(OnProbation, Counts)> {
        let probation = self.lock().probation.clone()?;
        Some((probation.clone(), fresh_counts(core, &probation)?))
    }
}

impl Observer for Shared {
    /// Points the watcher, if one is configured, at `source`'s directory, on the caller's
    /// thread: a load watches its directory before reading it, so no change made after the
    /// read can be missed.
    fn source(&self, source: &Source) {
        let dir = {
            let mut state = self.lock();
            state.watch.set_source(source);
            state.watch.wanted_dir()
        };
        let Some(dir) = dir else { return };
        let mut watcher = lock(&self.watcher);
        if watcher.dir() != Some(dir.as_path()) {
            watcher.watch(&dir, self);
        }
    }

    /// Counts a failed load, reload or rollback.
    fn failed(&self, error: &LoadError) {
        let mut state = self.lock();
        state.counts.failed += 1;
        state.counts.last_error = Some(error.to_string());
        ::metrics::counter!("swapkit_reloads_total", "outcome" => "failed").increment(1);
    }

    /// Records a published swap, and puts it on probation if the policy judges it.
    fn published(&self, event: &PublishedEvent<'_>) -> Verdict {
        let PublishedEvent {
            generation,
            trigger,
            first,
            took,
            ..
        } = *event;
        ::metrics::counter!("swapkit_reloads_total", "outcome" => "published").increment(1);
        ::metrics::histogram!("swapkit_reload_duration_seconds", "trigger" => trigger.label())
            .record(took.as_secs_f64());
        ::metrics::gauge!("swapkit_generation").set(generation as f64);
        let mut state = self.lock();
        state.counts.published += 1;
        state.counts.last_took = Some(took);
        let judged = self
            .policy
            .as_ref()
            .filter(|_| !first && !event.fresh.is_empty() && !trigger.is_rollback());
        state.probation = judged.map(|policy| OnProbation {
            generation,
            fresh: event.fresh.clone(),
            until: Instant::now() + policy.window,
        });
        if state.probation.is_none() {
            return Verdict::KnownGood;
        }
        tracing::info!(generation, window = ?self.policy.as_ref().map(|p| p.window), "on probation");
        self.cv.notify_all();
        Verdict::Held
    }

    fn known_good(&self, generation: u64) {
        self.lock().known_good = Some(generation);
    }
}

/// The calls and failures of a probation's fresh plugins, if its generation is current.
fn fresh_counts(core: &Reloader, probation: &OnProbation) -> Option<Counts> {
    let guard = core.published.current().enter();
    let current = guard.get();
    if current.id != probation.generation {
        return None;
    }
    let mut sum = Counts::default();
    for p in current
        .plugins
        .iter()
        .filter(|p| probation.fresh.iter().any(|n| **n == *p.code.name))
    {
        sum += p.stats.counts();
    }
    Some(sum)
}

/// The background threads; dropped by [`Ops::stop`].
pub(crate) struct Ops {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    admin: Option<admin::Server>,
    signal: Option<signal_hook::iterator::Handle>,
}

impl Ops {
    /// Starts the ops thread, and the admin and signal threads, if `config` asks for any.
    pub fn start(
        core: &Arc<Reloader>,
        shared: Arc<Shared>,
        config: Config,
    ) -> Result<Option<Ops>, LoadError> {
        if !config.wanted() {
            return Ok(None);
        }
        let mut ops = Ops {
            shared: shared.clone(),
            threads: vec![],
            admin: None,
            signal: None,
        };
        {
            let mut state = shared.lock();
            state.running = true;
            state.watch.debounce = config.watch;
            if config.admin.is_some() {
                state.triggers.push(Armed::Admin);
            }
        }
        if let Some(signal) = config.signal {
            let name = signal_name(signal);
            // signal-hook panics on these; refuse them with an error instead.
            if signal_hook::consts::FORBIDDEN.contains(&signal) {
                return Err(LoadError::Ops {
                    what: "signal handler",
                    at: name,
                    source: "this signal cannot be handled (KILL, STOP, ILL, FPE, SEGV); use HUP or USR1".into(),
                });
            }
            let mut signals =
                signal_hook::iterator::Signals::new([signal]).map_err(|e| LoadError::Ops {
                    what: "signal handler",
                    at: name.clone(),
                    source: e.into(),
                })?;
            ops.signal = Some(signals.handle());
            let shared = shared.clone();
            shared.lock().triggers.push(Armed::Signal(name.clone()));
            ops.spawn("swapkit-signal", move || {
                for _ in signals.forever() {
                    shared.trigger(Trigger::Signal { name: name.clone() });
                }
            })?;
        }
        if let Some(path) = &config.admin {
            let mut allow = config.allow.clone();
            // SAFETY: getuid has no preconditions and cannot fail.
            allow.push(unsafe { libc::getuid() });
            let server = admin::Server::bind(
                path,
                allow,
                config.idle.unwrap_or(admin::IDLE),
                Arc::downgrade(core),
                shared.clone(),
            )?;
            let handle = server.spawn()?;
            ops.threads.push(handle);
            ops.admin = Some(server);
        }
        let weak = Arc::downgrade(core);
        let metrics = config.metrics;
        ops.spawn("swapkit-ops", move || run(weak, shared, metrics))?;
        Ok(Some(ops))
    }

    fn spawn(&mut self, name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), LoadError> {
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(|source| LoadError::Thread {
                what: "ops",
                source,
            })?;
        self.threads.push(handle);
        Ok(())
    }

    /// Stops every thread and waits for them; a reload in progress finishes first.
    pub fn stop(mut self) {
        {
            let mut state = self.shared.lock();
            state.stop = true;
            state.running = false;
            self.shared.cv.notify_all();
        }
        self.shared.unwatch();
        if let Some(handle) = self.signal.take() {
            handle.close();
        }
        if let Some(server) = self.admin.take() {
            server.stop();
        }
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            // The last swapper handle may be dropped on one of these threads (by a request
            // handler); it cannot wait for itself.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

fn signal_name(signal: i32) -> String {
    signal_hook::low_level::signal_name(signal)
        .map(|n| n.trim_start_matches("SIG").to_owned())
        .unwrap_or_else(|| signal.to_string())
}

/// The ops thread: runs pending reloads one at a time, turns settled file changes into a
/// reload, judges probation, and publishes metrics.
fn run(inner: Weak<Reloader>, shared: Arc<Shared>, metrics: Option<Duration>) {
    let mut next_metrics = Instant::now();
    let mut state = shared.lock();
    loop {
        if state.stop {
            return;
        }
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(1);

        if let Some(origin) = state.pending.take() {
            state.started += 1;
            let number = state.started;
            drop(state);
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let result = strong.reload(&origin).map_err(|e| {
                tracing::warn!(trigger = %origin, error = %e, "reload failed; the current generation keeps serving");
                e.to_string()
            });
            drop(strong);
            state = shared.lock();
            state.finished = number;
            state.last = Some(result);
            shared.cv.notify_all();
            continue;
        }

        match state.watch.settled(now) {
            watch::Settled::Reload => {
                state.pending = Some(Trigger::Watcher);
                continue;
            }
            watch::Settled::Wait(at) => wake = wake.min(at),
            watch::Settled::Idle => {}
        }

        if let Some(probation) = state.probation.clone() {
            drop(state);
            let Some(strong) = inner.upgrade() else {
                return;
            };
            judge(&strong, &shared, &probation);
            drop(strong);
            state = shared.lock();
            wake = wake.min(now + Duration::from_millis(50));
        }

        if let Some(interval) = metrics {
            if now >= next_metrics {
                drop(state);
                if let Some(strong) = inner.upgrade() {
                    metrics::publish(&strong);
                }
                next_metrics = now + interval;
                state = shared.lock();
            }
            wake = wake.min(next_metrics);
        }

        let timeout = wake.saturating_duration_since(Instant::now());
        state = wait_timeout(&shared.cv, state, timeout);
    }
}

/// Ends `probation` if its generation failed too often (rolling back) or its window passed
/// (marking it known-good).
fn judge(inner: &Reloader, shared: &Shared, probation: &OnProbation) {
    let Some(policy) = &shared.policy else { return };
    let still = |shared: &Shared| {
        let mut state = shared.lock();
        let same = state
            .probation
            .as_ref()
            .is_some_and(|p| p.generation == probation.generation);
        if same {
            state.probation = None;
        }
        same
    };
    let Some(counts) = fresh_counts(inner, probation) else {
        // Superseded meanwhile: its successor has a probation of its own.
        still(shared);
        return;
    };
    let failures = counts.failures();
    let rate = failures as f64 / counts.calls.max(1) as f64;
    if counts.calls >= policy.min_calls && rate > policy.max_failure_rate {
        if !still(shared) {
            return;
        }
        let reason = format!(
            "{failures} of {} calls failed ({:.1}%: {} errors, {} panics, {} traps), over the limit of {:.1}%",
            counts.calls,
            rate * 100.0,
            counts.errors,
            counts.panics,
            counts.traps,
            policy.max_failure_rate * 100.0
        );
        tracing::error!(generation = probation.generation, plugins = ?probation.fresh, %reason, "auto-rollback");
        match inner.rollback_to(&RollbackTarget::Previous, &Trigger::AutoRollback) {
            Ok(report) => {
                shared.lock().counts.auto_rollbacks += 1;
                ::metrics::counter!("swapkit_auto_rollbacks_total").increment(1);
                tracing::warn!(
                    from = probation.generation,
                    to = report.generation,
                    "auto-rollback published the previous selection"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "auto-rollback failed; the faulty generation keeps serving")
            }
        }
    } else if Instant::now() >= probation.until {
        if !still(shared) {
            return;
        }
        tracing::info!(
            generation = probation.generation,
            calls = counts.calls,
            failures,
            "probation passed"
        );
        inner.mark_known_good(probation.generation);
    }
}
