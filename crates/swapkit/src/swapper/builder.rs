//! [`SwapperBuilder`]: every setting of a swapper, and the order its parts start in.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use swapkit_abi::{Interface, StaticHeader};

use super::Swapper;
use crate::backend::host::{LoadData, LogSink, Services};
use crate::backend::native::NativeLoader;
use crate::backend::statics;
#[cfg(feature = "wasm")]
use crate::backend::wasm::WasmLimits;
use crate::candidate::{BeforePublish, Candidate};
use crate::error::{BoxError, LoadError};
use crate::load::{default_wasm_cache, Loader, WasmConfig};
#[cfg(feature = "ops")]
use crate::ops;
use crate::persist::StateDir;
use crate::publish::{OverdueHook, Published};
#[cfg(feature = "ops")]
use crate::reload::Observer;
use crate::reload::{Reloader, Settings};
use crate::Probation;
use crate::{Sandbox, TrustPolicy, Vault};

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
    statics: Vec<statics::StaticPlugin>,
    interfaces: Vec<(&'static str, u64, &'static str)>,
    sink: Option<LogSink>,
    on_overdue: Option<OverdueHook>,
    drain_deadline: Duration,
    history_len: usize,
    scratch: Option<PathBuf>,
    debuggable_copies: bool,
    wasm: WasmConfig,
    vault: Option<Vault>,
    sandbox: Sandbox,
    trust: Option<TrustPolicy>,
    state_dir: Option<PathBuf>,
    before_publish: Option<BeforePublish>,
    canary_gate: Option<Probation>,
    load_data: LoadData,
    /// The first value that did not encode, reported by `build`.
    load_data_error: Option<LoadError>,
    extensions: Vec<Box<dyn Extension>>,
    #[cfg(feature = "ops")]
    ops: ops::Config,
}

impl Default for SwapperBuilder {
    fn default() -> Self {
        SwapperBuilder {
            statics: vec![],
            interfaces: vec![],
            sink: None,
            on_overdue: None,
            drain_deadline: Duration::from_secs(30),
            history_len: 8,
            scratch: None,
            debuggable_copies: false,
            wasm: WasmConfig::default(),
            vault: None,
            sandbox: Sandbox::default(),
            trust: None,
            state_dir: None,
            before_publish: None,
            canary_gate: None,
            load_data: LoadData::default(),
            load_data_error: None,
            extensions: vec![],
            #[cfg(feature = "ops")]
            ops: ops::Config::default(),
        }
    }
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
    pub fn static_plugin<H: StaticHeader>(mut self, header: &'static H) -> Self {
        self.statics.push(statics::StaticPlugin::of(header));
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

    /// Where to put the private copies native libraries are loaded from, where they are files:
    /// on a kernel without `memfd_create`, or with [`debuggable_copies`](Self::debuggable_copies)
    /// (default: the system's temporary directory).
    pub fn scratch_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.scratch = Some(dir.into());
        self
    }

    /// Maps native plugins from files in a private directory (mode 0700, under
    /// [`scratch_dir`](Self::scratch_dir)) instead of sealed memory files, for tools that name
    /// a library by its mapping and cannot read a memory file (profilers such as `perf`).
    /// Debuggers need no such thing: they open a copy by the `/proc/<pid>/fd/N` path the
    /// dynamic loader knows it by. For debugging and profiling only: a sealed memory file has
    /// no path another process of the same user could swap between the copy and `dlopen`, a
    /// file in a private directory only the directory's permissions. See `examples/slink`.
    pub fn debuggable_copies(mut self) -> Self {
        self.debuggable_copies = true;
        self
    }

    /// Limits and pool settings for wasm plugins (default: [`WasmLimits::default`]).
    #[cfg(feature = "wasm")]
    pub fn wasm_limits(mut self, limits: WasmLimits) -> Self {
        self.wasm.limits = limits;
        self
    }

    /// Where compiled wasm modules are cached across loads and restarts (default:
    /// `$XDG_CACHE_HOME/swapkit/wasm`, or `~/.cache/swapkit/wasm`). The directory is made
    /// with mode 0700, and its entries are authenticated with a secret kept beside it
    /// (`<dir>.key`, mode 0600); if either is not private to this user, the cache is off and
    /// every load compiles, with a warning.
    #[cfg(feature = "wasm")]
    pub fn wasm_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.wasm.cache = Some(dir.into());
        self
    }

    /// The most bytes the wasm compile cache may hold (default 1 GiB): past it, the entries
    /// used least recently are deleted.
    #[cfg(feature = "wasm")]
    pub fn wasm_cache_cap(mut self, bytes: u64) -> Self {
        self.wasm.cache_cap = Some(bytes);
        self
    }

    /// Shares this Vault with the plugins, instead of a new empty one: for state the host
    /// set up before the swapper, or kept from another swapper.
    pub fn vault(mut self, vault: Vault) -> Self {
        self.vault = Some(vault);
        self
    }

    /// Checks every artifact against `policy` before any of its code runs: a directory load,
    /// a reload, the watcher, [`Swapper::patches_from`], the admin socket's `patch_apply`, and
    /// [`Swapper::resume`] from the state directory. Each artifact's detached signature
    /// (`<artifact>.sig`, made by `swapkit sign`) must be by a key the policy trusts and has
    /// not revoked, verify, and cover exactly the artifact's bytes, plugin name, version,
    /// backend and build; a refusal is [`LoadError::Untrusted`], saying why. Without a
    /// policy (the default) every artifact is run.
    pub fn trust(mut self, policy: TrustPolicy) -> Self {
        self.trust = Some(policy);
        self
    }

    /// What plugins may reach through the host: their Vault namespaces and quotas, the host
    /// functions granted to them, and how deep their calls may nest (default:
    /// [`Sandbox::default`], each plugin confined to its own namespace `<plugin>/`).
    pub fn sandbox(mut self, sandbox: Sandbox) -> Self {
        self.sandbox = sandbox;
        self
    }

    /// Persists every artifact loaded, and the last known-good selection, in `dir`, so that
    /// [`Swapper::resume`] starts a restarted host with it. A selection becomes known-good
    /// when it is published, or, with `auto_rollback`, when its
    /// probation ends without a rollback.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Serves the admin protocol ([`swapkit_admin`]) on a Unix socket at `path`, made with
    /// mode 0600, to peers whose uid is the host's own or on
    /// [`admin_allow_uid`](Self::admin_allow_uid). Every request is logged with the peer's
    /// uid and pid. The socket is removed when the swapper is dropped.
    #[cfg(feature = "ops")]
    pub fn admin_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.ops.admin = Some(path.into());
        self
    }

    /// Lets peers running as `uid` use the admin socket too (the socket file's mode must
    /// also let them open it).
    #[cfg(feature = "ops")]
    pub fn admin_allow_uid(mut self, uid: u32) -> Self {
        self.ops.allow.push(uid);
        self
    }

    /// How long an admin connection may stay silent, before a request or inside one, before
    /// it is closed (default 60 s). Each allowed uid may hold 8 connections and all together
    /// 32, so a slow or idle client holds a place for this long at most.
    #[cfg(feature = "ops")]
    pub fn admin_idle_timeout(mut self, idle: Duration) -> Self {
        self.ops.idle = Some(idle);
        self
    }

    /// Reloads when the directory given to [`Swapper::load_dir`] changes, once no change has
    /// come for `debounce`. Files still being written are waited for: publish an artifact by
    /// writing it under a hidden or `.tmp` name and renaming it into place (an atomic
    /// rename), or by a write that closes the file (`cp`). On Linux a file is complete when
    /// it is closed or renamed in; elsewhere only the debounce applies.
    #[cfg(feature = "ops")]
    pub fn watch(mut self, debounce: Duration) -> Self {
        self.ops.watch = Some(debounce);
        self
    }

    /// Reloads when the process receives `signal` (for example
    /// `signal_hook::consts::SIGHUP`). Signals that arrive during a reload are coalesced
    /// into one more reload.
    #[cfg(feature = "ops")]
    pub fn reload_on_signal(mut self, signal: i32) -> Self {
        self.ops.signal = Some(signal);
        self
    }

    /// Checks every new generation before it is published: `check` may call its plugins
    /// through [`Candidate::client`](crate::Candidate::client) (smoke calls, invariants) while
    /// no request can reach them. An error (or a panic) vetoes it: the load, reload or canary
    /// fails with [`LoadError::Vetoed`], is reported as any failed reload is, and the current
    /// generation never stops serving. Rollbacks are not checked: they return to code that
    /// served before.
    ///
    /// ```
    /// # mod api { #[swapkit::interface] pub trait Pricing { fn price(&self, sku: u64) -> u64; } }
    /// let swapper = swapkit::Swapper::builder()
    ///     .before_publish(|candidate| {
    ///         let pricing = candidate.client::<dyn api::Pricing>();
    ///         match pricing.price(0)? {
    ///             0 => Ok(()),
    ///             p => Err(format!("the free sample costs {p}").into()),
    ///         }
    ///     })
    ///     .build()?;
    /// # Ok::<(), swapkit::LoadError>(())
    /// ```
    pub fn before_publish(
        mut self,
        check: impl Fn(&Candidate<'_>) -> Result<(), BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.before_publish = Some(Arc::new(check));
        self
    }

    /// A value every plugin can read in its hooks with `host.load_data::<T>()`, typically in
    /// `on_load` (Hotswap's OnLoad data): configuration, a handle's name, the host's build.
    /// It crosses in the wire encoding, so the plugin's `T` must decode what `value` encodes.
    /// A value set for one plugin with [`load_data_for`](Self::load_data_for) takes
    /// precedence.
    ///
    /// ```
    /// #[derive(serde::Serialize)]
    /// struct Settings { region: String, shards: u32 }
    ///
    /// let swapper = swapkit::Swapper::builder()
    ///     .load_data(&Settings { region: "eu-west".into(), shards: 4 })
    ///     .build()?;
    /// # Ok::<(), swapkit::LoadError>(())
    /// ```
    pub fn load_data<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Self {
        self.load_data.all = self.encode_load_data("every plugin", value);
        self
    }

    /// A value only plugin `plugin` reads with `host.load_data::<T>()`, instead of the one
    /// set by [`load_data`](Self::load_data).
    pub fn load_data_for<T: serde::Serialize + ?Sized>(
        mut self,
        plugin: impl Into<String>,
        value: &T,
    ) -> Self {
        let plugin = plugin.into();
        if let Some(bytes) = self.encode_load_data(&plugin, value) {
            self.load_data.by_plugin.insert(plugin, bytes);
        }
        self
    }

    fn encode_load_data<T: serde::Serialize + ?Sized>(
        &mut self,
        whom: &str,
        value: &T,
    ) -> Option<Vec<u8>> {
        match swapkit_abi::wire::to_vec(value) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.load_data_error.get_or_insert(LoadError::LoadData {
                    plugin: whom.to_owned(),
                    reason: e.to_string(),
                });
                None
            }
        }
    }

    /// The gate of canaries started without one of their own (the admin socket's and the
    /// CLI's `canary start --gate` among them). See [`Probation`].
    pub fn canary_gate(mut self, gate: Probation) -> Self {
        self.canary_gate = Some(gate);
        self
    }

    /// Puts every reload on probation: if, within the window, the plugins it loaded fail
    /// more than the policy allows, the swapper rolls back on its own and logs why. See
    /// [`Probation`].
    #[cfg(feature = "ops")]
    pub fn auto_rollback(mut self, probation: Probation) -> Self {
        self.ops.probation = Some(probation);
        self
    }

    /// Publishes call counts, failures, generations alive and pins held through the
    /// `metrics` facade every `interval` (reload durations are recorded as they happen).
    /// Counting itself is always on, and per-thread: the call path writes no shared counter.
    #[cfg(feature = "ops")]
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.ops.metrics = Some(interval);
        self
    }

    /// Runs `extension` beside the swapper for as long as it lives: it starts when
    /// [`build`](Self::build) has made the swapper (and loaded its static plugins), and is
    /// stopped first when the swapper is dropped. Crates that steer a swapper from outside add
    /// their own builder method over this one, as `swapkit-fleet`'s `.fleet(..)` does.
    pub fn extend(mut self, extension: impl Extension) -> Self {
        self.extensions.push(Box::new(extension));
        self
    }

    /// Builds the swapper, loading the static plugins if any were registered.
    ///
    /// The parts start from the bottom up: the published cell and its drain watchdog, the
    /// loader, the reloader, then operations, which observe the reloader.
    pub fn build(mut self) -> Result<Swapper, LoadError> {
        if let Some(e) = self.load_data_error.take() {
            return Err(e);
        }
        let published = Published::start(self.drain_deadline, self.on_overdue)?;
        let native = if self.statics.is_empty() {
            let loader = NativeLoader::new(self.scratch.as_deref(), self.debuggable_copies)
                .map_err(|source| LoadError::ScratchDir {
                    scratch: self.scratch.clone().unwrap_or_else(std::env::temp_dir),
                    source,
                })?;
            Some(loader)
        } else {
            None
        };
        let state_dir = match &self.state_dir {
            Some(dir) => Some(Arc::new(StateDir::open(dir).map_err(|e| {
                LoadError::Ops {
                    what: "state directory",
                    at: dir.display().to_string(),
                    source: e.into(),
                }
            })?)),
            None => None,
        };
        let mut wasm = self.wasm;
        wasm.cache = wasm.cache.or_else(default_wasm_cache);
        #[cfg(feature = "wasm")]
        let wasm_stack = wasm.limits.max_stack;
        #[cfg(not(feature = "wasm"))]
        let wasm_stack = 0;
        let loader = Loader::new(native, wasm, state_dir.clone(), self.trust);
        #[cfg(feature = "ops")]
        let observer = ops::Shared::new(self.ops.probation.clone());
        let mut services = Services::new(
            self.sink,
            self.vault.unwrap_or_default(),
            self.sandbox,
            wasm_stack,
        );
        services.load_data = Arc::new(self.load_data);
        let settings = Settings {
            services,
            history_len: self.history_len,
            state_dir,
            interfaces: self.interfaces,
            #[cfg(feature = "ops")]
            observer: Some(observer.clone() as Arc<dyn Observer>),
            #[cfg(not(feature = "ops"))]
            observer: None,
            before_publish: self.before_publish,
            canary_gate: self.canary_gate,
        };
        let core = Arc::new(Reloader::new(published, loader, settings));
        let mut swapper = Swapper {
            #[cfg(feature = "ops")]
            ops: ops::Ops::start(&core, observer, self.ops)?,
            core,
            extensions: Default::default(),
        };
        if !self.statics.is_empty() {
            let codes = self
                .statics
                .into_iter()
                .map(statics::code)
                .collect::<Result<Vec<_>, _>>()?;
            swapper.core.install_codes(codes)?;
        }
        for extension in self.extensions {
            let running = extension.start(swapper.handle())?;
            swapper
                .extensions
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .push(running);
        }
        Ok(swapper)
    }
}

/// Something that runs beside a [`Swapper`] and steers it: a fleet agent, an exporter. Added
/// with [`SwapperBuilder::extend`].
pub trait Extension: Send + 'static {
    /// Starts it with a handle on the swapper (the same generations, Vault and history; not
    /// the owner of its operations threads). What it returns is kept by the swapper and
    /// dropped, first of all, when the swapper is: its `Drop` should stop what `start`
    /// started and return once nothing uses the handle any more. An error fails `build`.
    fn start(self: Box<Self>, swapper: Swapper) -> Result<Box<dyn Send>, LoadError>;
}
