//! The [`Swapper`]: the public face of the runtime. It owns the reloader (which owns the
//! published generation and the loader) and the operations threads, and hands out clients
//! and pins; each method is a few lines over the layer that does the work.

mod builder;
mod canary;

pub use builder::{Extension, SwapperBuilder};
pub use canary::CanaryBuilder;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use swapkit_abi::{Interface, LiveData};

use crate::call::{target, Binding, Each, Pin};
use crate::canary::CanaryStatus;
use crate::error::{CallError, DrainTimeout, LoadError};
use crate::hazard::Current;
use crate::history::{KeptSelection, RollbackTarget};
use crate::live::{self, LiveFn};
use crate::load::Source;
#[cfg(feature = "ops")]
use crate::ops;
use crate::patch::{PatchError, PluginPatches};
use crate::reload::{ReloadReport, Reloader};
use crate::status::Status;
use crate::trigger::Trigger;
use crate::Vault;

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
    core: Arc<Reloader>,
    /// The background threads: triggers, the admin socket, probation, metrics.
    #[cfg(feature = "ops")]
    ops: Option<ops::Ops>,
    /// What [`Extension`]s started; stopped before anything else. (In a mutex only so that
    /// the swapper stays `Sync`: it is touched at build and drop.)
    extensions: std::sync::Mutex<Vec<Box<dyn Send>>>,
}

impl Drop for Swapper {
    fn drop(&mut self) {
        // Extensions hold handles on the core: they stop (and drop them) first.
        self.extensions
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        #[cfg(feature = "ops")]
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
        SwapperBuilder::default()
    }

    /// A second face of this swapper for an [`Extension`]: the same core, no operations
    /// threads or extensions of its own to stop when it is dropped.
    fn handle(&self) -> Swapper {
        Swapper {
            core: self.core.clone(),
            #[cfg(feature = "ops")]
            ops: None,
            extensions: Default::default(),
        }
    }

    /// The current-generation cell, for call paths outside this module.
    pub(crate) fn current(&self) -> &Current {
        self.core.published.current()
    }

    /// The Vault the host and every generation share: it outlives every swap and rollback.
    pub fn vault(&self) -> &Vault {
        self.core.vault()
    }

    /// Loads every artifact in `dir` as one new generation, and makes `dir` the source of
    /// later [`reload`](Self::reload)s. An artifact is a file ending in the platform's
    /// library extension (`.so`, `.dylib`, `.dll`) or in `.wasm`; hidden files and other
    /// extensions (a `.tmp` being written) are skipped.
    pub fn load_dir(&self, dir: impl AsRef<Path>) -> Result<ReloadReport, LoadError> {
        self.core.load_from(Source::Dir(dir.as_ref().to_owned()))
    }

    /// Loads the artifacts in `dir` of the plugins in `only`, and no others, as one new
    /// generation, and makes that the source of later reloads and of the file watcher:
    /// another artifact dropped in `dir` is never loaded. Plugin `x` is the artifact `x.so`
    /// or `libx.so` (or `.dylib`, `.dll`, `.wasm`), and its manifest must name it `x`. A
    /// listed plugin with no artifact, or with another name inside, is
    /// [`LoadError::Unlisted`]. (Hotswap's `WithWhitelist`.)
    pub fn load_dir_only<S: Into<String>>(
        &self,
        dir: impl AsRef<Path>,
        only: impl IntoIterator<Item = S>,
    ) -> Result<ReloadReport, LoadError> {
        self.core.load_from(Source::DirOnly {
            dir: dir.as_ref().to_owned(),
            only: only.into_iter().map(Into::into).collect(),
        })
    }

    /// Loads exactly these artifacts as one new generation, and makes them the source of
    /// later [`reload`](Self::reload)s.
    pub fn load_files<P: AsRef<Path>>(
        &self,
        files: impl IntoIterator<Item = P>,
    ) -> Result<ReloadReport, LoadError> {
        let files = files.into_iter().map(|p| p.as_ref().to_owned()).collect();
        self.core.load_from(Source::Files(files))
    }

    /// Loads `files` as [`load_files`](Self::load_files) does, and lets plugins go to a lower
    /// version than the highest this host has published. Under a trust policy, that is
    /// refused otherwise ([`LoadError::Downgrade`]) except by a rollback: an old release,
    /// even validly signed, must not come back by being dropped in the plugin directory.
    pub fn downgrade<P: AsRef<Path>>(
        &self,
        files: impl IntoIterator<Item = P>,
    ) -> Result<ReloadReport, LoadError> {
        let files = files.into_iter().map(|p| p.as_ref().to_owned()).collect();
        self.core.downgrade(files)
    }

    /// Reads the source again and publishes a new generation. Plugins whose artifact content
    /// is unchanged keep their instance; the others are loaded, then initialised, in
    /// dependency order. On any error nothing changes and the current generation keeps serving.
    pub fn reload(&self) -> Result<ReloadReport, LoadError> {
        self.core.reload(&Trigger::ApiReload)
    }

    /// How many wasm modules this swapper compiled, rather than read from its compile cache
    /// or reused from a loaded generation.
    #[cfg(feature = "wasm")]
    pub fn wasm_compiles(&self) -> usize {
        self.core.loader.wasm_compiles()
    }

    /// Starts from the last known-good selection in the [state
    /// directory](SwapperBuilder::state_dir) if there is one, and from `dir` otherwise;
    /// either way `dir` becomes the source of later reloads. A persisted selection that
    /// cannot be read or loaded is logged and skipped, so a host always comes up if `dir`
    /// loads.
    pub fn resume(&self, dir: impl AsRef<Path>) -> Result<ReloadReport, LoadError> {
        let dir = dir.as_ref();
        self.core.announce_source(&Source::Dir(dir.to_owned()));
        let persisted = self.core.state_dir().map(|s| s.load());
        if let Some(Ok(Some((known, kept)))) = persisted {
            let generation = known.generation;
            match self.core.load_kept(&kept) {
                Ok(report) => {
                    tracing::info!(
                        from_generation = generation,
                        generation = report.generation,
                        "resumed the last known-good selection"
                    );
                    self.core.set_source(Source::Dir(dir.to_owned()));
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
        self.core
            .rollback_to(&RollbackTarget::Previous, &Trigger::ApiRollback)
    }

    /// Publishes the newest kept selection that `target` names (see [`RollbackTarget`]).
    /// The selection rolled back from is kept, so a later `rollback_to` can go forward again.
    pub fn rollback_to(&self, target: &RollbackTarget) -> Result<ReloadReport, LoadError> {
        self.core.rollback_to(target, &Trigger::ApiRollback)
    }

    /// The selections kept for rollback, newest first.
    pub fn history(&self) -> Vec<KeptSelection> {
        self.core.kept()
    }

    /// A typed client for interface `I`: each call runs in the generation current when it
    /// starts. Declares `I`, so later loads check plugins against its hash.
    ///
    /// The client's type is the one the interface macro generates, named after the trait:
    /// for `trait Greeter` in crate `api`, `api::GreeterClient<swapkit::Binding>`. Keep it
    /// in a struct field or pass it by that name.
    ///
    /// Fails if the current generation exports an interface of this name with another hash.
    pub fn client<I: Interface + ?Sized>(&self) -> Result<I::Client<Binding>, LoadError> {
        self.core.declare::<I>()?;
        let current = self.core.published.current().clone();
        Ok(I::client(Binding::new(current, target::<I>(None))))
    }

    /// Like [`client`](Self::client), for the plugin named `plugin`, when several plugins
    /// export `I`.
    pub fn client_of<I: Interface + ?Sized>(
        &self,
        plugin: &str,
    ) -> Result<I::Client<Binding>, LoadError> {
        self.core.declare::<I>()?;
        let current = self.core.published.current().clone();
        Ok(I::client(Binding::new(current, target::<I>(Some(plugin)))))
    }

    /// A client of interface `I` for each plugin of the current generation that exports it,
    /// with the plugin's name, in dependency order (see [`Pin::each`]); all of them call that
    /// one generation. Declares `I`, as [`client`](Self::client) does.
    ///
    /// ```no_run
    /// # mod api { #[swapkit::interface] pub trait Hooks { fn on_tick(&self, now: u64); } }
    /// # let swapper = swapkit::Swapper::new()?;
    /// for (plugin, hooks) in swapper.each::<dyn api::Hooks>()? {
    ///     hooks.on_tick(42)?; // dependencies first
    /// }
    /// for (plugin, hooks) in swapper.each::<dyn api::Hooks>()?.into_iter().rev() {
    ///     hooks.on_tick(43)?; // dependents first
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn each<I: Interface + ?Sized>(&self) -> Result<Each<I>, LoadError> {
        self.core.declare::<I>()?;
        Ok(self.pin().each::<I>())
    }

    /// Pins the current generation for a unit of work. See [`Pin`].
    pub fn pin(&self) -> Pin {
        Pin::new(self.current().load_full(), None)
    }

    /// Pins the current generation, with a label that drain reports show while it is held.
    pub fn pin_labeled(&self, label: impl Into<String>) -> Pin {
        Pin::new(self.current().load_full(), Some(label.into()))
    }

    /// The [state directory](SwapperBuilder::state_dir), if the swapper has one.
    pub fn state_dir(&self) -> Option<&std::path::Path> {
        self.core.state_dir().map(|d| d.path())
    }

    /// The current generation's number: 0 before the first load, then one more per swap.
    pub fn generation(&self) -> u64 {
        self.core.published.id()
    }

    /// A snapshot of the generations alive and recently drained.
    pub fn status(&self) -> Status {
        self.core.status()
    }

    /// Waits until every superseded generation has retired, or `timeout` passes. On timeout,
    /// the error lists the generations still held and their labelled pins.
    pub fn wait_drained(&self, timeout: Duration) -> Result<(), DrainTimeout> {
        self.core.published.wait_drained(timeout)
    }

    /// Creates a value of live type `type_name` with the factory of the current generation,
    /// whichever plugin exports it (`#[swapkit_guest::live(factory = "..")]`), and returns it
    /// as live data: decode it with [`LiveData::decode`], or keep it in the Vault.
    pub fn new_live<A: Serialize + ?Sized>(
        &self,
        type_name: &str,
        args: &A,
    ) -> Result<LiveData, CallError> {
        let guard = self.current().enter();
        live::new_live(guard.get(), type_name, args)
    }

    /// Sets up a canary: `artifact`, a new version of a plugin of the current generation,
    /// loaded beside the stable version and serving a sticky share of request keys. See
    /// [`canary`](mod@crate::canary); nothing happens until
    /// [`CanaryBuilder::start`].
    pub fn canary(&self, artifact: impl AsRef<Path>) -> CanaryBuilder<'_> {
        CanaryBuilder::new(
            &self.core,
            artifact.as_ref().to_owned(),
            self.core.canary_gate.clone(),
        )
    }

    /// Sets the running canary's share of keys, in percent: one atomic step, and a key that
    /// saw the canary keeps seeing it as the share grows. Returns the generation published.
    pub fn set_canary_percent(&self, percent: f64) -> Result<u64, LoadError> {
        self.core.set_canary(percent, None)
    }

    /// Makes the running canary the only version of its plugin, with its own state, as a
    /// reload would publish it (the selection before it is kept for rollback).
    pub fn promote_canary(&self) -> Result<ReloadReport, LoadError> {
        self.core.promote_canary(None)
    }

    /// Drops the running canary: every call goes to the stable version again, whose state
    /// the canary never touched. Calls in flight in the canary finish there. Returns the
    /// generation published.
    pub fn abort_canary(&self) -> Result<u64, LoadError> {
        self.core.abort_canary(None, None)
    }

    /// The running canary: both versions side by side, with their calls, failures and
    /// latency since it started, and its gate.
    pub fn canary_status(&self) -> Option<CanaryStatus> {
        self.core.canary_status()
    }

    /// How the last canary ended (promoted, aborted and why), if one did.
    pub fn last_canary(&self) -> Option<String> {
        self.core.last_canary()
    }

    /// Loads a native plugin artifact for the patches it exports; see [`PluginPatches`]. The
    /// plugin is loaded beside the generations, not into one: its patches stay applied across
    /// swaps until restored.
    pub fn patches_from(&self, path: impl AsRef<Path>) -> Result<PluginPatches, PatchError> {
        crate::patch::plugin::patches_from(&self.core, path.as_ref())
    }
}

impl<A: Serialize, R: DeserializeOwned> LiveFn<A, R> {
    /// Calls the function in `swapper`'s current generation.
    pub fn call(&self, swapper: &Swapper, args: &A) -> Result<R, CallError> {
        let guard = swapper.current().enter();
        self.call_in(guard.get(), args)
    }
}

impl std::fmt::Debug for Swapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swapper")
            .field("generation", &self.generation())
            .finish()
    }
}
