//! Backends: how a plugin's code gets into the process. Both backends here end in the same
//! place, a `'static` [`PluginHeader`], and from there every plugin goes through one code path
//! ([`Code`] and [`Instance`]), so the runtime above never knows which backend is in use.
//!
//! This module and its children hold all of swapkit's `unsafe`: the checks that make a header
//! trustworthy, and the calls across the ABI.

pub(crate) mod header;
pub(crate) mod host;
pub(crate) mod native;
pub(crate) mod statics;
#[cfg(feature = "wasm")]
pub(crate) mod wasm;

use std::sync::Arc;

use swapkit_abi::lane::{method_hash, LaneArgs, LaneError, LaneResult};
use swapkit_abi::{
    wire, LiveData, Manifest, PluginHeader, Status, LIFECYCLE_INTERFACE, METHOD_MIGRATE,
    METHOD_SAVE,
};

use crate::error::LoadError;
use host::{GuestCtx, Services};
use native::NativeInstance;

/// Which backend a plugin came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// A `cdylib` loaded with the dynamic loader.
    Native,
    /// A crate linked into the host.
    Static,
    /// A `wasm32-unknown-unknown` module run by wasmtime.
    Wasm,
}

/// Reply codes the host makes up for failures no guest reported: they lie outside the ABI's
/// [`Status`] range, so they never collide with a guest's.
pub(crate) mod host_status {
    /// The wasm instance trapped.
    pub const TRAP: u32 = 0x1_0000;
    /// The call ran out of CPU time.
    pub const TIMEOUT: u32 = 0x1_0001;
    /// The instance hit its memory or table cap.
    pub const MEMORY: u32 = 0x1_0002;
    /// Every wasm instance of the pool was busy.
    pub const EXHAUSTED: u32 = 0x1_0003;
    /// The call was made while this thread was decoding an earlier result of the same native
    /// plugin, whose result buffer it would overwrite.
    pub const REENTRANT: u32 = 0x1_0004;
    /// A plugin → host → plugin call went past the sandbox's nesting bounds (depth, native
    /// stack, re-entry) somewhere below this call.
    pub const NESTING: u32 = 0x1_0005;
    /// Every wasm instance of the pool was busy, and an async call's waker was left to be
    /// woken when one comes free: the call is polled again then, and did not start.
    pub const PARKED: u32 = 0x1_0006;
}

/// Where a plugin's entry points are.
#[derive(Debug)]
pub(crate) enum Entry {
    /// A header in a native or static library mapped for the rest of the process.
    Native(&'static PluginHeader),
    /// A compiled wasm module.
    #[cfg(feature = "wasm")]
    Wasm(Arc<wasm::WasmModule>),
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Native => "native",
            BackendKind::Static => "static",
            BackendKind::Wasm => "wasm",
        })
    }
}

/// A plugin's code, checked and described: its entry table and manifest.
#[derive(Debug)]
pub(crate) struct Code {
    pub entry: Entry,
    pub manifest: Manifest,
    pub backend: BackendKind,
    /// SHA-256 of the artifact; for a static plugin, of its crate name and version.
    pub content_hash: [u8; 32],
    /// The artifact's path, or `static:<crate>`.
    pub origin: String,
    pub name: Arc<str>,
    pub version: Arc<str>,
    /// The direct lanes the plugin lists, by exported interface and method.
    pub lanes: LaneTable,
}

/// The direct lanes of one plugin: for each exported interface (in manifest order), for each
/// method, the lane's entry (native), a marker (wasm: the one `swapkit_lane` export serves
/// them all), or null where the method takes the encoded path.
#[derive(Debug, Default)]
pub(crate) struct LaneTable(Box<[Box<[*const ()]>]>);

// SAFETY: addresses of functions in code mapped for the rest of the process, or markers.
unsafe impl Send for LaneTable {}
// SAFETY: as above; the table never changes once built.
unsafe impl Sync for LaneTable {}

impl LaneTable {
    /// The table of a plugin whose manifest is `manifest`, where `lane(hash)` finds the lane a
    /// plugin lists under a method hash (a map lookup: the table is built in time linear in
    /// the methods and lanes).
    pub fn build(manifest: &Manifest, lane: impl Fn(u64) -> Option<*const ()>) -> LaneTable {
        LaneTable(
            manifest
                .interfaces
                .iter()
                .map(|i| {
                    (0..i.methods.len() as u32)
                        .map(|m| lane(method_hash(i.hash, m)).unwrap_or(std::ptr::null()))
                        .collect()
                })
                .collect(),
        )
    }

    /// The lanes of exported interface `interface`, by method (empty if it has none).
    pub fn of(&self, interface: u32) -> &[*const ()] {
        self.0.get(interface as usize).map_or(&[], |m| m)
    }

    /// How many methods have a lane.
    pub fn count(&self) -> usize {
        self.0.iter().flatten().filter(|l| !l.is_null()).count()
    }
}

/// What an async lane's start came to.
pub(crate) enum LaneStart<R> {
    /// The method completed in its first poll, with this result.
    Ready(R),
    /// The plugin keeps its future, pending, under this handle (ABI.md §11).
    Pending(u64),
}

/// Why a direct-lane call failed.
pub(crate) enum LaneFailure {
    /// The guest or the host reported a status, with its message.
    Status(u32, String),
    /// The result the guest returned is not a value of its type.
    Result(LaneError),
}

/// The longest plugin name a manifest may carry.
pub(crate) const MAX_NAME: usize = 64;

/// What is wrong with a manifest's name and ABI version, if anything. A plugin's name is its
/// Vault namespace (`<name>/`) and the key of its grants, so it may hold only ASCII letters,
/// digits, `-`, `_` and `.`: a name with a `/` would reach into another plugin's namespace,
/// and one with a `:` into the namespaces the host gives patch sets (`patch:<name>/`).
pub(crate) fn manifest_problem(manifest: &Manifest) -> Option<String> {
    let name = &manifest.name;
    if manifest.abi_version != swapkit_abi::ABI_VERSION {
        return Some(format!(
            "plugin `{name}` speaks ABI version {}, this host {}; rebuild it against this \
             host's swapkit-guest",
            manifest.abi_version,
            swapkit_abi::ABI_VERSION
        ));
    }
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_NAME || name.starts_with('.') || !name.chars().all(fine)
    {
        return Some(format!(
            "plugin name `{}` is not allowed: a name is 1 to {MAX_NAME} ASCII letters, digits, \
             `-`, `_` and `.`, not starting with `.` (it names the plugin's Vault namespace, \
             which must not reach into another's)",
            name.escape_debug()
        ));
    }
    let methods: usize = manifest.interfaces.iter().map(|i| i.methods.len()).sum();
    let counts = [
        ("interfaces", manifest.interfaces.len(), MAX_INTERFACES),
        ("methods", methods, MAX_METHODS),
        ("dependencies", manifest.dependencies.len(), MAX_INTERFACES),
        ("patches", manifest.patches.len(), MAX_METHODS),
        ("live exports", manifest.live.len(), MAX_METHODS),
    ];
    if let Some((what, n, max)) = counts.into_iter().find(|(_, n, max)| n > max) {
        return Some(format!(
            "plugin `{name}` declares {n} {what}, more than the {max} a manifest may declare; \
             split it into several plugins"
        ));
    }
    None
}

/// The most bytes a manifest may have: a real one has a few KiB.
pub(crate) const MAX_MANIFEST: usize = 1 << 20;
/// The most interfaces (and dependencies) a manifest may declare.
pub(crate) const MAX_INTERFACES: usize = 256;
/// The most methods (over all interfaces), patches or live exports a manifest may declare;
/// and so the most lanes a plugin may list.
pub(crate) const MAX_METHODS: usize = 4096;

/// Lower-case hex of `bytes`: content hashes in status reports, file names and logs.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 bytes from 64 lower-case hex digits.
pub(crate) fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A live plugin instance: the guest object made by `on_load`, freed by `on_free` on drop.
pub(crate) struct Instance {
    pub code: Arc<Code>,
    /// The id of its context (`GuestCtx::id`).
    pub id: u64,
    /// The plugin declares dependencies, so a call into it records its generation for the
    /// dependency calls it makes (see `host/services.rs`).
    pub scoped: bool,
    /// What calls into it did.
    pub stats: crate::stats::Stats,
    imp: Imp,
}

/// The backend's half of an instance: one arm per backend.
enum Imp {
    Native(NativeInstance),
    #[cfg(feature = "wasm")]
    Wasm(Box<wasm::WasmInstance>),
}

// SAFETY: a native guest instance is `Send + Sync` (the `Plugin` trait requires it); its
// handle is only an address, and the host only passes it back to the same plugin's entry
// points. A wasm instance's stores are each used by one thread at a time.
unsafe impl Send for Instance {}
// SAFETY: as above.
unsafe impl Sync for Instance {}

/// What a guest entry point reported.
pub(crate) struct Reply<'a> {
    pub status: u32,
    /// Valid until the next call into this plugin on this thread.
    pub bytes: &'a [u8],
}

impl Reply<'_> {
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok as u32
    }

    pub fn message(&self) -> String {
        String::from_utf8_lossy(self.bytes).into_owned()
    }

    /// `Ok` for a success, else the status and message, for a hook's error.
    pub fn into_result(self) -> Result<(), (u32, String)> {
        if self.is_ok() {
            Ok(())
        } else {
            Err((self.status, self.message()))
        }
    }
}

impl Instance {
    /// Runs `on_load`, making a new instance of `code`.
    pub fn load(code: Arc<Code>, services: &Services) -> Result<Instance, LoadError> {
        let ctx = GuestCtx::new(&code, services);
        Instance::load_with(code, ctx)
    }

    /// [`Instance::load`], for a plugin the host loads as `identity` rather than by the name
    /// its manifest claims (a patch set): its namespace and grants are `identity`'s.
    pub fn load_as(
        code: Arc<Code>,
        services: &Services,
        identity: &str,
    ) -> Result<Instance, LoadError> {
        let ctx = GuestCtx::new_as(&code, services, identity.into());
        Instance::load_with(code, ctx)
    }

    fn load_with(code: Arc<Code>, ctx: GuestCtx) -> Result<Instance, LoadError> {
        let id = ctx.id;
        let _span =
            tracing::debug_span!("on_load", plugin = %code.name, version = %code.version).entered();
        let imp = match &code.entry {
            Entry::Native(header) => NativeInstance::load(header, ctx).map(Imp::Native),
            #[cfg(feature = "wasm")]
            Entry::Wasm(module) => wasm::WasmInstance::load(module.clone(), Arc::new(ctx))
                .map(|i| Imp::Wasm(Box::new(i))),
        };
        let imp = imp.map_err(|(status, message)| hook_error(&code, "on_load", status, message))?;
        Ok(Instance {
            id,
            scoped: !code.manifest.dependencies.is_empty(),
            stats: Default::default(),
            code,
            imp,
        })
    }

    /// Runs `on_init`.
    pub fn init(&self) -> Result<(), LoadError> {
        let _span =
            tracing::debug_span!("on_init", plugin = %self.code.name, version = %self.code.version)
                .entered();
        let result = match &self.imp {
            Imp::Native(instance) => instance.init(),
            #[cfg(feature = "wasm")]
            Imp::Wasm(instance) => instance.init(),
        };
        result.map_err(|(status, message)| hook_error(&self.code, "on_init", status, message))
    }

    /// Runs the `save` hook: the live data this instance hands to its successor.
    pub fn save(&self) -> Result<Option<LiveData>, LoadError> {
        let _span =
            tracing::debug_span!("save", plugin = %self.code.name, version = %self.code.version)
                .entered();
        self.call(LIFECYCLE_INTERFACE, METHOD_SAVE, &[], |reply| {
            if !reply.is_ok() {
                return Err(hook_error(
                    &self.code,
                    "save",
                    reply.status,
                    reply.message(),
                ));
            }
            wire::from_bytes(reply.bytes).map_err(|e| {
                let message = format!("the saved state did not decode: {e}");
                hook_error(&self.code, "save", Status::HookFailed as u32, message)
            })
        })
    }

    /// Runs the `migrate` hook with the live data of the predecessor.
    pub fn migrate(&self, from: &LiveData) -> Result<(), LoadError> {
        let _span = tracing::info_span!("migrate", plugin = %self.code.name, version = %self.code.version, from_schema = from.schema).entered();
        let input = wire::to_vec(from).map_err(|e| {
            let message = format!("the saved state did not encode: {e}");
            hook_error(&self.code, "migrate", Status::HookFailed as u32, message)
        })?;
        self.call(LIFECYCLE_INTERFACE, METHOD_MIGRATE, &input, |reply| {
            reply
                .into_result()
                .map_err(|(status, message)| hook_error(&self.code, "migrate", status, message))
        })
    }

    /// A native instance's header and guest handle, which a generation copies beside its
    /// exports to call their lanes without reaching the instance (see
    /// `native::lane_at`); `None` for a wasm instance.
    pub fn native_lane_target(
        &self,
    ) -> Option<(&'static swapkit_abi::PluginHeader, *mut std::ffi::c_void)> {
        match &self.imp {
            Imp::Native(instance) => Some(instance.lane_target()),
            #[cfg(feature = "wasm")]
            Imp::Wasm(_) => None,
        }
    }

    /// Calls method `method` of exported interface `interface` through its direct lane,
    /// `lane` (from [`LaneTable::of`], not null).
    #[inline(always)]
    pub fn lane<A: LaneArgs, R: LaneResult>(
        &self,
        lane: *const (),
        interface: u32,
        method: u32,
        args: A,
    ) -> Result<R, LaneFailure> {
        match &self.imp {
            Imp::Native(instance) => {
                let _ = (interface, method);
                // SAFETY: `lane` is the native lane the plugin lists under this method's
                // hash, which covers the interface's hash (its types and plain layouts) and
                // the lane rules, so it has exactly the signature `A` and `R` give.
                unsafe { instance.lane(lane, args) }
            }
            #[cfg(feature = "wasm")]
            Imp::Wasm(instance) => instance.lane(interface, method, args),
        }
    }

    /// Calls method `method` of exported interface `interface` with encoded arguments, and
    /// hands the reply to `then` while its bytes are valid. A host-side failure (a wasm trap,
    /// a timeout) arrives as a reply with a [`host_status`] code and a message.
    #[inline]
    pub fn call<T>(
        &self,
        interface: u32,
        method: u32,
        input: &[u8],
        then: impl FnOnce(Reply<'_>) -> T,
    ) -> T {
        match &self.imp {
            Imp::Native(instance) => instance.call(interface, method, input, then),
            #[cfg(feature = "wasm")]
            Imp::Wasm(instance) => instance.call(interface, method, input, then),
        }
    }
}

/// What an async call holds of its instance between polls: on the wasm backend, the one
/// wasm instance its future lives in.
#[derive(Default)]
pub(crate) struct Lease {
    #[cfg(feature = "wasm")]
    wasm: Option<wasm::Lease>,
}

impl Instance {
    /// [`call`](Self::call) for a step of an async call: on the wasm backend it runs in the
    /// slot `lease` holds, if any, and keeps that slot (out of the pool) while `then` says
    /// the call is pending; a call that finds every slot busy leaves `waker` to be woken when
    /// one is free (a reply of [`host_status::PARKED`]). A wasm step yields to the executor
    /// while it computes (`None`: the task is woken, and the lease keeps the step for the
    /// next poll to go on with) until `until`, the call's deadline, when it is interrupted.
    #[allow(clippy::too_many_arguments)]
    pub fn call_leased<T>(
        &self,
        lease: &mut Lease,
        waker: &std::task::Waker,
        until: Option<std::time::Instant>,
        interface: u32,
        method: u32,
        input: &[u8],
        then: impl FnOnce(Reply<'_>) -> (T, bool),
    ) -> Option<T> {
        let _ = (&lease, waker, until);
        match &self.imp {
            Imp::Native(instance) => Some(instance.call(interface, method, input, |r| then(r).0)),
            #[cfg(feature = "wasm")]
            Imp::Wasm(instance) => instance.call_leased(
                &mut lease.wasm,
                waker,
                until.unwrap_or_else(|| std::time::Instant::now() + instance.limits().call_timeout),
                interface,
                method,
                input,
                then,
            ),
        }
    }

    /// Whether async methods start through their async lanes here (a native or static
    /// plugin; a wasm plugin's start through `ASYNC_INTERFACE`).
    #[inline]
    pub fn has_async_lanes(&self) -> bool {
        matches!(self.imp, Imp::Native(_))
    }

    /// Starts async method `method` through its async lane `lane` (from [`LaneTable::of`],
    /// not null), within the host's polling scope for the new call. Only where
    /// [`has_async_lanes`](Self::has_async_lanes) says so.
    #[inline(always)]
    pub fn async_lane<A: LaneArgs, R: LaneResult>(
        &self,
        lane: *const (),
        args: A,
    ) -> Result<LaneStart<R>, LaneFailure> {
        match &self.imp {
            // SAFETY: `lane` is the lane the plugin lists under this async method's hash,
            // which covers the interface's hash (its types, and that the method is async)
            // and the lane rules, so it has exactly the async lane signature `A` and `R` give.
            Imp::Native(instance) => unsafe { instance.async_lane(lane, args) },
            #[cfg(feature = "wasm")]
            Imp::Wasm(_) => unreachable!("a wasm instance has no async lanes (has_async_lanes)"),
        }
    }

    /// What bounds an async call of this instance: the time the whole call may take, awaits
    /// included, and the time it may wait for a wasm instance to come free (none: it fails
    /// at once). `None` for native and static plugins, trusted code with no call budget.
    pub fn async_bounds(&self) -> Option<(std::time::Duration, Option<std::time::Duration>)> {
        match &self.imp {
            Imp::Native(_) => None,
            #[cfg(feature = "wasm")]
            Imp::Wasm(instance) => {
                let limits = instance.limits();
                let wait = match limits.when_exhausted {
                    wasm::Exhausted::Wait(wait) => Some(wait),
                    wasm::Exhausted::Fail => None,
                };
                Some((limits.call_timeout, wait))
            }
        }
    }

    /// Takes the waker of an async call that [parked](host_status::PARKED) and will not be
    /// polled for a slot again (it was dropped) out of the pool's list.
    pub fn unpark(&self, waker: &std::task::Waker) {
        let _ = waker;
        #[cfg(feature = "wasm")]
        if let Imp::Wasm(instance) = &self.imp {
            instance.unpark(waker);
        }
    }

    /// Gives back what `lease` holds (an async call that ended without a last call into its
    /// slot).
    pub fn release(&self, lease: Lease) {
        let _ = &lease;
        #[cfg(feature = "wasm")]
        if let (Imp::Wasm(instance), Some(held)) = (&self.imp, lease.wasm) {
            instance.release(held);
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _span =
            tracing::debug_span!("on_free", plugin = %self.code.name, version = %self.code.version)
                .entered();
        let freed = match &mut self.imp {
            // SAFETY: this is the drop of the instance's only owner: `free` runs once, and no
            // call is in flight, since every caller holds the Instance alive for its call.
            Imp::Native(instance) => unsafe { instance.free() },
            // A wasm instance frees each of its pool's instances, then their stores, as it drops.
            #[cfg(feature = "wasm")]
            Imp::Wasm(_) => Ok(()),
        };
        if let Err((status, message)) = freed {
            tracing::error!(plugin = %self.code.name, version = %self.code.version, status, error = %message, "on_free failed");
        }
    }
}

#[cold]
fn hook_error(code: &Code, hook: &'static str, status: u32, message: String) -> LoadError {
    let (plugin, version) = (code.name.to_string(), code.version.to_string());
    match status {
        s if s == Status::Panic as u32 => LoadError::HookPanic {
            plugin,
            version,
            hook,
            message,
        },
        host_status::TRAP | host_status::TIMEOUT | host_status::MEMORY | host_status::NESTING => {
            LoadError::Hook {
                plugin,
                version,
                hook,
                message: format!("trapped: {message}"),
            }
        }
        _ => LoadError::Hook {
            plugin,
            version,
            hook,
            message,
        },
    }
}
