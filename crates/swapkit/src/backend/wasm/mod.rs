//! The wasm backend: plugins compiled to `wasm32-unknown-unknown`, run by wasmtime.
//!
//! # What it gives
//! - **Isolation.** A plugin sees only its linear memory and the ABI's host functions
//!   (`swapkit.log`, `swapkit.panic`, and `swapkit.service` with `swapkit.reply` for the Vault,
//!   host functions and dependencies): no WASI, no other import. A module that imports
//!   anything else is refused at load.
//! - **Limits.** Each call has a CPU-time budget enforced by epoch interruption (a ticker thread
//!   advances the engine's epoch), so a runaway loop becomes [`CallError::Timeout`]. A step
//!   of an async call runs on a fiber instead and yields to the executor every second tick
//!   until its call's deadline (see `Slot::compute`), so it never holds a runtime's worker
//!   for long. Linear memory, tables and instances are capped per store by a resource
//!   limiter.
//! - **Traps are contained.** A trap (unreachable, out-of-bounds access, stack overflow, a
//!   division by zero, a timeout, a memory cap) fails that call with an error naming the plugin,
//!   its version and the method, and the instance that trapped is dropped, never reused.
//! - **True unload.** A retired generation drops its instances, their stores and memories, and
//!   the compiled module once no generation or history entry uses it.
//!
//! # Concurrency
//! A wasmtime `Store` is single-threaded, so each plugin instance is a bounded pool of wasm
//! instances ("slots"), kept in lock-free cells (see `pool.rs`). A call takes an idle slot, or makes one if the
//! pool is below its size, or else waits or fails as [`WasmLimits::when_exhausted`] says. Each
//! slot holds its own copy of the plugin object: `on_load` and `on_init` run in every slot, and
//! only one slot's hook log lines reach the log sink (the first, or the slot that replaces it
//! after it trapped; the others go to `tracing` at debug level), so a plugin's lifecycle reads
//! the same as on the native backend.
//!
//! # Compile cache
//! A module is compiled once per content. The compiled form is written to the cache directory
//! (private to this user, each entry authenticated with a per-host key: see `cache.rs`),
//! keyed by the content hash and the engine's compatibility hash (wasmtime version and
//! configuration), with a SHA-256 of the compiled bytes in front. A restart or a re-load reads it
//! instead of compiling. An entry whose checksum does not match, or that wasmtime rejects, is
//! ignored and rewritten, so a corrupt cache costs a compile, never a crash.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use swapkit_abi::{Fingerprint, Manifest, Status, ABI_VERSION};
use wasmtime::{Config, Engine, InstancePre, Linker, Module, Store};

use super::{BackendKind, Code, Entry, LaneTable};
use crate::backend::host::GuestCtx;
use crate::error::LoadError;

pub(crate) mod cache;
mod compile;
mod pool;
mod slot;
mod stacks;

pub(crate) use pool::{Lease, WasmInstance};
use slot::{
    host_log, host_panic, host_reply, host_service, Funcs, Limiter, PoolMemory, Slot, SlotData,
    NOT_ARMED,
};
pub(crate) use stacks::fiber_remaining;

/// How often the engine's epoch advances: the resolution of call timeouts.
const TICK: Duration = Duration::from_millis(2);

/// Ticks made by every engine's ticker, counted before each engine's epoch advances. A slot
/// that sees the count unchanged since it last set its deadline keeps that deadline: no epoch
/// advanced meanwhile, except perhaps the one whose count it saw just before the set, so the
/// deadline is at most one tick short, and the budget has one tick of slack for it. This spares
/// a call into wasmtime on almost every call.
static TICKS: AtomicU64 = AtomicU64::new(0);

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
    /// Bytes of linear memory all the instances of one plugin's pool may have together
    /// (`None`, the default: four times `max_memory`), so that a plugin's share of the host
    /// does not grow with the pool size. Growing past it fails, as for `max_memory`.
    pub max_pool_memory: Option<usize>,
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
    /// Bytes a module may have to be compiled (default 32 MiB): a bigger module is refused
    /// before the compiler sees it.
    pub max_module_bytes: usize,
    /// Bytes one function's body may have (default 256 KiB), refused before the compiler sees
    /// it. The compiler works on one function at a time, and a function written to make it
    /// work hard takes about 330 MiB of the host's memory and 2.5 s a MiB of its code
    /// (`examples/compile_cost.rs`): this bound is the bound on a compile's memory (about
    /// 110 MiB at the default). Real plugins' largest functions are a few KiB to tens of KiB.
    pub max_function_bytes: usize,
    /// The longest a load waits for a module to compile (default 10 s) before it is refused;
    /// the plugin it would replace keeps serving. The compiler cannot be stopped, so the
    /// compile runs on to its end on its own thread and is dropped, and the next compile
    /// waits for it first (see `LoadError::WasmTooCostly`). Modules found in the
    /// compile cache are not compiled and take no time from it.
    pub max_compile_time: Duration,
}

impl Default for WasmLimits {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        WasmLimits {
            call_timeout: Duration::from_secs(1),
            max_memory: 64 << 20,
            max_pool_memory: None,
            max_table_elements: 20_000,
            max_instances: 1,
            max_tables: 4,
            max_memories: 1,
            pool_size: (2 * cpus).max(2),
            when_exhausted: Exhausted::Wait(Duration::from_secs(1)),
            max_stack: 512 << 10,
            max_module_bytes: 32 << 20,
            max_function_bytes: 256 << 10,
            max_compile_time: Duration::from_secs(10),
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
    cache: Option<cache::Cache>,
    /// Compatibility key of compiled code: wasmtime version and engine configuration.
    compat: u64,
    /// Content hash to code, for reuse while something still holds it.
    loaded: Mutex<HashMap<[u8; 32], Weak<Code>>>,
    compiles: AtomicUsize,
    /// Runs compiles under `max_compile_time`.
    compiler: compile::Compiler,
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
    /// An engine with `limits`, caching compiled modules in `cache` (at most `cache_cap`
    /// bytes) if it is given and private to this user.
    pub fn new(
        limits: WasmLimits,
        cache: Option<PathBuf>,
        cache_cap: u64,
    ) -> Result<WasmLoader, LoadError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Linear memory never moves (32-bit memories fit the default 4 GiB reservation), which
        // lets cranelift hoist the base out of loops and the slots keep a view of it.
        config.memory_may_move(false);
        config.max_wasm_stack(limits.max_stack);
        // An async call's steps run on fibers (see `Slot::compute`), whose stacks hold the
        // guest's stack and the host functions it calls, nested guests included: room for
        // four of them (the sandbox's default nesting depth), each with the host's frames.
        let guest = limits.max_stack + crate::backend::host::HOST_STACK;
        config.async_stack_size(4 * guest + crate::backend::host::HOST_STACK);
        // Mapped by swapkit, so that a nested call's stack check finds them (see `stacks`).
        #[cfg(unix)]
        config.with_host_stack(Arc::new(stacks::Stacks));
        let engine =
            Engine::new(&config).map_err(|e| LoadError::WasmEngine { source: e.into() })?;
        let mut linker = Linker::new(&engine);
        let link_error = |e: wasmtime::Error| LoadError::WasmEngine { source: e.into() };
        linker
            .func_wrap("swapkit", "log", host_log)
            .map_err(link_error)?;
        linker
            .func_wrap("swapkit", "panic", host_panic)
            .map_err(link_error)?;
        linker
            .func_wrap("swapkit", "service", host_service)
            .map_err(link_error)?;
        linker
            .func_wrap("swapkit", "reply", host_reply)
            .map_err(link_error)?;
        let stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), stop.clone()).map_err(|e| LoadError::WasmEngine {
            source: format!("cannot start the epoch ticker thread: {e}").into(),
        })?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        "swapkit-cache-v2".hash(&mut hasher);
        let compat = hasher.finish();
        // One tick for the tick under way when a call starts, one for a deadline kept a tick
        // late (see `TICKS`).
        let deadline_ticks = (limits.call_timeout.as_nanos() / TICK.as_nanos()).max(1) as u64 + 2;
        let cache = cache.and_then(|dir| cache::Cache::open(&dir, cache_cap));
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
            compiler: compile::Compiler::default(),
        })
    }

    /// How many modules this loader has compiled (not read from the cache).
    pub fn compiles(&self) -> usize {
        self.compiles.load(Ordering::Relaxed)
    }

    /// Reads, checks and compiles (or reuses) one `.wasm` artifact, and reads its manifest.
    pub fn load(
        &self,
        path: &Path,
        bytes: Vec<u8>,
        hash: [u8; 32],
    ) -> Result<Arc<Code>, LoadError> {
        if let Some(code) = crate::lock::lock(&self.loaded)
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
        let (manifest, lanes) = probe(&wasm, &origin)?;
        // Lanes pass their bytes as they are, and wasm is little-endian.
        let lanes = if cfg!(target_endian = "little") {
            let lanes: std::collections::HashSet<u64> = lanes.into_iter().collect();
            LaneTable::build(&manifest, |hash| {
                lanes
                    .contains(&hash)
                    .then_some(std::ptr::NonNull::<u8>::dangling().as_ptr() as *const ())
            })
        } else {
            LaneTable::default()
        };
        let code = Arc::new(Code {
            lanes,
            entry: Entry::Wasm(wasm),
            name: manifest.name.as_str().into(),
            version: manifest.version.as_str().into(),
            manifest,
            backend: BackendKind::Wasm,
            content_hash: hash,
            origin,
        });
        let mut loaded = crate::lock::lock(&self.loaded);
        loaded.retain(|_, w| w.strong_count() > 0);
        loaded.insert(hash, Arc::downgrade(&code));
        Ok(code)
    }
}

fn spawn_ticker(engine: Engine, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("swapkit-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                TICKS.fetch_add(1, Ordering::Relaxed);
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

/// The lane exports: both or neither, with exactly these types.
const LANE_EXPORTS: [(&str, &[wasmtime::ValType], &[wasmtime::ValType]); 2] = [
    ("swapkit_lanes", &[], &[wasmtime::ValType::I32]),
    (
        "swapkit_lane",
        &[
            wasmtime::ValType::I32,
            wasmtime::ValType::I32,
            wasmtime::ValType::I64,
            wasmtime::ValType::I64,
            wasmtime::ValType::I64,
            wasmtime::ValType::I64,
            wasmtime::ValType::I64,
            wasmtime::ValType::I64,
        ],
        &[wasmtime::ValType::I64],
    ),
];

/// Checks that the module speaks ABI v1: the entry points, a memory, and no import beyond the
/// host functions; and the lane exports, if it has them.
fn check_shape(path: &Path, module: &Module) -> Result<(), LoadError> {
    let bad = |reason: String| LoadError::WasmShape {
        path: path.into(),
        reason,
    };
    for import in module.imports() {
        let known = import.module() == "swapkit"
            && matches!(import.name(), "log" | "panic" | "service" | "reply");
        if !known {
            return Err(bad(format!(
                "it imports `{}.{}`, but a plugin may import only the swapkit host functions \
                 (`swapkit.log`, `swapkit.panic`, `swapkit.service`, `swapkit.reply`); build it \
                 with swapkit-guest for wasm32-unknown-unknown, without wasm-bindgen or WASI",
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
    let found = LANE_EXPORTS
        .iter()
        .filter(|(name, ..)| exports.contains_key(name))
        .count();
    if found == 1 {
        return Err(bad(
            "it exports one of `swapkit_lanes` and `swapkit_lane` without the other".into(),
        ));
    }
    for (name, params, results) in LANE_EXPORTS.iter().take(found) {
        let Some(wasmtime::ExternType::Func(f)) = exports.get(name) else {
            return Err(bad(format!("export `{name}` is not a function")));
        };
        let same = |a: &mut dyn ExactSizeIterator<Item = wasmtime::ValType>,
                    b: &[wasmtime::ValType]| {
            a.len() == b.len() && a.zip(b).all(|(x, y)| wasmtime::ValType::eq(&x, y))
        };
        if !same(&mut f.params(), params) || !same(&mut f.results(), results) {
            return Err(bad(format!("export `{name}` has the wrong signature: {f}")));
        }
    }
    Ok(())
}

/// Reads the manifest and the lane table from a fresh instance, before any hook runs.
fn probe(wasm: &Arc<WasmModule>, origin: &str) -> Result<(Manifest, Vec<u64>), LoadError> {
    let failed = |reason: String| LoadError::Manifest {
        origin: origin.to_owned(),
        source: reason.into(),
    };
    let ctx = Arc::new(GuestCtx::probe());
    let mut slot = wasm
        .slot(ctx, wasm.pool_memory(), true)
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
            if reply.bytes.len() > crate::backend::MAX_MANIFEST {
                return Err(format!(
                    "the manifest has {} bytes, more than the {} a manifest may have",
                    reply.bytes.len(),
                    crate::backend::MAX_MANIFEST
                ));
            }
            Manifest::decode(reply.bytes).map_err(|e| e.to_string())
        },
    );
    let manifest = match result {
        Ok(Ok(m)) => m,
        Ok(Err(reason)) => return Err(failed(reason)),
        Err((fault, _)) => {
            return Err(failed(format!(
                "the manifest entry failed: {}",
                fault.message
            )))
        }
    };
    if let Some(reason) = crate::backend::manifest_problem(&manifest) {
        return Err(failed(reason));
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
    // A lane serves one method, so a table longer than the manifest's methods is a lie.
    let methods: usize = manifest.interfaces.iter().map(|i| i.methods.len()).sum();
    let lanes = slot.lane_hashes(deadline, methods as u64).map_err(failed)?;
    Ok((manifest, lanes))
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
    /// The memory account of a new pool of this module.
    fn pool_memory(&self) -> Arc<PoolMemory> {
        let limits = &self.shared.limits;
        PoolMemory::new(
            limits
                .max_pool_memory
                .unwrap_or(limits.max_memory.saturating_mul(4)),
        )
    }

    /// A fresh wasm instance with its store, its memory counted in `pool`.
    fn slot(
        &self,
        ctx: Arc<GuestCtx>,
        pool: Arc<PoolMemory>,
        quiet: bool,
    ) -> Result<Slot, wasmtime::Error> {
        let limits = &self.shared.limits;
        let data = SlotData {
            limiter: Limiter {
                memory: limits.max_memory,
                table_elements: limits.max_table_elements,
                instances: limits.max_instances,
                tables: limits.max_tables,
                memories: limits.max_memories,
                pool,
                held: 0,
                pending: 0,
                hit: None,
            },
            ctx,
            quiet,
            panic: None,
            reply: Vec::new(),
            nesting: false,
            yield_until: None,
        };
        let mut store = Store::new(&self.shared.engine, data);
        store.limiter(|d| &mut d.limiter);
        store.epoch_deadline_callback(slot::on_epoch);
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
        // Optional (a plugin built before lanes has neither); `check_shape` checked the types.
        let lanes = f0(&mut store, "swapkit_lanes").ok();
        let lane = instance.get_typed_func(&mut store, "swapkit_lane").ok();
        let out_slot = out.call(&mut store, ())?;
        Ok(Slot {
            view: slot::View::of(&memory, &store),
            store,
            f: Funcs {
                memory,
                abi,
                manifest,
                load,
                init,
                free,
                input,
                fiber_call: Box::new(call.clone()),
                call,
                lanes,
                lane,
                out_slot,
            },
            in_ptr: 0,
            in_cap: 0,
            armed: NOT_ARMED,
        })
    }
}
