//! The reload transaction and its history: load artifacts, check them as a set, build the
//! new generation's instances, publish it with one swap, and keep the selection it replaced
//! for rollback. Reloads are serialised by one lock; calls never take it.

mod build;
mod canary;
mod events;
mod gate;
mod versions;

pub(crate) use events::{Observer, PublishedEvent, Verdict};

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use swapkit_abi::Interface;

use crate::backend::host::Services;
use crate::backend::Code;
use crate::candidate::BeforePublish;
use crate::error::{InterfaceMismatch, LoadError};
use crate::history::{self, KeptSelection, RollbackTarget, Selection};
use crate::load::{Loader, Source};
use crate::lock::lock;
use crate::persist::Kept;
use crate::persist::StateDir;
use crate::publish::Published;
use crate::status::Status;
use crate::trigger::Trigger;
use crate::{plan, Probation, Vault};
use versions::Highest;

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

/// What the reload lock guards.
pub(crate) struct ReloadState {
    source: Option<Source>,
    /// Earlier selections, newest last; the current one is not in here.
    history: VecDeque<Selection>,
    /// The current selection.
    selection: Selection,
    next_id: u64,
    /// A resume of kept artifacts is being installed.
    resuming: bool,
    /// The canary that runs beside its stable version, if one does.
    canary: Option<canary::Active>,
    /// Canaries started so far: the number of the last.
    canaries: u64,
    /// How the last canary ended.
    last_canary: Option<String>,
}

/// Everything a reload needs besides its artifacts.
pub(crate) struct Settings {
    pub services: Services,
    pub history_len: usize,
    pub state_dir: Option<Arc<StateDir>>,
    pub interfaces: Vec<(&'static str, u64, &'static str)>,
    pub observer: Option<Arc<dyn Observer>>,
    pub before_publish: Option<BeforePublish>,
    pub canary_gate: Option<Probation>,
}

/// Runs reloads and rollbacks against one [`Published`] cell.
pub(crate) struct Reloader {
    pub published: Published,
    pub loader: Loader,
    state: Mutex<ReloadState>,
    interfaces: Mutex<Registry>,
    services: Services,
    history_len: usize,
    state_dir: Option<Arc<StateDir>>,
    observer: Option<Arc<dyn Observer>>,
    /// The highest version of each plugin published, under a trust policy (rollback
    /// protection); `None` without one.
    highest: Option<Mutex<Highest>>,
    /// The host's check of each new generation before it is published.
    before_publish: Option<BeforePublish>,
    /// The gate of canaries started without one of their own.
    pub canary_gate: Option<Probation>,
}

impl Reloader {
    pub fn new(published: Published, loader: Loader, settings: Settings) -> Reloader {
        let highest = loader
            .trusts()
            .then(|| Mutex::new(Highest::open(settings.state_dir.as_deref())));
        let interfaces = settings
            .interfaces
            .iter()
            .map(|&(name, hash, sig)| (name, (hash, sig)))
            .collect();
        Reloader {
            published,
            loader,
            state: Mutex::new(ReloadState {
                source: None,
                history: VecDeque::new(),
                selection: Selection::default(),
                next_id: 1,
                resuming: false,
                canary: None,
                canaries: 0,
                last_canary: None,
            }),
            interfaces: Mutex::new(interfaces),
            services: settings.services,
            history_len: settings.history_len,
            highest,
            state_dir: settings.state_dir,
            observer: settings.observer,
            before_publish: settings.before_publish,
            canary_gate: settings.canary_gate,
        }
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    pub fn vault(&self) -> &Vault {
        &self.services.vault
    }

    pub fn state_dir(&self) -> Option<&StateDir> {
        self.state_dir.as_deref()
    }

    fn lock(&self) -> MutexGuard<'_, ReloadState> {
        lock(&self.state)
    }

    /// Tells the observer of a failure, and passes the result on.
    fn settle<T>(&self, result: Result<T, LoadError>) -> Result<T, LoadError> {
        if let (Err(e), Some(observer)) = (&result, &self.observer) {
            observer.failed(e);
        }
        result
    }

    /// Announces the source the next reloads read, to the observer.
    pub fn announce_source(&self, source: &Source) {
        if let Some(observer) = &self.observer {
            observer.source(source);
        }
    }

    /// Publishes `codes` (static plugins) as the first generation.
    pub fn install_codes(&self, codes: Vec<Arc<Code>>) -> Result<ReloadReport, LoadError> {
        let mut state = self.lock();
        let report = self.install(&mut state, codes, &Trigger::Load, Instant::now());
        self.settle(report)
    }

    /// Loads `source` and makes it the source of later reloads. On failure the source of
    /// later reloads stays what it was.
    ///
    /// Like [`reload`](Self::reload), it reads, checks and compiles the artifacts before it
    /// takes the reload lock. Under the lock it reads the source again, after watching it (so
    /// nothing published after the read is missed): the codes of the first read, still held,
    /// make the second find each unchanged artifact by its content hash, so the lock is held
    /// for a read and a hash, not a compile.
    pub fn load_from(&self, source: Source) -> Result<ReloadReport, LoadError> {
        let warm = self.loader.load_source(&source);
        let mut state = self.lock();
        // Held to the end: see above.
        let _warm = match warm {
            Ok(codes) => codes,
            Err(e) => return self.settle(Err(e)),
        };
        // Watch before reading, so that nothing published after the read is missed.
        self.announce_source(&source);
        let report = self.reload_from(&mut state, &source, &Trigger::Load);
        let report = self.settle(report);
        if report.is_err() {
            if let Some(previous) = &state.source {
                self.announce_source(previous);
            }
        }
        let report = report?;
        state.source = Some(source);
        Ok(report)
    }

    /// Loads artifacts kept in the state directory, each checked against its recorded hash,
    /// and publishes them.
    pub fn load_kept(&self, kept: &[Kept]) -> Result<ReloadReport, LoadError> {
        let start = Instant::now();
        let codes = self.settle(self.loader.load_kept(kept))?;
        let mut state = self.lock();
        // The known-good selection may be older than the newest release seen (after an
        // auto-rollback): resuming it is not a downgrade.
        state.resuming = true;
        let report = self.install(&mut state, codes, &Trigger::Load, start);
        state.resuming = false;
        self.settle(report)
    }

    /// Loads `files` as [`load_from`](Self::load_from) does, letting plugins go to lower
    /// versions than the highest published (rollback protection allows it only here and in
    /// rollbacks).
    pub fn downgrade(&self, files: Vec<PathBuf>) -> Result<ReloadReport, LoadError> {
        let source = Source::Files(files);
        let warm = self.loader.load_source(&source);
        let mut state = self.lock();
        // Held to the end: see `load_from`.
        let _warm = match warm {
            Ok(codes) => codes,
            Err(e) => return self.settle(Err(e)),
        };
        self.announce_source(&source);
        let report = self.reload_from(&mut state, &source, &Trigger::Downgrade);
        let report = self.settle(report)?;
        state.source = Some(source);
        Ok(report)
    }

    /// Makes `source` the source of later reloads without loading it.
    pub fn set_source(&self, source: Source) {
        self.lock().source = Some(source);
    }

    /// Reads the source again and publishes a new generation; `trigger` is what asked, for
    /// logs.
    pub fn reload(&self, trigger: &Trigger) -> Result<ReloadReport, LoadError> {
        if self.loader.is_static() {
            return Err(LoadError::StaticMode);
        }
        let source = self.lock().source.clone().ok_or(LoadError::NoSource)?;
        let start = Instant::now();
        let _span = tracing::info_span!("reload", trigger = %trigger, source = ?source).entered();
        // Reading, checking and compiling the artifacts, the long part of a reload (and the
        // part a hostile artifact can make long), runs before the reload lock is taken: a
        // status request, a rollback or a canary step is never held up behind a compile.
        // Publishing is under the lock, and checks the set against the current state there.
        let codes = self.loader.load_source(&source);
        let mut state = self.lock();
        let report = codes.and_then(|codes| self.install(&mut state, codes, trigger, start));
        self.settle(report)
    }

    fn reload_from(
        &self,
        state: &mut ReloadState,
        source: &Source,
        trigger: &Trigger,
    ) -> Result<ReloadReport, LoadError> {
        let start = Instant::now();
        let _span = tracing::info_span!("reload", trigger = %trigger, source = ?source).entered();
        let codes = self.loader.load_source(source)?;
        self.install(state, codes, trigger, start)
    }

    /// Publishes the kept selection `target` names. `Previous` drops the rolled-back-from
    /// selection as well, so that history reads as if the last swap never happened.
    pub fn rollback_to(
        &self,
        target: &RollbackTarget,
        trigger: &Trigger,
    ) -> Result<ReloadReport, LoadError> {
        let mut state = self.lock();
        if self.loader.is_static() {
            return Err(LoadError::StaticMode);
        }
        let kept: Vec<&Selection> = state.history.iter().collect();
        let index = self.settle(history::find(&kept, target))?;
        let chosen = state.history[index].clone();
        let report = self.install(&mut state, chosen.codes, trigger, Instant::now());
        let report = self.settle(report)?;
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
        // A rollback and a resume (`Trigger::Load` of kept artifacts goes through
        // `load_kept`) publish again what was published; an explicit downgrade may go to
        // lower versions, but not to versions that cannot be ordered.
        let republish = trigger.is_rollback() || state.resuming;
        if let (Some(highest), false) = (&self.highest, republish) {
            lock(highest).check(&codes, *trigger == Trigger::Downgrade)?;
        }
        let id = state.next_id;
        let current = self.published.current().load_full();
        build::keeps_fixed(&current, &codes)?;
        let built = build::build(&codes, &current, id, &self.services);
        drop(current);
        let mut built = built.inspect_err(|e| {
            tracing::warn!(error = %e, "{trigger} aborted; the current generation keeps serving");
        })?;

        state.next_id += 1;
        let composed = self.compose(state, built.take_instances());
        let generation = self
            .published
            .generation(id, composed.plugins, composed.route);
        self.vet(&generation, trigger, &built.loaded)?;
        let old = self.published.publish(generation);
        if let Some(why) = composed.ended {
            self.canary_ended(state, why);
        }
        let report = ReloadReport {
            generation: id,
            loaded: std::mem::take(&mut built.loaded),
            reused: std::mem::take(&mut built.reused),
            took: start.elapsed(),
        };
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
        let verdict = self.observer.as_ref().map_or(Verdict::KnownGood, |o| {
            o.published(&PublishedEvent {
                generation: id,
                fresh: report.loaded.iter().map(|(n, _)| n.clone()).collect(),
                trigger,
                first: old.id == 0,
                took: report.took,
            })
        });
        if let Some(highest) = &self.highest {
            lock(highest).record(&state.selection.codes);
        }
        if verdict == Verdict::KnownGood {
            self.persist_known_good(state);
        }
        // If nothing holds the old generation, it retires right here, after publication.
        self.published.retire(old);
        Ok(report)
    }

    /// Marks `generation` known-good, if it is still the current selection: it is persisted
    /// as the one a restarted host starts with.
    #[cfg(feature = "ops")]
    pub fn mark_known_good(&self, generation: u64) {
        let state = self.lock();
        if state.selection.generation == generation {
            self.persist_known_good(&state);
        }
    }

    /// Persists the current selection as the one a restarted host starts with, and prunes
    /// kept artifacts that neither it nor the history needs.
    fn persist_known_good(&self, state: &ReloadState) {
        let generation = state.selection.generation;
        if let Some(observer) = &self.observer {
            observer.known_good(generation);
        }
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

    /// Declares interface `I`, so that later loads check plugins against its hash. Fails if
    /// the current generation exports it with another hash.
    pub fn declare<I: Interface + ?Sized>(&self) -> Result<(), LoadError> {
        {
            let guard = self.published.current().enter();
            if let Some((inst, i)) = guard.get().exported(I::NAME) {
                let decl = &inst.code.manifest.interfaces[i];
                if decl.hash != I::HASH {
                    return Err(interface_mismatch(&inst.code, decl, I::HASH, I::SIGNATURE));
                }
            }
        }
        lock(&self.interfaces).insert(I::NAME, (I::HASH, I::SIGNATURE));
        Ok(())
    }

    fn check_interfaces(&self, codes: &[Arc<Code>]) -> Result<(), LoadError> {
        let registry = lock(&self.interfaces);
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

    /// The selections kept for rollback, newest first.
    pub fn kept(&self) -> Vec<KeptSelection> {
        self.lock()
            .history
            .iter()
            .rev()
            .map(Selection::kept)
            .collect()
    }

    /// A snapshot of the generations alive and recently drained.
    pub fn status(&self) -> Status {
        let (current, draining, drained) = self.published.snapshot();
        Status {
            current,
            draining,
            drained,
            history: self.lock().history.len(),
        }
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
