//! The wasm backend: plugins compiled to `wasm32-unknown-unknown`, run by wasmtime.
//!
//! # What it gives
//! - **Isolation.** A plugin sees only its linear memory and the ABI's host functions
//!   (`swapkit.log`, `swapkit.panic`): no WASI, no other import. A module that imports anything
//!   else is refused at load.
//! - **Limits.** Each call has a CPU-time budget enforced by epoch interruption (a ticker thread
//!   advances the engine's epoch), so a runaway loop becomes [`CallError::Timeout`]. Linear
//!   memory, tables and instances are capped per store by a resource limiter.
//! - **Traps are contained.** A trap (unreachable, out-of-bounds access, stack overflow, a
//!   division by zero, a timeout, a memory cap) fails that call with an error naming the plugin,
//!   its version and the method, and the instance that trapped is dropped, never reused.
//! - **True unload.** A retired generation drops its instances, their stores and memories, and
//!   the compiled module once no generation or history entry uses it.
//!
//! # Concurrency
//! A wasmtime `Store` is single-threaded, so each plugin instance is a bounded pool of wasm
//! instances ("slots"), kept in a lock-free queue. A call takes an idle slot, or makes one if the
//! pool is below its size, or else waits or fails as [`WasmLimits::when_exhausted`] says. Each
//! slot holds its own copy of the plugin object: `on_load` and `on_init` run in every slot, and
//! only the first slot's hook log lines reach the log sink (the others go to `tracing` at debug
//! level), so a plugin's lifecycle reads the same as on the native backend.
//!
//! # Compile cache
//! A module is compiled once per content. The compiled form is written to the cache directory,
//! keyed by the content hash and the engine's compatibility hash (wasmtime version and
//! configuration), with a SHA-256 of the compiled bytes in front. A restart or a re-load reads it
//! instead of compiling. An entry whose checksum does not match, or that wasmtime rejects, is
//! ignored and rewritten, so a corrupt cache costs a compile, never a crash.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use sha2::{Digest, Sha256};
use swapkit_abi::{wire, Fingerprint, Manifest, Status, ABI_VERSION};
use wasmtime::{
    Caller, Config, Engine, Extern, InstancePre, Linker, Memory, Module, ResourceLimiter, Store,
    Trap, TypedFunc,
};

use super::{host_status, BackendKind, Code, Entry, Reply};
use crate::error::LoadError;
use crate::log::{emit, GuestCtx};

/// How often the engine's epoch advances: the resolution of call timeouts.
const TICK: Duration = Duration::from_millis(2);

/// Limits and pool settings for wasm plugins. The defaults are safe for untrusted code.
///
/// ```
/// use std::time::Duration;
/// let limits = swapkit::WasmLimits {
///     call_timeout: Duration::from_millis(50),
///     max_memory: 16 << 20,
///     ..Default::default()
/// };
/// let swapper = swapkit::Swapper::builder().wasm_limits(limits).build().unwrap();
/// # drop(swapper);
/// ```
#[derive(Debug, Clone)]
pub struct WasmLimits {
    /// CPU time one call may take before it is interrupted with [`CallError::Timeout`]
    /// (default 1 s). Measured in ticks of 2 ms, so it is approximate.
    ///
    /// [`CallError::Timeout`]: crate::CallError::Timeout
    pub call_timeout: Duration,
    /// Bytes of linear memory one instance may have (default 64 MiB). Growing past it fails.
    pub max_memory: usize,
    /// Elements one table may have (default 20,000).
    pub max_table_elements: usize,
    /// Wasm instances, tables and memories one store may create (default 1, 4 and 1).
    pub max_instances: usize,
    /// See `max_instances`.
    pub max_tables: usize,
    /// See `max_instances`.
    pub max_memories: usize,
    /// Wasm instances per plugin instance: the most calls into one plugin that run at once
    /// (default: twice the available parallelism, at least 2).
    pub pool_size: usize,
    /// What a call does when every instance of the pool is busy.
    pub when_exhausted: Exhausted,
    /// Wasm stack a call may use before it traps with a stack overflow (default 512 KiB).
    pub max_stack: usize,
}

impl Default for WasmLimits {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        WasmLimits {
            call_timeout: Duration::from_secs(1),
            max_memory: 64 << 20,
            max_table_elements: 20_000,
            max_instances: 1,
            max_tables: 4,
            max_memories: 1,
            pool_size: (2 * cpus).max(2),
            when_exhausted: Exhausted::Wait(Duration::from_secs(1)),
            max_stack: 512 << 10,
        }
    }
}

/// What a call does when every wasm instance of a plugin is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// Wait up to this long for one to come free, then fail with
    /// [`CallError::PoolExhausted`](crate::CallError::PoolExhausted).
    Wait(Duration),
    /// Fail at once with [`CallError::PoolExhausted`](crate::CallError::PoolExhausted).
    Fail,
}

/// The wasm engine of one swapper: compiles, caches and instantiates modules.
pub(crate) struct WasmLoader {
    shared: Arc<Shared>,
    cache: Option<PathBuf>,
    /// Compatibility key of compiled code: wasmtime version and engine configuration.
    compat: u64,
    /// Content hash to code, for reuse while something still holds it.
    loaded: Mutex<HashMap<[u8; 32], Weak<Code>>>,
    compiles: AtomicUsize,
}

/// What every module and instance of one engine shares.
struct Shared {
    engine: Engine,
    linker: Linker<SlotData>,
    limits: WasmLimits,
    deadline_ticks: u64,
    ticker: Arc<AtomicBool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.ticker.store(true, Ordering::Relaxed);
    }
}

impl WasmLoader {
    pub fn new(limits: WasmLimits, cache: Option<PathBuf>) -> Result<WasmLoader, LoadError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(limits.max_stack);
        let engine = Engine::new(&config).map_err(|e| LoadError::WasmEngine {
            reason: e.to_string(),
        })?;
        let mut linker = Linker::new(&engine);
        let link_error = |e: wasmtime::Error| LoadError::WasmEngine {
            reason: e.to_string(),
        };
        linker
            .func_wrap("swapkit", "log", host_log)
            .map_err(link_error)?;
        linker
            .func_wrap("swapkit", "panic", host_panic)
            .map_err(link_error)?;
        let stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), stop.clone()).map_err(|e| LoadError::WasmEngine {
            reason: format!("cannot start the epoch ticker thread: {e}"),
        })?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        "swapkit-cache-v1".hash(&mut hasher);
        let compat = hasher.finish();
        let deadline_ticks = (limits.call_timeout.as_nanos() / TICK.as_nanos()).max(1) as u64 + 1;
        if let Some(dir) = &cache {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "wasm compile cache unavailable; compiling every load");
            }
        }
        Ok(WasmLoader {
            shared: Arc::new(Shared {
                engine,
                linker,
                limits,
                deadline_ticks,
                ticker: stop,
            }),
            cache,
            compat,
            loaded: Mutex::new(HashMap::new()),
            compiles: AtomicUsize::new(0),
        })
    }

    /// How many modules this loader has compiled (not read from the cache).
    pub fn compiles(&self) -> usize {
        self.compiles.load(Ordering::Relaxed)
    }

    /// Reads, checks and compiles (or reuses) one `.wasm` artifact, and reads its manifest.
    pub fn load(&self, path: &Path, bytes: Vec<u8>) -> Result<Arc<Code>, LoadError> {
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        if let Some(code) = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
            .and_then(Weak::upgrade)
        {
            return Ok(code);
        }
        let module = self.module(path, &bytes, &hash)?;
        check_shape(path, &module)?;
        let pre =
            self.shared
                .linker
                .instantiate_pre(&module)
                .map_err(|e| LoadError::WasmShape {
                    path: path.into(),
                    reason: e.to_string(),
                })?;
        let wasm = Arc::new(WasmModule {
            shared: self.shared.clone(),
            pre,
        });
        let origin = path.display().to_string();
        let manifest = probe(&wasm, &origin)?;
        let code = Arc::new(Code {
            entry: Entry::Wasm(wasm),
            name: manifest.name.as_str().into(),
            version: manifest.version.as_str().into(),
            manifest,
            backend: BackendKind::Wasm,
            content_hash: hash,
            origin,
        });
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|_, w| w.strong_count() > 0);
        loaded.insert(hash, Arc::downgrade(&code));
        Ok(code)
    }

    /// The compiled module: from the cache when a valid entry exists, else compiled (and
    /// cached).
    fn module(&self, path: &Path, bytes: &[u8], hash: &[u8; 32]) -> Result<Module, LoadError> {
        let entry = self.cache.as_ref().map(|dir| {
            let hex: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
            dir.join(format!("{hex}-{:016x}.cwasm", self.compat))
        });
        if let Some(entry) = &entry {
            match self.read_cached(entry) {
                Ok(Some(module)) => return Ok(module),
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(entry = %entry.display(), %reason, "ignoring a bad wasm cache entry; recompiling");
                }
            }
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::WasmCompile {
                path: path.into(),
                reason: "the file does not start with the wasm magic number `\\0asm`".into(),
            });
        }
        let _span = tracing::debug_span!("compile", path = %path.display()).entered();
        let module = Module::from_binary(&self.shared.engine, bytes).map_err(|e| {
            LoadError::WasmCompile {
                path: path.into(),
                reason: format!("{e:#}"),
            }
        })?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        if let Some(entry) = &entry {
            if let Err(e) = write_cached(entry, &module) {
                tracing::warn!(entry = %entry.display(), error = %e, "could not write the wasm compile cache");
            }
        }
        Ok(module)
    }

    /// A cached module, `None` when there is no entry, or why the entry is unusable.
    fn read_cached(&self, entry: &Path) -> Result<Option<Module>, String> {
        let data = match std::fs::read(entry) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let payload = data
            .strip_prefix(CACHE_MAGIC)
            .filter(|rest| rest.len() >= 32)
            .ok_or("not a swapkit cache entry")?;
        let (sum, compiled) = payload.split_at(32);
        if Sha256::digest(compiled).as_slice() != sum {
            return Err("checksum mismatch".into());
        }
        // SAFETY: the bytes are exactly what `Module::serialize` wrote for this engine
        // configuration (the key holds the compatibility hash, and the checksum proves the
        // entry is intact), and wasmtime checks its own header and version as well.
        unsafe { Module::deserialize(&self.shared.engine, compiled) }
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

const CACHE_MAGIC: &[u8] = b"SWKCWASM";

/// Writes a cache entry atomically: a temporary file renamed into place.
fn write_cached(entry: &Path, module: &Module) -> std::io::Result<()> {
    let compiled = module.serialize().map_err(std::io::Error::other)?;
    let dir = entry.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    use std::io::Write;
    tmp.write_all(CACHE_MAGIC)?;
    tmp.write_all(&Sha256::digest(&compiled))?;
    tmp.write_all(&compiled)?;
    tmp.persist(entry).map_err(|e| e.error)?;
    Ok(())
}

fn spawn_ticker(engine: Engine, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("swapkit-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                engine.increment_epoch();
            }
        })
        .map(|_| ())
}

/// The exports a plugin module must have, with their (params, results) arity.
const EXPORTS: [(&str, usize, usize); 8] = [
    ("swapkit_abi_version", 0, 1),
    ("swapkit_out_slot", 0, 1),
    ("swapkit_input", 1, 1),
    ("swapkit_manifest", 0, 1),
    ("swapkit_load", 0, 1),
    ("swapkit_init", 0, 1),
    ("swapkit_free", 0, 1),
    ("swapkit_call", 3, 1),
];

/// Checks that the module speaks ABI v1: the entry points, a memory, and no import beyond the
/// host functions.
fn check_shape(path: &Path, module: &Module) -> Result<(), LoadError> {
    let bad = |reason: String| LoadError::WasmShape {
        path: path.into(),
        reason,
    };
    for import in module.imports() {
        let known = import.module() == "swapkit" && matches!(import.name(), "log" | "panic");
        if !known {
            return Err(bad(format!(
                "it imports `{}.{}`, but a plugin may import only `swapkit.log` and \
                 `swapkit.panic`; build it with swapkit-guest for wasm32-unknown-unknown, \
                 without wasm-bindgen or WASI",
                import.module(),
                import.name()
            )));
        }
    }
    let exports: HashMap<&str, wasmtime::ExternType> =
        module.exports().map(|e| (e.name(), e.ty())).collect();
    if !matches!(exports.get("memory"), Some(wasmtime::ExternType::Memory(_))) {
        return Err(bad("it exports no linear memory named `memory`".into()));
    }
    for (name, params, results) in EXPORTS {
        match exports.get(name) {
            Some(wasmtime::ExternType::Func(f)) => {
                let ok = f.params().len() == params
                    && f.results().len() == results
                    && f.params().chain(f.results()).all(|t| t.is_i32());
                if !ok {
                    return Err(bad(format!("export `{name}` has the wrong signature: {f}")));
                }
            }
            _ => {
                return Err(bad(format!(
                    "it does not export `{name}`; is it a swapkit plugin built with \
                     export_plugin! for wasm32?"
                )))
            }
        }
    }
    Ok(())
}

/// Reads the manifest from a fresh instance, before any hook runs.
fn probe(wasm: &Arc<WasmModule>, origin: &str) -> Result<Manifest, LoadError> {
    let failed = |reason: String| LoadError::Manifest {
        origin: origin.to_owned(),
        reason,
    };
    let ctx = Arc::new(GuestCtx {
        plugin: "?".into(),
        version: "?".into(),
        sink: None,
    });
    let mut slot = wasm
        .slot(ctx, true)
        .map_err(|e| failed(format!("instantiating failed: {e}")))?;
    let version = slot
        .abi_version()
        .map_err(|e| failed(format!("swapkit_abi_version trapped: {e}")))?;
    if version != ABI_VERSION {
        return Err(LoadError::AbiVersion {
            origin: origin.to_owned(),
            found: version,
            expected: ABI_VERSION,
        });
    }
    let deadline = wasm.shared.deadline_ticks;
    let result = slot.run(
        deadline,
        |f, store| f.manifest.call(store, ()),
        |reply| {
            if reply.status != Status::Ok as u32 {
                return Err(format!(
                    "status {}: {}",
                    reply.status,
                    String::from_utf8_lossy(reply.bytes)
                ));
            }
            wire::from_bytes::<Manifest>(reply.bytes).map_err(|e| e.to_string())
        },
    );
    let manifest = match result {
        Ok(Ok(m)) => m,
        Ok(Err(reason)) => return Err(failed(reason)),
        Err(fault) => {
            return Err(failed(format!(
                "the manifest entry failed: {}",
                fault.message
            )))
        }
    };
    if manifest.name.is_empty() || manifest.abi_version != ABI_VERSION {
        return Err(failed(format!(
            "name `{}`, ABI version {}",
            manifest.name, manifest.abi_version
        )));
    }
    let expected = Fingerprint::CURRENT;
    if manifest.fingerprint[2] != expected.abi_crate() {
        return Err(LoadError::Fingerprint {
            field: "swapkit-abi version",
            found: manifest.fingerprint[2].clone(),
            expected: expected.abi_crate().into(),
            origin: origin.to_owned(),
        });
    }
    Ok(manifest)
}

/// A compiled, checked plugin module.
pub(crate) struct WasmModule {
    shared: Arc<Shared>,
    pre: InstancePre<SlotData>,
}

impl std::fmt::Debug for WasmModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmModule").finish_non_exhaustive()
    }
}

impl WasmModule {
    /// A fresh wasm instance with its store.
    fn slot(&self, ctx: Arc<GuestCtx>, quiet: bool) -> Result<Box<Slot>, wasmtime::Error> {
        let limits = &self.shared.limits;
        let data = SlotData {
            limiter: Limiter {
                memory: limits.max_memory,
                table_elements: limits.max_table_elements,
                instances: limits.max_instances,
                tables: limits.max_tables,
                memories: limits.max_memories,
                hit: None,
            },
            ctx,
            quiet,
            panic: None,
        };
        let mut store = Store::new(&self.shared.engine, data);
        store.limiter(|d| &mut d.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.shared.deadline_ticks);
        let instance = self.pre.instantiate(&mut store)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| wasmtime::format_err!("no memory export"))?;
        let f0 = |store: &mut Store<SlotData>, name: &str| {
            instance.get_typed_func::<(), u32>(&mut *store, name)
        };
        let abi = f0(&mut store, "swapkit_abi_version")?;
        let out = f0(&mut store, "swapkit_out_slot")?;
        let manifest = f0(&mut store, "swapkit_manifest")?;
        let load = f0(&mut store, "swapkit_load")?;
        let init = f0(&mut store, "swapkit_init")?;
        let free = f0(&mut store, "swapkit_free")?;
        let input = instance.get_typed_func::<u32, u32>(&mut store, "swapkit_input")?;
        let call = instance.get_typed_func::<(u32, u32, u32), u32>(&mut store, "swapkit_call")?;
        let out_slot = out.call(&mut store, ())?;
        Ok(Box::new(Slot {
            store,
            f: Funcs {
                memory,
                abi,
                manifest,
                load,
                init,
                free,
                input,
                call,
                out_slot,
            },
            in_ptr: 0,
            in_cap: 0,
        }))
    }
}

/// What a store carries: the limiter, where log lines go, and the last panic message.
struct SlotData {
    limiter: Limiter,
    ctx: Arc<GuestCtx>,
    /// A replica: its hook log lines go to `tracing` only.
    quiet: bool,
    panic: Option<String>,
}

/// The per-store resource caps; remembers which one was hit.
struct Limiter {
    memory: usize,
    table_elements: usize,
    instances: usize,
    tables: usize,
    memories: usize,
    hit: Option<String>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit = Some(format!(
                "linear memory would grow to {desired} bytes, past the limit of {} bytes",
                self.memory
            ));
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.hit = Some(format!(
                "a table would grow to {desired} elements, past the limit of {}",
                self.table_elements
            ));
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.tables
    }

    fn memories(&self) -> usize {
        self.memories
    }
}

fn guest_bytes(caller: &mut Caller<'_, SlotData>, ptr: u32, len: u32) -> Option<String> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return None;
    };
    let data = memory.data(&*caller);
    let bytes = data.get(ptr as usize..(ptr as usize).checked_add(len as usize)?)?;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// `swapkit.log(level, ptr, len)`.
fn host_log(mut caller: Caller<'_, SlotData>, level: u32, ptr: u32, len: u32) {
    let Some(message) = guest_bytes(&mut caller, ptr, len) else {
        return;
    };
    let data = caller.data();
    if data.quiet {
        tracing::debug!(target: "swapkit::guest", plugin = %data.ctx.plugin, version = %data.ctx.version, replica = true, "{message}");
    } else {
        emit(&data.ctx, level, &message);
    }
}

/// `swapkit.panic(ptr, len)`: the guest's panic hook reports the message before it traps.
fn host_panic(mut caller: Caller<'_, SlotData>, ptr: u32, len: u32) {
    let message = guest_bytes(&mut caller, ptr, len).unwrap_or_else(|| "<unreadable>".into());
    caller.data_mut().panic = Some(message);
}

/// One wasm instance and its store.
struct Slot {
    store: Store<SlotData>,
    f: Funcs,
    in_ptr: u32,
    in_cap: u32,
}

/// The entry points and memory of one wasm instance.
struct Funcs {
    memory: Memory,
    abi: TypedFunc<(), u32>,
    manifest: TypedFunc<(), u32>,
    load: TypedFunc<(), u32>,
    init: TypedFunc<(), u32>,
    free: TypedFunc<(), u32>,
    input: TypedFunc<u32, u32>,
    call: TypedFunc<(u32, u32, u32), u32>,
    out_slot: u32,
}

/// Why a wasm entry point failed: its instance must be thrown away.
#[derive(Debug)]
pub(crate) struct Fault {
    /// A `host_status` code, or [`Status::Panic`].
    pub status: u32,
    pub message: String,
}

impl Slot {
    fn abi_version(&mut self) -> wasmtime::Result<u32> {
        self.f.abi.call(&mut self.store, ())
    }

    /// Runs one entry point under the call deadline, then hands its reply (status and the
    /// bytes of the result slot) to `then`.
    #[inline]
    fn run<T>(
        &mut self,
        deadline: u64,
        entry: impl FnOnce(&Funcs, &mut Store<SlotData>) -> wasmtime::Result<u32>,
        then: impl FnOnce(Reply<'_>) -> T,
    ) -> Result<T, Fault> {
        self.store.set_epoch_deadline(deadline);
        match entry(&self.f, &mut self.store) {
            Ok(status) => {
                let mut raw = [0u8; 8];
                if self
                    .f
                    .memory
                    .read(&self.store, self.f.out_slot as usize, &mut raw)
                    .is_err()
                {
                    return Err(self.broken("the result slot lies outside linear memory"));
                }
                let ptr = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
                let len = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]) as usize;
                let data = self.f.memory.data(&self.store);
                match ptr.checked_add(len).and_then(|end| data.get(ptr..end)) {
                    Some(bytes) => Ok(then(Reply { status, bytes })),
                    None => Err(self.broken("the result lies outside linear memory")),
                }
            }
            Err(e) => Err(self.fault(e)),
        }
    }

    #[cold]
    fn broken(&self, what: &str) -> Fault {
        Fault {
            status: host_status::TRAP,
            message: what.to_owned(),
        }
    }

    /// Classifies a failed entry point.
    #[cold]
    fn fault(&mut self, e: wasmtime::Error) -> Fault {
        let data = self.store.data_mut();
        if let Some(message) = data.panic.take() {
            return Fault {
                status: Status::Panic as u32,
                message,
            };
        }
        if let Some(message) = data.limiter.hit.take() {
            return Fault {
                status: host_status::MEMORY,
                message,
            };
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Fault {
                status: host_status::TIMEOUT,
                message: "the call ran past its CPU-time limit and was interrupted".into(),
            },
            Some(trap) => Fault {
                status: host_status::TRAP,
                message: trap.to_string(),
            },
            None => Fault {
                status: host_status::TRAP,
                message: format!("{e:#}"),
            },
        }
    }

    /// Copies the arguments into the guest's input buffer.
    #[inline]
    fn write_input(&mut self, deadline: u64, input: &[u8]) -> Result<(), Fault> {
        let len = input.len() as u32;
        if len > self.in_cap || self.in_cap == 0 {
            self.store.set_epoch_deadline(deadline);
            let want = len.max(256);
            match self.f.input.call(&mut self.store, want) {
                Ok(ptr) => {
                    self.in_ptr = ptr;
                    self.in_cap = want;
                }
                Err(e) => return Err(self.fault(e)),
            }
        }
        self.f
            .memory
            .write(&mut self.store, self.in_ptr as usize, input)
            .map_err(|_| self.broken("the input buffer lies outside linear memory"))
    }
}

/// A plugin instance on the wasm backend: a bounded pool of wasm instances.
pub(crate) struct WasmInstance {
    module: Arc<WasmModule>,
    ctx: Arc<GuestCtx>,
    idle: ArrayQueue<Box<Slot>>,
    /// Slots that exist, idle or busy.
    live: AtomicUsize,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    freed: Condvar,
}

impl WasmInstance {
    /// Makes the first slot and runs `on_load` in it.
    pub fn load(
        module: Arc<WasmModule>,
        ctx: Arc<GuestCtx>,
    ) -> Result<WasmInstance, (u32, String)> {
        let size = module.shared.limits.pool_size.max(1);
        let mut first = module
            .slot(ctx.clone(), false)
            .map_err(|e| (host_status::TRAP, format!("instantiating failed: {e:#}")))?;
        hook(&module, &mut first, Hook::Load)?;
        let idle = ArrayQueue::new(size);
        let _ = idle.push(first);
        Ok(WasmInstance {
            module,
            ctx,
            idle,
            live: AtomicUsize::new(1),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            freed: Condvar::new(),
        })
    }

    /// Runs `on_init` in the first slot.
    pub fn init(&self) -> Result<(), (u32, String)> {
        let mut slot = self
            .idle
            .pop()
            .ok_or((host_status::TRAP, "no instance to initialise".to_owned()))?;
        let result = hook(&self.module, &mut slot, Hook::Init);
        if result.is_ok() {
            let _ = self.idle.push(slot);
        } else {
            self.live.fetch_sub(1, Ordering::AcqRel);
        }
        result
    }

    /// Calls `method` of `interface`, handing the reply to `then`.
    #[inline]
    pub fn call<T>(
        &self,
        interface: u32,
        method: u32,
        input: &[u8],
        then: impl FnOnce(Reply<'_>) -> T,
    ) -> Result<T, Fault> {
        let mut slot = self.checkout()?;
        let deadline = self.module.shared.deadline_ticks;
        let result = match slot.write_input(deadline, input) {
            Ok(()) => {
                let len = input.len() as u32;
                slot.run(
                    deadline,
                    |f, store| f.call.call(store, (interface, method, len)),
                    then,
                )
            }
            Err(fault) => Err(fault),
        };
        match result {
            Ok(t) => {
                self.checkin(slot);
                Ok(t)
            }
            Err(fault) => {
                // Never reuse an instance that trapped: its memory may be half-written.
                drop(slot);
                self.discard();
                Err(fault)
            }
        }
    }

    /// An idle slot, a new one, or a wait, by the pool's policy.
    fn checkout(&self) -> Result<Box<Slot>, Fault> {
        let limits = &self.module.shared.limits;
        let size = limits.pool_size.max(1);
        let mut deadline: Option<Instant> = None;
        loop {
            if let Some(slot) = self.idle.pop() {
                return Ok(slot);
            }
            let live = self.live.load(Ordering::Acquire);
            if live < size {
                if self
                    .live
                    .compare_exchange(live, live + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return self.replica().inspect_err(|_| self.discard());
                }
                continue;
            }
            let wait = match limits.when_exhausted {
                Exhausted::Fail => return Err(self.exhausted(Duration::ZERO)),
                Exhausted::Wait(wait) => wait,
            };
            let until = *deadline.get_or_insert_with(|| Instant::now() + wait);
            let now = Instant::now();
            if now >= until {
                return Err(self.exhausted(wait));
            }
            self.waiters.fetch_add(1, Ordering::AcqRel);
            let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            if self.idle.is_empty() && self.live.load(Ordering::Acquire) >= size {
                let _ = self
                    .freed
                    .wait_timeout(guard, (until - now).min(Duration::from_millis(10)));
            }
            self.waiters.fetch_sub(1, Ordering::AcqRel);
        }
    }

    #[cold]
    fn exhausted(&self, waited: Duration) -> Fault {
        Fault {
            status: host_status::EXHAUSTED,
            message: format!(
                "all {} wasm instances are busy (waited {waited:?}); raise WasmLimits::pool_size \
                 or the wait",
                self.module.shared.limits.pool_size
            ),
        }
    }

    /// A new slot for the pool, loaded and initialised.
    #[cold]
    fn replica(&self) -> Result<Box<Slot>, Fault> {
        let mut slot = self
            .module
            .slot(self.ctx.clone(), true)
            .map_err(|e| Fault {
                status: host_status::TRAP,
                message: format!("instantiating a pool instance failed: {e:#}"),
            })?;
        for entry in [Hook::Load, Hook::Init] {
            hook(&self.module, &mut slot, entry).map_err(|(status, message)| Fault {
                status: if status == Status::Ok as u32 {
                    host_status::TRAP
                } else {
                    status
                },
                message: format!("a new pool instance failed its hook: {message}"),
            })?;
        }
        Ok(slot)
    }

    #[inline]
    fn checkin(&self, slot: Box<Slot>) {
        let _ = self.idle.push(slot);
        if self.waiters.load(Ordering::Acquire) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.freed.notify_one();
        }
    }

    fn discard(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
        if self.waiters.load(Ordering::Acquire) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.freed.notify_one();
        }
    }
}

impl Drop for WasmInstance {
    fn drop(&mut self) {
        // Every caller holds the instance for the length of its call, so all slots are idle.
        while let Some(mut slot) = self.idle.pop() {
            if let Err((status, message)) = hook(&self.module, &mut slot, Hook::Free) {
                tracing::error!(plugin = %self.ctx.plugin, version = %self.ctx.version, status, %message, "on_free failed");
            }
        }
    }
}

/// A lifecycle entry point.
#[derive(Clone, Copy)]
enum Hook {
    Load,
    Init,
    Free,
}

/// Runs a lifecycle entry point; an error is `(status, message)`.
fn hook(module: &WasmModule, slot: &mut Slot, which: Hook) -> Result<(), (u32, String)> {
    let deadline = module.shared.deadline_ticks;
    let reply = slot.run(
        deadline,
        |f, store| {
            let entry = match which {
                Hook::Load => &f.load,
                Hook::Init => &f.init,
                Hook::Free => &f.free,
            };
            entry.call(store, ())
        },
        |reply| {
            (
                reply.status,
                String::from_utf8_lossy(reply.bytes).into_owned(),
            )
        },
    );
    match reply {
        Ok((status, _)) if status == Status::Ok as u32 => Ok(()),
        Ok(failed) => Err(failed),
        Err(fault) => Err((fault.status, fault.message)),
    }
}
