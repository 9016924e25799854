//! Generations: one consistent, immutable set of plugin instances, and the ledger that tracks
//! them from publication to retirement.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::backend::Instance;
use crate::error::CallError;
use crate::lock::lock;
use crate::route::{Route, Variant};
use crate::status::{DrainedGeneration, PinInfo};

/// One exported interface of one plugin of a generation.
struct Export {
    hash: u64,
    name: Box<str>,
    interface: u32,
    /// Another plugin of the generation exports the same interface.
    shared: bool,
    /// For an export of a plugin with a canary: the canary's interface number for the same
    /// hash; [`NO_ALT`] otherwise.
    alt: u32,
    /// The interface's direct lanes in the plugin, by method: kept here, next to what
    /// `resolve` reads, so that a call finds its lane with one more load.
    lanes: *const [*const ()],
    /// The plugin's instance, one of the generation's `plugins`, so that `resolve` reaches it
    /// with one load.
    instance: *const Instance,
}

// SAFETY: `instance` points to an instance the generation holds, and `lanes` into the lane
// table of its code (immutable once built); both live as long as the generation.
unsafe impl Send for Export {}
// SAFETY: as above.
unsafe impl Sync for Export {}
// SAFETY: as for `Export`; `handle` is the native instance's guest handle, an address only
// passed back to the same plugin, which a native plugin's instance allows from any thread
// (its `Plugin` trait requires `Send + Sync`).
unsafe impl Send for FastLanes {}
// SAFETY: as above; the entries never change once built.
unsafe impl Sync for FastLanes {}

const NO_ALT: u32 = u32::MAX;

/// How many exports a generation keeps ready for a lane call inline ([`FastLanes`]), and how
/// many methods of each.
const FAST_EXPORTS: usize = 4;
const FAST_METHODS: usize = 8;

/// An export of a native plugin that a client of any plugin reaches with nothing to decide
/// (one plugin exports the interface, it has no canary and no dependencies), with what a call
/// of one of its lanes needs copied next to its hash: the call goes from the generation's
/// address to the plugin's entry point with one load, where [`Generation::resolve`] reads the
/// export vector, the export, its lane table and its instance, one after another (issue 37:
/// that chain of loads was most of a lane call's cost over a `dyn` call).
#[derive(Clone, Copy)]
pub(crate) struct FastLane {
    hash: u64,
    /// The plugin's lanes for methods `0..FAST_METHODS`, null where it has none.
    lanes: [*const (); FAST_METHODS],
    header: &'static swapkit_abi::PluginHeader,
    handle: *mut std::ffi::c_void,
    instance: *const Instance,
}

/// What a call found in [`Generation::fast_lane`]: everything the native lane call needs.
pub(crate) struct FastCall<'g> {
    pub instance: &'g Instance,
    pub header: &'static swapkit_abi::PluginHeader,
    pub handle: *mut std::ffi::c_void,
    pub lane: *const (),
}

/// Up to [`FAST_EXPORTS`] fast exports, inline in the generation.
struct FastLanes {
    len: usize,
    entries: [std::mem::MaybeUninit<FastLane>; FAST_EXPORTS],
}

impl FastLanes {
    fn of(exports: &[Export]) -> FastLanes {
        let mut fast = FastLanes {
            len: 0,
            entries: [std::mem::MaybeUninit::uninit(); FAST_EXPORTS],
        };
        for e in exports {
            if fast.len == FAST_EXPORTS {
                break;
            }
            let instance = e.instance();
            if e.shared || e.alt != NO_ALT || instance.scoped {
                continue;
            }
            let Some((header, handle)) = instance.native_lane_target() else {
                continue;
            };
            // SAFETY: the lanes of the instance's code (see `Export`).
            let lanes = unsafe { &*e.lanes };
            let mut first = [std::ptr::null(); FAST_METHODS];
            for (to, from) in first.iter_mut().zip(lanes) {
                *to = *from;
            }
            fast.entries[fast.len].write(FastLane {
                hash: e.hash,
                lanes: first,
                header,
                handle,
                instance: e.instance,
            });
            fast.len += 1;
        }
        fast
    }

    fn as_slice(&self) -> &[FastLane] {
        // SAFETY: the first `len` entries were written in `of`, and never change.
        unsafe { std::slice::from_raw_parts(self.entries.as_ptr().cast(), self.len) }
    }
}

impl Export {
    /// The plugin's instance.
    fn instance(&self) -> &Instance {
        // SAFETY: an instance the generation that holds this export holds (see `Export`).
        unsafe { &*self.instance }
    }

    /// What a call resolves to through this export of a plugin without a canary.
    #[inline(always)]
    fn resolved(&self) -> Resolved<'_> {
        Resolved {
            instance: self.instance(),
            interface: self.interface,
            timed: false,
            // SAFETY: the lanes of the instance's code (see `Export`).
            lanes: unsafe { &*self.lanes },
        }
    }
}

/// What a call resolved to.
pub(crate) struct Resolved<'g> {
    pub instance: &'g Instance,
    pub interface: u32,
    /// The plugin has a canary, and this call is one of those timed for its comparison.
    pub timed: bool,
    /// The interface's direct lanes in the instance, by method.
    pub lanes: &'g [*const ()],
}

/// What a client asks a generation for.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub interface: &'static str,
    pub hash: u64,
    pub methods: &'static [&'static str],
    pub plugin: Option<Arc<str>>,
}

/// A labelled pin, for drain reports.
struct PinRecord {
    id: u64,
    label: String,
    since: Instant,
}

/// One published set of plugins. Immutable once built, except for pin bookkeeping.
pub(crate) struct Generation {
    pub id: u64,
    /// In dependency order: dependencies first. A canary, if any, is last.
    pub plugins: Vec<Arc<Instance>>,
    exports: Vec<Export>,
    /// The native exports a lane call reaches without deciding anything, inline.
    fast: FastLanes,
    /// How calls are split between a plugin and its canary, if one runs.
    route: Option<Route>,
    pub created: Instant,
    superseded: OnceLock<Instant>,
    pins: AtomicUsize,
    labels: Mutex<Vec<PinRecord>>,
    ledger: Arc<Ledger>,
    /// [`ALIVE`] until dropped: debug builds check it on every call, so a call that reached a
    /// freed generation fails loudly in tests instead of silently.
    alive: AtomicU64,
}

const ALIVE: u64 = 0x5741_504b_4954_4c56;

impl Generation {
    /// Generation `id` of `plugins`; with `route`, its canary is the last plugin, and its
    /// exports are reached only through the route.
    pub fn new(
        id: u64,
        plugins: Vec<Arc<Instance>>,
        route: Option<Route>,
        ledger: Arc<Ledger>,
    ) -> Generation {
        let mut exports: Vec<Export> = vec![];
        for (p, inst) in plugins.iter().enumerate() {
            if route.as_ref().is_some_and(|r| r.canary == p) {
                continue;
            }
            for (i, decl) in inst.code.manifest.interfaces.iter().enumerate() {
                let alt = route
                    .as_ref()
                    .filter(|r| r.stable == p)
                    .and_then(|r| {
                        let canary = &plugins[r.canary].code.manifest.interfaces;
                        canary.iter().position(|c| c.hash == decl.hash)
                    })
                    .map_or(NO_ALT, |i| i as u32);
                exports.push(Export {
                    hash: decl.hash,
                    name: decl.name.as_str().into(),
                    interface: i as u32,
                    shared: false,
                    alt,
                    lanes: inst.code.lanes.of(i as u32),
                    instance: Arc::as_ptr(inst),
                });
            }
        }
        for i in 0..exports.len() {
            let shared = exports
                .iter()
                .enumerate()
                .any(|(j, e)| j != i && e.name == exports[i].name);
            exports[i].shared = shared;
        }
        let fast = FastLanes::of(&exports);
        Generation {
            id,
            plugins,
            exports,
            fast,
            route,
            created: Instant::now(),
            superseded: OnceLock::new(),
            pins: AtomicUsize::new(0),
            labels: Mutex::new(vec![]),
            ledger,
            alive: AtomicU64::new(ALIVE),
        }
    }

    /// Whether the generation has not been dropped. Only meaningful as a debug check.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed) == ALIVE
    }

    /// How calls are split between a plugin and its canary, if one runs.
    pub fn route(&self) -> Option<&Route> {
        self.route.as_ref()
    }

    /// Finds the instance and interface number that serve `target`. This is on the call path:
    /// a short scan of a few entries, comparing hashes only. The hash covers the interface's
    /// name as well as its signature, and a load refuses an interface whose name matches the
    /// host's but whose hash does not, so an equal hash is the same interface.
    ///
    /// A plugin with a canary is served by the version its route chooses; `pin` is the
    /// choice of the pin the call runs under.
    #[inline(always)]
    pub fn resolve(
        &self,
        target: &Target,
        pin: Option<&OnceLock<Variant>>,
    ) -> Result<Resolved<'_>, CallError> {
        // The common case inline: a client of any plugin, whose interface one plugin exports
        // with no canary. Inlined, the result stays in registers; returned through memory, its
        // lane slice was read back in halves of one 16-byte store, which stalls.
        if target.plugin.is_none() {
            if let Some(e) = self.exports.iter().find(|e| e.hash == target.hash) {
                if !e.shared && e.alt == NO_ALT {
                    return Ok(e.resolved());
                }
            }
        }
        self.resolve_named(target, pin)
    }

    /// The native lane of `method` of the interface `target` names, where a call of it has
    /// nothing to decide (see [`FastLane`]); `None` sends the call through
    /// [`resolve`](Self::resolve). A pin's choice does not matter here: it only chooses
    /// between a plugin and its canary, and a plugin with a canary is never fast.
    #[inline(always)]
    pub fn fast_lane(&self, target: &Target, method: u32) -> Option<FastCall<'_>> {
        let method = method as usize;
        if method >= FAST_METHODS || target.plugin.is_some() {
            return None;
        }
        let f = self
            .fast
            .as_slice()
            .iter()
            .find(|f| f.hash == target.hash)?;
        let lane = f.lanes[method];
        if lane.is_null() {
            return None;
        }
        Some(FastCall {
            // SAFETY: an instance this generation holds (see `Export`).
            instance: unsafe { &*f.instance },
            header: f.header,
            handle: f.handle,
            lane,
        })
    }

    /// [`resolve`](Self::resolve) for a client of a named plugin, an interface several
    /// plugins export, a plugin with a canary, and a miss.
    #[inline(never)]
    fn resolve_named(
        &self,
        target: &Target,
        pin: Option<&OnceLock<Variant>>,
    ) -> Result<Resolved<'_>, CallError> {
        for e in &self.exports {
            if e.hash != target.hash {
                continue;
            }
            match &target.plugin {
                Some(name) if **name != *e.instance().code.name => continue,
                None if e.shared => return Err(self.ambiguous(target)),
                _ if e.alt != NO_ALT => return Ok(self.routed(e, pin)),
                _ => return Ok(e.resolved()),
            }
        }
        Err(CallError::NotExported {
            interface: target.interface,
            generation: self.id,
        })
    }

    /// The half of [`resolve`](Self::resolve) for a plugin with a canary: out of line, so
    /// that the common path stays small.
    #[inline(never)]
    fn routed(&self, e: &Export, pin: Option<&OnceLock<Variant>>) -> Resolved<'_> {
        let route = self
            .route
            .as_ref()
            .expect("an export with an alternative has a route");
        let variant = route.choose(pin);
        let interface = match variant {
            Variant::Stable => e.interface,
            Variant::Canary => e.alt,
        };
        let instance = &self.plugins[route.index(variant)];
        Resolved {
            instance,
            interface,
            timed: route.sampled(variant),
            lanes: instance.code.lanes.of(interface),
        }
    }

    #[cold]
    fn ambiguous(&self, target: &Target) -> CallError {
        let plugins: Vec<&str> = self
            .exports
            .iter()
            .filter(|e| &*e.name == target.interface)
            .map(|e| &*e.instance().code.name)
            .collect();
        CallError::Ambiguous {
            interface: target.interface,
            plugins: plugins.join(", "),
            generation: self.id,
        }
    }

    /// The interface hash this generation exports under `name`, if any, with the plugin (the
    /// stable version of a plugin with a canary).
    pub fn exported(&self, name: &str) -> Option<(&Instance, usize)> {
        self.exports
            .iter()
            .find(|e| &*e.name == name)
            .map(|e| (e.instance(), e.interface as usize))
    }

    /// The names of the plugins that export the interface of `hash`, in dependency order
    /// (a canary is reached through its stable version's name).
    pub fn exporters(&self, hash: u64) -> Vec<Arc<str>> {
        self.exports
            .iter()
            .filter(|e| e.hash == hash)
            .map(|e| e.instance().code.name.clone())
            .collect()
    }

    pub fn mark_superseded(&self) {
        let _ = self.superseded.set(Instant::now());
    }

    pub fn superseded(&self) -> Option<Instant> {
        self.superseded.get().copied()
    }

    pub fn pin_count(&self) -> usize {
        self.pins.load(Ordering::Relaxed)
    }

    pub fn add_pin(&self, label: Option<String>) -> Option<u64> {
        self.pins.fetch_add(1, Ordering::Relaxed);
        let label = label?;
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        lock(&self.labels).push(PinRecord {
            id,
            label,
            since: Instant::now(),
        });
        Some(id)
    }

    pub fn remove_pin(&self, label: Option<u64>) {
        self.pins.fetch_sub(1, Ordering::Relaxed);
        if let Some(id) = label {
            lock(&self.labels).retain(|r| r.id != id);
        }
    }

    pub fn pin_labels(&self) -> Vec<PinInfo> {
        lock(&self.labels)
            .iter()
            .map(|r| PinInfo {
                label: r.label.clone(),
                held_for: r.since.elapsed(),
            })
            .collect()
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.alive.store(0, Ordering::Relaxed);
        let _span = tracing::info_span!("retire", generation = self.id).entered();
        let plugins: Vec<(String, String)> = self
            .plugins
            .iter()
            .map(|p| (p.code.name.to_string(), p.code.version.to_string()))
            .collect();
        // Reverse dependency order: a plugin is freed before the plugins it depends on. An
        // instance shared with a newer generation is only released here, not freed.
        while let Some(p) = self.plugins.pop() {
            drop(p);
        }
        let drained_after = self.superseded.get().map(|t| t.elapsed());
        tracing::info!(generation = self.id, ?drained_after, "generation retired");
        self.ledger.drained(DrainedGeneration {
            id: self.id,
            plugins,
            drained_after,
            at: Instant::now(),
        });
    }
}

/// A superseded generation that may still be held.
pub(crate) struct Retiring {
    pub id: u64,
    pub generation: Weak<Generation>,
    pub since: Instant,
    pub reported: bool,
}

#[derive(Default)]
pub(crate) struct LedgerState {
    pub retiring: Vec<Retiring>,
    pub drained: VecDeque<DrainedGeneration>,
    pub closed: bool,
}

impl LedgerState {
    /// The superseded generations still held. Drop them only after releasing the lock.
    pub fn alive(&self) -> Vec<Arc<Generation>> {
        self.retiring
            .iter()
            .filter_map(|r| r.generation.upgrade())
            .collect()
    }
}

/// Superseded generations, and the record of drained ones. Shared by the swapper, its
/// generations and the drain watchdog.
///
/// Never drop an upgraded `Arc<Generation>` while holding the lock: if it is the last one,
/// the generation's `Drop` takes the lock again.
#[derive(Default)]
pub(crate) struct Ledger {
    state: Mutex<LedgerState>,
    changed: Condvar,
}

/// How many drained generations the ledger remembers for status reports.
const DRAINED_KEPT: usize = 64;

impl Ledger {
    pub fn lock(&self) -> MutexGuard<'_, LedgerState> {
        lock(&self.state)
    }

    pub fn retiring(&self, generation: &Arc<Generation>) {
        generation.mark_superseded();
        let mut state = self.lock();
        state.retiring.push(Retiring {
            id: generation.id,
            generation: Arc::downgrade(generation),
            since: Instant::now(),
            reported: false,
        });
        self.changed.notify_all();
    }

    fn drained(&self, record: DrainedGeneration) {
        let mut state = self.lock();
        state.retiring.retain(|r| r.id != record.id);
        if state.drained.len() == DRAINED_KEPT {
            state.drained.pop_front();
        }
        state.drained.push_back(record);
        self.changed.notify_all();
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    pub fn wait<'a>(
        &self,
        guard: MutexGuard<'a, LedgerState>,
        timeout: Duration,
    ) -> MutexGuard<'a, LedgerState> {
        crate::lock::wait_timeout(&self.changed, guard, timeout)
    }
}
