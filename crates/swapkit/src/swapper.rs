//! The Swapper: owns the current generation and the history, loads, reloads, rolls back and
//! retires.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use swapkit_abi::{Interface, PluginHeader};

use crate::backend::native::{NativeLoader, EXTENSION};
use crate::backend::wasm::{WasmLimits, WasmLoader};
use crate::backend::{statics, Code, Instance};
use crate::call::{target, Binding, Pin};
use crate::error::{DrainTimeout, InterfaceMismatch, LoadError};
use crate::generation::{Generation, Ledger};
use crate::hazard::Current;
use crate::history::{self, KeptSelection, RollbackTarget, Selection};
use crate::log::LogSink;
use crate::ops::{self, Probation};
use crate::persist::StateDir;
use crate::status::{generation_status, Status};
use crate::trigger::Trigger;
use crate::{plan, services, Vault};

/// Called with the status of a generation still held past the drain deadline.
pub type OverdueHook = Arc<dyn Fn(&crate::GenerationStatus) + Send + Sync>;

/// Where a reload reads its artifacts from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Dir(PathBuf),
    Files(Vec<PathBuf>),
}

/// What a successful load, reload or rollback did.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    /// The generation now current.
    pub generation: u64,
    /// Plugins given a new instance (`on_load` and `on_init` ran), as `(name, version)`.
    pub loaded: Vec<(String, String)>,
    /// Plugins whose artifact was unchanged, carried over with their instance.
    pub reused: Vec<(String, String)>,
    /// Time from the start of the reload (reading the artifacts) to publication of the new
    /// generation.
    pub took: Duration,
}

/// Interfaces the host uses: name to `(hash, signature)`.
type Registry = HashMap<&'static str, (u64, &'static str)>;

impl ReloadState {
    /// The generation the current selection was published as.
    pub(crate) fn selection_generation(&self) -> u64 {
        self.selection.generation
    }
}

pub(crate) struct ReloadState {
    source: Option<Source>,
    /// Earlier selections, newest last; the current one is not in here.
    history: VecDeque<Selection>,
    /// The current selection.
    selection: Selection,
    next_id: u64,
}

pub(crate) struct Inner {
    pub(crate) current: Current,
    ledger: Arc<Ledger>,
    interfaces: Mutex<Registry>,
    reload: Mutex<ReloadState>,
    native: Option<NativeLoader>,
    /// Made on the first wasm artifact, so hosts without wasm plugins pay nothing for it.
    wasm: Mutex<Option<Arc<WasmLoader>>>,
    wasm_config: (WasmLimits, Option<PathBuf>),
    pub(crate) sink: Option<LogSink>,
    pub(crate) vault: Vault,
    drain_deadline: Duration,
    history_len: usize,
    /// Where artifacts and the known-good selection persist, if anywhere.
    state_dir: Option<StateDir>,
    /// Reload triggers, swap counts and probation, shared with the ops thread.
    pub(crate) ops: Arc<ops::Shared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ledger.close();
    }
}

/// Builds a [`Swapper`].
///
/// ```
/// use std::time::Duration;
/// let swapper = swapkit::Swapper::builder()
///     .drain_deadline(Duration::from_secs(5))
///     .history(4)
///     .build()
///     .unwrap();
/// assert_eq!(swapper.generation(), 0);
/// ```
pub struct SwapperBuilder {
    statics: Vec<&'static PluginHeader>,
    interfaces: Vec<(&'static str, u64, &'static str)>,
    sink: Option<LogSink>,
    on_overdue: Option<OverdueHook>,
    drain_deadline: Duration,
    history_len: usize,
    scratch: Option<PathBuf>,
    wasm_limits: WasmLimits,
    wasm_cache: Option<PathBuf>,
    vault: Option<Vault>,
    state_dir: Option<PathBuf>,
    ops: ops::Config,
}

impl SwapperBuilder {
    /// Declares an interface the host uses, so that every load checks plugins against its
    /// hash. [`Swapper::client`] declares it too; declare it here when plugins are loaded
    /// before the first client is made.
    pub fn interface<I: Interface + ?Sized>(mut self) -> Self {
        self.interfaces.push((I::NAME, I::HASH, I::SIGNATURE));
        self
    }

    /// Registers a plugin linked into the host (the static backend). A swapper with static
    /// plugins loads them in [`build`](Self::build) and refuses to reload or roll back.
    ///
    /// Pass the plugin crate's `SWAPKIT_PLUGIN` static: `.static_plugin(&my_plugin::SWAPKIT_PLUGIN)`.
    pub fn static_plugin(mut self, header: &'static PluginHeader) -> Self {
        self.statics.push(header);
        self
    }

    /// Receives every log line plugins write, besides the `tracing` event each one becomes.
    pub fn log_sink(mut self, sink: impl Fn(&crate::GuestLog<'_>) + Send + Sync + 'static) -> Self {
        self.sink = Some(Arc::new(sink));
        self
    }

    /// How long a superseded generation may stay held before it is reported (default 30 s).
    /// Reporting never frees it: a generation retires only when its last reference goes.
    pub fn drain_deadline(mut self, deadline: Duration) -> Self {
        self.drain_deadline = deadline;
        self
    }

    /// Called once for each generation held past the drain deadline, besides a `tracing`
    /// warning.
    pub fn on_overdue(
        mut self,
        hook: impl Fn(&crate::GenerationStatus) + Send + Sync + 'static,
    ) -> Self {
        self.on_overdue = Some(Arc::new(hook));
        self
    }

    /// How many earlier selections to keep for rollback (default 8).
    pub fn history(mut self, len: usize) -> Self {
        self.history_len = len;
        self
    }

    /// Where to put the private copies native libraries are loaded from (default: the
    /// system's temporary directory).
    pub fn scratch_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.scratch = Some(dir.into());
        self
    }

    /// Limits and pool settings for wasm plugins (default: [`WasmLimits::default`]).
    pub fn wasm_limits(mut self, limits: WasmLimits) -> Self {
        self.wasm_limits = limits;
        self
    }

    /// Where compiled wasm modules are cached across loads and restarts (default:
    /// `$XDG_CACHE_HOME/swapkit/wasm`, or `~/.cache/swapkit/wasm`).
    pub fn wasm_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.wasm_cache = Some(dir.into());
        self
    }

    /// Shares this Vault with the plugins, instead of a new empty one: for state the host
    /// set up before the swapper, or kept from another swapper.
    pub fn vault(mut self, vault: Vault) -> Self {
        self.vault = Some(vault);
        self
    }

    /// Persists every artifact loaded, and the last known-good selection, in `dir`, so that
    /// [`Swapper::resume`] starts a restarted host with it. A selection becomes known-good
    /// when it is published, or, with [`auto_rollback`](Self::auto_rollback), when its
    /// probation ends without a rollback.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Serves the admin protocol ([`swapkit_admin`]) on a Unix socket at `path`, made with
    /// mode 0600, to peers whose uid is the host's own or on
    /// [`admin_allow_uid`](Self::admin_allow_uid). Every request is logged with the peer's
    /// uid and pid. The socket is removed when the swapper is dropped.
    pub fn admin_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.ops.admin = Some(path.into());
        self
    }

    /// Lets peers running as `uid` use the admin socket too (the socket file's mode must
    /// also let them open it).
    pub fn admin_allow_uid(mut self, uid: u32) -> Self {
        self.ops.allow.push(uid);
        self
    }

    /// Reloads when the directory given to [`Swapper::load_dir`] changes, once no change has
    /// come for `debounce`. Files still being written are waited for: publish an artifact by
    /// writing it under a hidden or `.tmp` name and renaming it into place (an atomic
    /// rename), or by a write that closes the file (`cp`). On Linux a file is complete when
    /// it is closed or renamed in; elsewhere only the debounce applies.
    pub fn watch(mut self, debounce: Duration) -> Self {
        self.ops.watch = Some(debounce);
        self
    }

    /// Reloads when the process receives `signal` (for example
    /// `signal_hook::consts::SIGHUP`). Signals that arrive during a reload are coalesced
    /// into one more reload.
    pub fn reload_on_signal(mut self, signal: i32) -> Self {
        self.ops.signal = Some(signal);
        self
    }

    /// Puts every reload on probation: if, within the window, the plugins it loaded fail
    /// more than the policy allows, the swapper rolls back on its own and logs why. See
    /// [`Probation`].
    pub fn auto_rollback(mut self, probation: Probation) -> Self {
        self.ops.probation = Some(probation);
        self
    }

    /// Publishes call counts, failures, generations alive and pins held through the
    /// `metrics` facade every `interval` (reload durations are recorded as they happen).
    /// Counting itself is always on, and per-thread: the call path writes no shared counter.
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.ops.metrics = Some(interval);
        self
    }

    /// Builds the swapper, loading the static plugins if any were registered.
    pub fn build(self) -> Result<Swapper, LoadError> {
        let ledger = Arc::new(Ledger::default());
        let native = if self.statics.is_empty() {
            let loader = NativeLoader::new(self.scratch.as_deref()).map_err(|source| {
                LoadError::Scratch {
                    path: PathBuf::new(),
                    scratch: self.scratch.clone().unwrap_or_else(std::env::temp_dir),
                    source,
                }
            })?;
            Some(loader)
        } else {
            None
        };
        let mut registry = Registry::new();
        for (name, hash, sig) in &self.interfaces {
            registry.insert(name, (*hash, sig));
        }
        let state_dir = match &self.state_dir {
            Some(dir) => Some(StateDir::open(dir).map_err(|e| LoadError::Ops {
                what: "state directory",
                at: dir.display().to_string(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        let inner = Arc::new(Inner {
            current: Current::new(Arc::new(Generation::new(0, vec![], ledger.clone()))),
            ledger: ledger.clone(),
            interfaces: Mutex::new(registry),
            reload: Mutex::new(ReloadState {
                source: None,
                history: VecDeque::new(),
                selection: Selection::default(),
                next_id: 1,
            }),
            native,
            wasm: Mutex::new(None),
            wasm_config: (
                self.wasm_limits,
                self.wasm_cache.or_else(default_wasm_cache),
            ),
            sink: self.sink,
            vault: self.vault.unwrap_or_default(),
            drain_deadline: self.drain_deadline,
            history_len: self.history_len,
            state_dir,
            ops: ops::Shared::new(self.ops.probation.clone()),
        });
        let deadline = self.drain_deadline;
        let on_overdue = self.on_overdue;
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("swapkit-drain".into())
            .spawn(move || watch(ledger, weak, deadline, on_overdue))
            .map_err(|source| LoadError::Thread {
                what: "drain watchdog",
                source,
            })?;
        let ops = ops::Ops::start(&inner, self.ops)?;
        let swapper = Swapper { inner, ops };
        if !self.statics.is_empty() {
            let codes = self
                .statics
                .into_iter()
                .map(statics::code)
                .collect::<Result<Vec<_>, _>>()?;
            let mut state = swapper.inner.lock_reload();
            let report = swapper
                .inner
                .install(&mut state, codes, &Trigger::Load, Instant::now());
            swapper.inner.ops.settle(report)?;
        }
        Ok(swapper)
    }
}

/// Owns the current generation of plugins and swaps it.
///
/// Cheap to share: wrap it in an `Arc`, or hand out clients, which keep what they need alive.
///
/// Example: load a directory, call, swap, roll back.
///
/// ```no_run
/// # mod api { #[swapkit::interface] pub trait Greeter { fn greet(&self, name: &str) -> String; } }
/// let swapper = swapkit::Swapper::new()?;
/// swapper.load_dir("plugins/")?;
/// let greeter = swapper.client::<dyn api::Greeter>()?;
/// println!("{}", greeter.greet("world")?);
/// swapper.reload()?;   // picks up rebuilt artifacts; calls in flight finish on the old code
/// swapper.rollback()?; // back to the previous selection
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Swapper {
    inner: Arc<Inner>,
    /// The background threads: triggers, the admin socket, probation, metrics.
    ops: Option<ops::Ops>,
}

impl Drop for Swapper {
    fn drop(&mut self) {
        if let Some(ops) = self.ops.take() {
            ops.stop();
        }
    }
}

impl Swapper {
    /// A swapper for native plugins, with default settings.
    pub fn new() -> Result<Swapper, LoadError> {
        Swapper::builder().build()
    }

    /// Starts a [`SwapperBuilder`].
    pub fn builder() -> SwapperBuilder {
        SwapperBuilder {
            statics: vec![],
            interfaces: vec![],
            sink: None,
            on_overdue: None,
            drain_deadline: Duration::from_secs(30),
            history_len: 8,
            scratch: None,
            wasm_limits: WasmLimits::default(),
            wasm_cache: None,
            vault: None,
            state_dir: None,
            ops: ops::Config::default(),
        }
    }

    /// The current-generation cell, for call paths outside this module.
    pub(crate) fn current(&self) -> &Current {
        &self.inner.current
    }

    /// The Vault the host and every generation share: it outlives every swap and rollback.
    pub fn vault(&self) -> &Vault {
        &self.inner.vault
    }

    /// Loads every artifact in `dir` (files ending in the platform's library extension) as
    /// one new generation, and makes `dir` the source of later [`reload`](Self::reload)s.
    pub fn load_dir(&self, dir: impl AsRef<Path>) -> Result<ReloadReport, LoadError> {
        self.load_from(Source::Dir(dir.as_ref().to_owned()))
    }

    /// Loads exactly these artifacts as one new generation, and makes them the source of
    /// later [`reload`](Self::reload)s.
    pub fn load_files<P: AsRef<Path>>(
        &self,
        files: impl IntoIterator<Item = P>,
    ) -> Result<ReloadReport, LoadError> {
        self.load_from(Source::Files(
            files.into_iter().map(|p| p.as_ref().to_owned()).collect(),
        ))
    }

    /// Reads the source again and publishes a new generation. Plugins whose artifact content
    /// is unchanged keep their instance; the others are loaded, then initialised, in
    /// dependency order. On any error nothing changes and the current generation keeps serving.
    pub fn reload(&self) -> Result<ReloadReport, LoadError> {
        self.inner.reload(&Trigger::ApiReload)
    }

    /// How many wasm modules this swapper compiled, rather than read from its compile cache
    /// or reused from a loaded generation.
    pub fn wasm_compiles(&self) -> usize {
        let loader = self.inner.wasm.lock().unwrap_or_else(|e| e.into_inner());
        loader.as_ref().map_or(0, |l| l.compiles())
    }

    /// The shared state, for modules that extend the swapper.
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    fn load_from(&self, source: Source) -> Result<ReloadReport, LoadError> {
        let mut state = self.inner.lock_reload();
        // Watch before reading, so that nothing published after the read is missed.
        self.inner.ops.watch_source(&source);
        let report = self.inner.reload_from(&mut state, &source, &Trigger::Load);
        let report = self.inner.ops.settle(report);
        if report.is_err() {
            if let Some(previous) = &state.source {
                self.inner.ops.watch_source(previous);
            }
        }
        let report = report?;
        state.source = Some(source);
        Ok(report)
    }

    /// Starts from the last known-good selection in the [state
    /// directory](SwapperBuilder::state_dir) if there is one, and from `dir` otherwise;
    /// either way `dir` becomes the source of later reloads. A persisted selection that
    /// cannot be read or loaded is logged and skipped, so a host always comes up if `dir`
    /// loads.
    pub fn resume(&self, dir: impl AsRef<Path>) -> Result<ReloadReport, LoadError> {
        let dir = dir.as_ref();
        self.inner.ops.watch_source(&Source::Dir(dir.to_owned()));
        let persisted = self.inner.state_dir.as_ref().map(|s| s.load());
        if let Some(Ok(Some((known, paths)))) = persisted {
            let generation = known.generation;
            match self.load_files(&paths) {
                Ok(report) => {
                    tracing::info!(
                        from_generation = generation,
                        generation = report.generation,
                        "resumed the last known-good selection"
                    );
                    self.inner.lock_reload().source = Some(Source::Dir(dir.to_owned()));
                    return Ok(report);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the last known-good selection does not load; starting from {}", dir.display())
                }
            }
        } else if let Some(Err(e)) = persisted {
            tracing::warn!(error = %e, "the last known-good selection is unreadable; starting from {}", dir.display());
        }
        self.load_dir(dir)
    }

    /// Publishes the previous selection again, as a new generation with fresh instances of
    /// the plugins that differ. Works even if the files on disk were replaced since.
    pub fn rollback(&self) -> Result<ReloadReport, LoadError> {
        self.inner
            .rollback_to(&RollbackTarget::Previous, &Trigger::ApiRollback)
    }

    /// Publishes the newest kept selection that `target` names (see [`RollbackTarget`]).
    /// The selection rolled back from is kept, so a later `rollback_to` can go forward again.
    pub fn rollback_to(&self, target: &RollbackTarget) -> Result<ReloadReport, LoadError> {
        self.inner.rollback_to(target, &Trigger::ApiRollback)
    }

    /// The selections kept for rollback, newest first.
    pub fn history(&self) -> Vec<KeptSelection> {
        self.inner.kept()
    }

    /// A typed client for interface `I`: each call runs in the generation current when it
    /// starts. Declares `I`, so later loads check plugins against its hash.
    ///
    /// Fails if the current generation exports an interface of this name with another hash.
    pub fn client<I: Interface + ?Sized>(&self) -> Result<I::Client<Binding>, LoadError> {
        self.inner.declare::<I>()?;
        Ok(I::client(Binding::new(
            self.inner.clone(),
            target::<I>(None),
        )))
    }

    /// Like [`client`](Self::client), for the plugin named `plugin`, when several plugins
    /// export `I`.
    pub fn client_of<I: Interface + ?Sized>(
        &self,
        plugin: &str,
    ) -> Result<I::Client<Binding>, LoadError> {
        self.inner.declare::<I>()?;
        Ok(I::client(Binding::new(
            self.inner.clone(),
            target::<I>(Some(plugin)),
        )))
    }

    /// Pins the current generation for a unit of work. See [`Pin`].
    pub fn pin(&self) -> Pin {
        Pin::new(self.inner.current.load_full(), None)
    }

    /// Pins the current generation, with a label that drain reports show while it is held.
    pub fn pin_labeled(&self, label: impl Into<String>) -> Pin {
        Pin::new(self.inner.current.load_full(), Some(label.into()))
    }

    /// The current generation's number: 0 before the first load, then one more per swap.
    pub fn generation(&self) -> u64 {
        self.inner.current.enter().get().id
    }

    /// A snapshot of the generations alive and recently drained.
    pub fn status(&self) -> Status {
        self.inner.status()
    }

    /// Waits until every superseded generation has retired, or `timeout` passes. On timeout,
    /// the error lists the generations still held and their labelled pins.
    pub fn wait_drained(&self, timeout: Duration) -> Result<(), DrainTimeout> {
        let start = Instant::now();
        let mut state = self.inner.ledger.lock();
        loop {
            state.retiring.retain(|r| r.generation.strong_count() > 0);
            if state.retiring.is_empty() {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= timeout {
                let alive = state.alive();
                drop(state);
                let deadline = Some(self.inner.drain_deadline);
                let held = alive
                    .iter()
                    .map(|g| generation_status(g, &self.inner.current, false, deadline))
                    .collect();
                drop(alive);
                return Err(DrainTimeout { waited, held });
            }
            state = self
                .inner
                .ledger
                .wait(state, (timeout - waited).min(Duration::from_millis(50)));
        }
    }
}

impl std::fmt::Debug for Swapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swapper")
            .field("generation", &self.generation())
            .finish()
    }
}

impl Inner {
    /// Reads and checks one artifact, outside any generation.
    pub(crate) fn load_code(&self, path: &Path) -> Result<Arc<Code>, LoadError> {
        let native = self.native.as_ref().ok_or(LoadError::StaticMode)?;
        self.load_artifact(native, path)
    }

    /// The selections kept for rollback, newest first.
    pub(crate) fn kept(&self) -> Vec<KeptSelection> {
        let state = self.lock_reload();
        state.history.iter().rev().map(Selection::kept).collect()
    }

    /// The current generation, then every superseded one still held.
    pub(crate) fn alive_generations(&self) -> Vec<Arc<Generation>> {
        let mut alive = vec![self.current.load_full()];
        let retiring = self.ledger.lock().alive();
        alive.extend(retiring);
        alive
    }

    pub(crate) fn status(&self) -> Status {
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
        let history = self.lock_reload().history.len();
        Status {
            current: current_status,
            draining,
            drained,
            history,
        }
    }

    pub(crate) fn lock_reload(&self) -> MutexGuard<'_, ReloadState> {
        self.reload.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the source again and publishes a new generation; `trigger` is what asked, for
    /// logs.
    pub(crate) fn reload(&self, trigger: &Trigger) -> Result<ReloadReport, LoadError> {
        let mut state = self.lock_reload();
        if self.native.is_none() {
            return Err(LoadError::StaticMode);
        }
        let source = state.source.clone().ok_or(LoadError::NoSource)?;
        let report = self.reload_from(&mut state, &source, trigger);
        self.ops.settle(report)
    }

    /// Publishes the kept selection `target` names. `Previous` drops the rolled-back-from
    /// selection as well, so that history reads as if the last swap never happened.
    pub(crate) fn rollback_to(
        &self,
        target: &RollbackTarget,
        trigger: &Trigger,
    ) -> Result<ReloadReport, LoadError> {
        let mut state = self.lock_reload();
        if self.native.is_none() {
            return Err(LoadError::StaticMode);
        }
        let kept: Vec<&Selection> = state.history.iter().collect();
        let index = history::find(&kept, target);
        let index = self.ops.settle(index)?;
        let chosen = state.history[index].clone();
        let report = self.install(&mut state, chosen.codes, trigger, Instant::now());
        let report = self.ops.settle(report)?;
        // `install` pushed the rolled-back-from selection last; the one returned to is now
        // current, so it leaves the history.
        if let Some(i) = state
            .history
            .iter()
            .position(|s| s.generation == chosen.generation)
        {
            state.history.remove(i);
        }
        if *target == RollbackTarget::Previous {
            state.history.pop_back();
        }
        Ok(report)
    }

    fn declare<I: Interface + ?Sized>(&self) -> Result<(), LoadError> {
        let guard = self.current.enter();
        let current = guard.get();
        if let Some((inst, i)) = current.exported(I::NAME) {
            let decl = &inst.code.manifest.interfaces[i];
            if decl.hash != I::HASH {
                return Err(interface_mismatch(&inst.code, decl, I::HASH, I::SIGNATURE));
            }
        }
        let mut registry = self.interfaces.lock().unwrap_or_else(|e| e.into_inner());
        registry.insert(I::NAME, (I::HASH, I::SIGNATURE));
        Ok(())
    }

    fn reload_from(
        &self,
        state: &mut ReloadState,
        source: &Source,
        trigger: &Trigger,
    ) -> Result<ReloadReport, LoadError> {
        let start = Instant::now();
        let native = self.native.as_ref().ok_or(LoadError::StaticMode)?;
        let _span = tracing::info_span!("reload", trigger = %trigger, source = ?source).entered();
        let paths = match source {
            Source::Files(files) => files.clone(),
            Source::Dir(dir) => list_artifacts(dir)?,
        };
        let codes = paths
            .iter()
            .map(|p| self.load_artifact(native, p))
            .collect::<Result<Vec<_>, _>>()?;
        self.install(state, codes, trigger, start)
    }

    /// Reads one artifact and loads it through the backend its content calls for: a wasm
    /// module (it starts with `\0asm`) or a native library.
    fn load_artifact(&self, native: &NativeLoader, path: &Path) -> Result<Arc<Code>, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.into(),
            source,
        })?;
        if bytes.is_empty() {
            return Err(LoadError::Empty { path: path.into() });
        }
        let is_wasm = bytes.starts_with(b"\0asm")
            || path.extension().and_then(|e| e.to_str()) == Some("wasm");
        let _span =
            tracing::debug_span!("load", path = %path.display(), bytes = bytes.len()).entered();
        let kept = self.state_dir.as_ref().map(|_| bytes.clone());
        let code = if is_wasm {
            self.wasm_loader()?.load(path, bytes)?
        } else {
            native.load(path, bytes)?
        };
        if let (Some(dir), Some(bytes)) = (&self.state_dir, kept) {
            if let Err(e) = dir.keep(&code, &bytes) {
                tracing::warn!(error = %e, dir = %dir.path().display(), "cannot keep a copy of {path:?} in the state directory; a restart may not find it");
            }
        }
        Ok(code)
    }

    /// The wasm engine, made on first use.
    pub(crate) fn wasm_loader(&self) -> Result<Arc<WasmLoader>, LoadError> {
        let mut slot = self.wasm.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(loader) = &*slot {
            return Ok(loader.clone());
        }
        let (limits, cache) = self.wasm_config.clone();
        let loader = Arc::new(WasmLoader::new(limits, cache)?);
        *slot = Some(loader.clone());
        Ok(loader)
    }

    /// Checks `codes` as a set, builds the new generation and publishes it.
    fn install(
        &self,
        state: &mut ReloadState,
        codes: Vec<Arc<Code>>,
        trigger: &Trigger,
        start: Instant,
    ) -> Result<ReloadReport, LoadError> {
        let codes = plan::order(codes)?;
        self.check_interfaces(&codes)?;

        let current = self.current.load_full();
        let mut instances: Vec<Arc<Instance>> = Vec::with_capacity(codes.len());
        let mut fresh = vec![];
        let mut report = ReloadReport {
            generation: 0,
            loaded: vec![],
            reused: vec![],
            took: Duration::ZERO,
        };
        let id = state.next_id;
        let built = (|| {
            for code in &codes {
                let named = (code.name.to_string(), code.version.to_string());
                let same = current
                    .plugins
                    .iter()
                    .find(|p| p.code.content_hash == code.content_hash && p.code.name == code.name);
                if let Some(existing) = same {
                    instances.push(existing.clone());
                    report.reused.push(named);
                } else {
                    fresh.push(instances.len());
                    // Hooks see the plugins loaded so far (their dependencies) as their
                    // generation.
                    let loaded = {
                        let _scope = services::enter(&instances, id);
                        Instance::load(code.clone(), self.sink.clone(), self.vault.clone())?
                    };
                    instances.push(Arc::new(loaded));
                    report.loaded.push(named);
                }
            }
            // Live data: each new instance receives what its predecessor saves, between
            // on_load and on_init. The predecessor keeps its own state and keeps serving.
            for &i in &fresh {
                let name = &instances[i].code.name;
                let Some(old) = current.plugins.iter().find(|p| p.code.name == *name) else {
                    continue;
                };
                let saved = {
                    let _scope = services::enter(&current.plugins, current.id);
                    old.save()?
                };
                if let Some(data) = saved {
                    let _scope = services::enter(&instances, id);
                    instances[i].migrate(&data)?;
                }
            }
            for &i in &fresh {
                let _scope = services::enter(&instances, id);
                instances[i].init()?;
            }
            Ok::<(), LoadError>(())
        })();
        drop(current);
        if let Err(e) = built {
            // Free what was built, in reverse dependency order; reused instances are only
            // released. Nothing was published.
            while let Some(inst) = instances.pop() {
                drop(inst);
            }
            tracing::warn!(error = %e, "{trigger} aborted; the current generation keeps serving");
            return Err(e);
        }

        state.next_id += 1;
        let generation = Arc::new(Generation::new(id, instances, self.ledger.clone()));
        let old = self.current.swap(generation);
        report.generation = id;
        report.took = start.elapsed();
        let selection = Selection {
            generation: id,
            codes,
        };
        let previous = std::mem::replace(&mut state.selection, selection);
        if old.id != 0 {
            state.history.push_back(previous);
            while state.history.len() > self.history_len {
                state.history.pop_front();
            }
        }
        tracing::info!(generation = id, took = ?report.took, loaded = ?report.loaded, reused = ?report.reused, "{trigger}: published");
        let fresh_names: Vec<String> = report.loaded.iter().map(|(n, _)| n.clone()).collect();
        let probation = self
            .ops
            .published(id, fresh_names, trigger, old.id == 0, report.took);
        if !probation {
            self.mark_known_good(state);
        }
        self.ledger.retiring(&old);
        // If nothing holds the old generation, it retires right here, after publication.
        drop(old);
        Ok(report)
    }

    /// Persists the current selection as the one a restarted host starts with, and prunes
    /// kept artifacts that neither it nor the history needs.
    pub(crate) fn mark_known_good(&self, state: &ReloadState) {
        let generation = state.selection.generation;
        self.ops.known_good(generation);
        let Some(dir) = &self.state_dir else { return };
        if let Err(e) = dir.save(generation, &state.selection.codes) {
            tracing::error!(error = %e, dir = %dir.path().display(), generation, "cannot persist the known-good selection; a restart keeps the previous one");
            return;
        }
        let keep = std::iter::once(&state.selection)
            .chain(&state.history)
            .flat_map(|s| s.codes.iter().map(|c| c.content_hash))
            .collect();
        dir.prune(&keep);
        tracing::debug!(generation, "known-good selection persisted");
    }

    fn check_interfaces(&self, codes: &[Arc<Code>]) -> Result<(), LoadError> {
        let registry = self.interfaces.lock().unwrap_or_else(|e| e.into_inner());
        for code in codes {
            for decl in &code.manifest.interfaces {
                if let Some(&(hash, signature)) = registry.get(decl.name.as_str()) {
                    if hash != decl.hash {
                        return Err(interface_mismatch(code, decl, hash, signature));
                    }
                }
            }
        }
        Ok(())
    }
}

fn interface_mismatch(
    code: &Code,
    decl: &swapkit_abi::InterfaceDecl,
    expected: u64,
    signature: &str,
) -> LoadError {
    LoadError::InterfaceHash(Box::new(InterfaceMismatch {
        plugin: code.name.to_string(),
        version: code.version.to_string(),
        interface: decl.name.clone(),
        found: decl.hash,
        expected,
        found_signature: decl.signature.clone(),
        expected_signature: signature.to_owned(),
    }))
}

/// Whether a reload of its directory loads `path`: not hidden, with an artifact extension.
/// The watcher asks the same question of the files it sees change.
pub(crate) fn is_artifact(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str());
    !hidden && (ext == Some(EXTENSION) || ext == Some("wasm"))
}

/// The artifacts in `dir`, sorted by name. Hidden files and files with other extensions
/// (such as a `.tmp` being written) are skipped.
fn list_artifacts(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::ReadDir {
        path: dir.into(),
        source,
    })?;
    let mut paths = vec![];
    for entry in entries {
        let entry = entry.map_err(|source| LoadError::ReadDir {
            path: dir.into(),
            source,
        })?;
        let path = entry.path();
        if is_artifact(&path) && path.is_file() {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(LoadError::NoArtifacts {
            path: dir.into(),
            ext: EXTENSION,
        });
    }
    paths.sort();
    Ok(paths)
}

/// The default wasm compile cache: under the user's cache directory, never a shared one,
/// because a cache entry is native code the host will run.
fn default_wasm_cache() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
    };
    Some(base.join("swapkit").join("wasm"))
}

/// Reports generations held past the drain deadline, once each, until the ledger closes.
fn watch(
    ledger: Arc<Ledger>,
    inner: std::sync::Weak<Inner>,
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
        let Some(inner) = inner.upgrade() else { return };
        for weak in overdue {
            let Some(generation) = weak.upgrade() else {
                continue;
            };
            let report = generation_status(&generation, &inner.current, false, Some(deadline));
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
        drop(inner);
        state = ledger.lock();
    }
}

/// A checked artifact, as [`inspect`] reads it.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The file.
    pub path: PathBuf,
    /// The backend it runs on.
    pub backend: crate::BackendKind,
    /// SHA-256 of its content, in hex: what a swapper compares to reuse an instance.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// What the plugin says about itself.
    pub manifest: swapkit_abi::Manifest,
}

/// Reads and checks an artifact the way a load does (header, ABI version, build
/// fingerprint, manifest, wasm imports and exports), without running any of its hooks.
///
/// A native library is mapped to read its manifest, which runs its static constructors, as
/// any load would. The error for a broken file says what is wrong with it.
pub fn inspect(path: impl AsRef<Path>) -> Result<Artifact, LoadError> {
    let path = path.as_ref();
    let swapper = Swapper::new()?;
    let code = swapper.inner.load_code(path)?;
    Ok(Artifact {
        path: path.to_owned(),
        backend: code.backend,
        sha256: crate::backend::hex(&code.content_hash),
        size: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        manifest: code.manifest.clone(),
    })
}
