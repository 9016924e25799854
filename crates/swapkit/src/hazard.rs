//! How a call holds a generation with no lock and no shared write: per-thread hazard slots
//! with asymmetric fences.
//!
//! [`HazardCell`] holds an `Arc<T>` this way; the current generation is one ([`Current`]), and
//! so is each `#[patchable]` function's patch slot.
//!
//! # The protocol
//!
//! The current generation is a raw pointer that owns one strong reference. To hold it for a
//! call, a thread writes the pointer into a slot that only it writes (its *hazard slot*), then
//! reads the current pointer again; if it is unchanged, the generation is protected until the
//! thread clears its slot. To retire a generation, the swapper swaps the pointer, puts the old
//! generation on a retiring list, and scans every slot: a generation no slot names is released.
//!
//! Both sides need a full fence between their store and their load (the store-buffer pattern).
//! On Linux the reader's fence is only a compiler fence, and the writer pays for both with
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which runs a full barrier on every thread of
//! the process. That is how the call path stays at plain loads and stores. Where membarrier is
//! not available, both sides use `fence(SeqCst)`: still correct, a little slower.
//!
//! # Retirement is driven by the last call, never by a timer
//!
//! When a call leaves, it clears its slot, fences, and reads the current pointer. If the
//! generation it used is no longer current, it runs the scan itself. By the same store-buffer
//! argument, either the swapper's scan sees the cleared slot, or the leaving call sees the new
//! pointer and scans: the last call out of an old generation always retires it. Only calls
//! that were in flight across a swap ever scan.
//!
//! Arcs still count explicit [`Pin`](crate::Pin)s: the retiring list holds one reference, and
//! the generation is dropped (and its plugins freed) when that and every pin are gone.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};

use crate::generation::Generation;

/// Hazard slots per thread: the depth of nested calls (plugin to host to plugin) a thread can
/// protect from its own record. Deeper calls borrow a spare record, under a lock.
const DEPTH: usize = 8;

/// One thread's hazard slots, on a cache line of its own so that no other thread writes to it.
#[repr(align(128))]
struct Record {
    slots: [AtomicPtr<()>; DEPTH],
    owned: AtomicBool,
}

impl Record {
    fn new() -> Record {
        Record {
            slots: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            owned: AtomicBool::new(true),
        }
    }
}

/// Every record ever made. Records are leaked and reused by later threads, so a scan can read
/// them without any reference counting.
static REGISTRY: Mutex<Vec<&'static Record>> = Mutex::new(Vec::new());

fn registry() -> MutexGuard<'static, Vec<&'static Record>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes a free record, or makes one.
fn claim_record() -> &'static Record {
    let mut all = registry();
    for r in all.iter() {
        if r.owned
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return r;
        }
    }
    let r: &'static Record = Box::leak(Box::new(Record::new()));
    all.push(r);
    r
}

/// This thread's record and how many of its slots are in use. It has no destructor, so the
/// hot path reads it with no "is it alive" check; [`Owner`] gives the record back at exit.
struct Local {
    record: Cell<Option<&'static Record>>,
    depth: Cell<usize>,
}

/// Gives this thread's record back when the thread exits.
struct Owner;

impl Drop for Owner {
    fn drop(&mut self) {
        // Calls made later in this thread's teardown borrow spare records instead.
        if let Some(r) = LOCAL.with(|l| l.record.take()) {
            r.owned.store(false, Ordering::Release);
        }
    }
}

thread_local! {
    static LOCAL: Local = const { Local { record: Cell::new(None), depth: Cell::new(0) } };
    static OWNER: Owner = const { Owner };
}

// ---- fences ----

static FENCES: Once = Once::new();
static ASYMMETRIC: AtomicBool = AtomicBool::new(false);

/// Decides, once per process and before any reader exists, which fences to use.
fn init_fences() {
    FENCES.call_once(|| ASYMMETRIC.store(membarrier::register(), Ordering::Relaxed));
}

/// The reader's fence.
#[inline(always)]
fn light_fence() {
    if ASYMMETRIC.load(Ordering::Relaxed) {
        compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
}

/// The writer's fence: a full barrier on every thread of the process.
///
/// It settles the fence mode first, so a writer never pairs a plain fence with readers that
/// already use compiler fences.
fn heavy_fence() {
    init_fences();
    if !(ASYMMETRIC.load(Ordering::Relaxed) && membarrier::barrier()) {
        fence(Ordering::SeqCst);
    }
}

#[cfg(target_os = "linux")]
mod membarrier {
    const CMD_PRIVATE_EXPEDITED: libc::c_long = 8;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 16;

    /// Registers the process for private expedited barriers; false if the kernel refuses.
    pub fn register() -> bool {
        // SAFETY: membarrier takes two integer arguments and touches no memory of ours.
        unsafe { libc::syscall(libc::SYS_membarrier, CMD_REGISTER_PRIVATE_EXPEDITED, 0) == 0 }
    }

    /// Runs a barrier on every thread of the process.
    pub fn barrier() -> bool {
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_membarrier, CMD_PRIVATE_EXPEDITED, 0) == 0 }
    }
}

#[cfg(not(target_os = "linux"))]
mod membarrier {
    pub fn register() -> bool {
        false
    }

    pub fn barrier() -> bool {
        false
    }
}

// ---- a protected, swappable pointer ----

/// An `Arc<T>` (or nothing) that calls can hold for their length without a lock or a shared
/// write, and that can be swapped at any time. A superseded value is released once no hazard
/// slot names it.
pub(crate) struct HazardCell<T> {
    /// Owns one strong reference (`Arc::into_raw`), or is null.
    ptr: AtomicPtr<T>,
    /// Superseded values, each holding one strong reference until no slot names it.
    retiring: Mutex<Vec<Arc<T>>>,
}

impl<T> HazardCell<T> {
    /// An empty cell, usable in a `static`.
    pub const fn empty() -> HazardCell<T> {
        HazardCell {
            ptr: AtomicPtr::new(ptr::null_mut()),
            retiring: Mutex::new(Vec::new()),
        }
    }

    pub fn new(value: Arc<T>) -> HazardCell<T> {
        init_fences();
        HazardCell {
            ptr: AtomicPtr::new(Arc::into_raw(value).cast_mut()),
            retiring: Mutex::new(vec![]),
        }
    }

    /// Whether the cell holds a value: one load, for fast paths that only care about empty.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.ptr.load(Ordering::Acquire).is_null()
    }

    /// Protects the current value for as long as the guard lives, or returns `None` if the
    /// cell is empty. No lock, no shared write: a store to this thread's own slot, a compiler
    /// fence and two loads.
    #[inline]
    pub fn enter(&self) -> Option<Guard<'_, T>> {
        self.protect::<true>()
    }

    /// [`enter`](Self::enter), with the emptiness check compiled out when the caller knows
    /// the cell is never empty.
    #[inline(always)]
    fn protect<const MAY_BE_EMPTY: bool>(&self) -> Option<Guard<'_, T>> {
        let (slot, held) = match LOCAL.with(take_slot) {
            Some(found) => found,
            // Nested too deep, or this thread is exiting.
            None => spare_slot(),
        };
        loop {
            let g = self.ptr.load(Ordering::Acquire);
            if MAY_BE_EMPTY && g.is_null() {
                release(slot, &held);
                return None;
            }
            slot.store(g.cast(), Ordering::Relaxed);
            light_fence();
            // If `g` is still in the cell after our slot was published, any swap that removes
            // it comes later, and the scan after that swap will see our slot.
            if self.ptr.load(Ordering::Acquire) == g {
                // SAFETY: `g` is protected by our slot: it is not released while the slot
                // names it, and it was in the cell (so alive) when the slot was published.
                let value = unsafe { &*g };
                return Some(Guard {
                    cell: self,
                    value,
                    slot,
                    held,
                });
            }
        }
    }

    /// A strong reference to the current value.
    pub fn load_full(&self) -> Option<Arc<T>> {
        self.enter().map(|guard| guard.to_arc())
    }

    /// Puts `next` in the cell and returns the superseded value, which is released as soon as
    /// no call is in it (perhaps here).
    pub fn swap(&self, next: Option<Arc<T>>) -> Option<Arc<T>> {
        init_fences();
        let raw = next.map_or(ptr::null_mut(), |n| Arc::into_raw(n).cast_mut());
        let old = self.ptr.swap(raw, Ordering::SeqCst);
        if old.is_null() {
            return None;
        }
        // SAFETY: `old` came from `Arc::into_raw`; the strong reference it owned moves here.
        let old = unsafe { Arc::from_raw(old) };
        let returned = old.clone();
        self.retiring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(old);
        self.reclaim();
        Some(returned)
    }

    /// Releases every superseded value that no hazard slot names.
    pub fn reclaim(&self) {
        let released: Vec<Arc<T>> = {
            let mut retiring = self.retiring.lock().unwrap_or_else(|e| e.into_inner());
            if retiring.is_empty() {
                return;
            }
            heavy_fence();
            let records = registry();
            let (held, free): (Vec<_>, Vec<_>) = retiring
                .drain(..)
                .partition(|g| in_use(&records, Arc::as_ptr(g).cast()) > 0);
            *retiring = held;
            free
        };
        // Dropped outside the locks: a last reference may run arbitrary code (on_free).
        drop(released);
    }

    /// How many calls hold `value` right now.
    pub fn calls_in(&self, value: &T) -> usize {
        heavy_fence();
        in_use(&registry(), (value as *const T).cast())
    }

    /// Whether `value` is on the retiring list (which holds a reference to it).
    pub fn is_retiring(&self, value: &T) -> bool {
        self.retiring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|g| ptr::eq(&**g, value))
    }
}

impl<T> Drop for HazardCell<T> {
    fn drop(&mut self) {
        // No guard can exist: each borrows `self`.
        let raw = *self.ptr.get_mut();
        if !raw.is_null() {
            // SAFETY: the pointer owns one strong reference from `Arc::into_raw`.
            drop(unsafe { Arc::from_raw(raw) });
        }
        self.retiring
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// The current generation: a cell that is never empty.
pub(crate) struct Current(HazardCell<Generation>);

impl Current {
    pub fn new(generation: Arc<Generation>) -> Current {
        Current(HazardCell::new(generation))
    }

    /// Protects the current generation for as long as the guard lives.
    #[inline(always)]
    pub fn enter(&self) -> Guard<'_, Generation> {
        let Some(guard) = self.0.protect::<false>() else {
            unreachable!("the current generation is never empty")
        };
        debug_assert!(guard.get().is_alive(), "a call reached a freed generation");
        guard
    }

    pub fn load_full(&self) -> Arc<Generation> {
        self.0
            .load_full()
            .expect("the current generation is never empty")
    }

    pub fn swap(&self, next: Arc<Generation>) -> Arc<Generation> {
        self.0
            .swap(Some(next))
            .expect("the current generation is never empty")
    }

    pub fn calls_in(&self, generation: &Generation) -> usize {
        self.0.calls_in(generation)
    }

    pub fn is_retiring(&self, generation: &Generation) -> bool {
        self.0.is_retiring(generation)
    }
}

fn in_use(records: &[&'static Record], g: *const ()) -> usize {
    records
        .iter()
        .flat_map(|r| r.slots.iter())
        .filter(|s| ptr::eq(s.load(Ordering::Acquire), g))
        .count()
}

/// The next free slot of this thread's record, claiming a record on first use.
#[inline(always)]
fn take_slot(local: &Local) -> Option<(&'static AtomicPtr<()>, Held)> {
    let depth = local.depth.get();
    if depth >= DEPTH {
        return None;
    }
    let record = match local.record.get() {
        Some(r) => r,
        None => first_record(local)?,
    };
    local.depth.set(depth + 1);
    Some((&record.slots[depth], Held::Local(&local.depth)))
}

/// Claims this thread's record, on its first protected call; `None` once the thread is
/// exiting, when a record claimed now could never be given back.
#[cold]
fn first_record(local: &Local) -> Option<&'static Record> {
    // Touching OWNER registers its destructor, which gives the record back at exit.
    OWNER.try_with(|_| ()).ok()?;
    let r = claim_record();
    local.record.set(Some(r));
    Some(r)
}

/// A slot from a spare record, returned when the guard drops.
#[cold]
fn spare_slot() -> (&'static AtomicPtr<()>, Held) {
    let record = claim_record();
    (&record.slots[0], Held::Spare(record))
}

/// Where a guard's slot came from.
enum Held {
    /// This thread's record; the guard pops the depth back. The guard lives on this thread
    /// (it is `!Send`), inside the thread-local it points to.
    Local(*const Cell<usize>),
    /// A spare record, given back on drop.
    Spare(&'static Record),
}

/// Gives a slot back: pops this thread's depth, or frees a spare record.
#[inline(always)]
fn release(slot: &'static AtomicPtr<()>, held: &Held) {
    slot.store(ptr::null_mut(), Ordering::Release);
    match *held {
        // SAFETY: the pointer is to this thread's `LOCAL.depth`, which outlives the guard
        // (the guard is `!Send` and made while the thread-local was alive).
        Held::Local(depth) => unsafe { (*depth).set((*depth).get() - 1) },
        Held::Spare(record) => record.owned.store(false, Ordering::Release),
    }
}

/// A call's hold on one value of a [`HazardCell`]. Not `Send`: it must be dropped on the
/// thread that made it, in reverse order of creation.
pub(crate) struct Guard<'a, T> {
    cell: &'a HazardCell<T>,
    value: &'a T,
    slot: &'static AtomicPtr<()>,
    held: Held,
}

impl<'a, T> Guard<'a, T> {
    #[inline]
    pub fn get(&self) -> &'a T {
        self.value
    }

    /// A strong reference to the guarded value, to hold it past this guard (for example
    /// across an `.await`, where a guard cannot go).
    pub fn to_arc(&self) -> Arc<T> {
        let raw: *const T = self.value;
        // SAFETY: every value in a cell came from `Arc::into_raw`, and this one is protected
        // by the guard, so its strong count is at least one while we add ours.
        unsafe {
            Arc::increment_strong_count(raw);
            Arc::from_raw(raw)
        }
    }
}

impl<T> Drop for Guard<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        let g: *const T = self.value;
        release(self.slot, &self.held);
        light_fence();
        // Compared, never dereferenced: `g` may be freed by now.
        if !ptr::eq(self.cell.ptr.load(Ordering::Acquire), g) {
            self.cell.reclaim();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::Ledger;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Weak;

    fn generation(id: u64, ledger: &Arc<Ledger>) -> Arc<Generation> {
        Arc::new(Generation::new(id, vec![], ledger.clone()))
    }

    #[test]
    fn a_guard_keeps_a_superseded_generation_until_it_drops() {
        let ledger = Arc::new(Ledger::default());
        let current = Current::new(generation(1, &ledger));
        let guard = current.enter();
        let old: Weak<Generation> = Arc::downgrade(&current.swap(generation(2, &ledger)));
        assert!(old.upgrade().is_some(), "released under a live guard");
        assert_eq!(guard.get().id, 1);
        assert_eq!(current.calls_in(guard.get()), 1);
        drop(guard);
        assert!(old.upgrade().is_none(), "the last guard out retires it");
        assert_eq!(current.enter().get().id, 2);
    }

    #[test]
    fn an_unheld_generation_is_released_by_the_swap() {
        let ledger = Arc::new(Ledger::default());
        let current = Current::new(generation(1, &ledger));
        let old = Arc::downgrade(&current.swap(generation(2, &ledger)));
        assert!(old.upgrade().is_none());
    }

    #[test]
    fn nesting_past_the_thread_depth_uses_spare_records() {
        let ledger = Arc::new(Ledger::default());
        let current = Current::new(generation(1, &ledger));
        let guards: Vec<Guard<'_, Generation>> =
            (0..DEPTH * 2 + 3).map(|_| current.enter()).collect();
        assert_eq!(current.calls_in(guards[0].get()), DEPTH * 2 + 3);
        let old = Arc::downgrade(&current.swap(generation(2, &ledger)));
        // Drop in reverse order, as nested calls do.
        let mut guards = guards;
        while let Some(g) = guards.pop() {
            assert!(old.upgrade().is_some());
            drop(g);
        }
        assert!(old.upgrade().is_none());
        let after = current.enter();
        assert_eq!(current.calls_in(after.get()), 1);
    }

    #[test]
    fn thousands_of_swaps_under_concurrent_calls() {
        let ledger = Arc::new(Ledger::default());
        let current = Current::new(generation(0, &ledger));
        let stop = AtomicBool::new(false);
        let calls = AtomicU64::new(0);
        let mut weaks = vec![];
        std::thread::scope(|s| {
            for t in 0..4 {
                let (current, stop, calls) = (&current, &stop, &calls);
                s.spawn(move || {
                    let mut last = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let guard = current.enter();
                        let g = guard.get();
                        assert!(g.is_alive());
                        assert!(g.id >= last, "generations only move forward on one thread");
                        last = g.id;
                        if t == 0 {
                            // A nested call on the same thread.
                            let inner = current.enter();
                            assert!(inner.get().is_alive() && inner.get().id >= g.id);
                        }
                        std::hint::spin_loop();
                        assert!(g.is_alive());
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            for id in 1..=5_000 {
                weaks.push(Arc::downgrade(&current.swap(generation(id, &ledger))));
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(calls.load(Ordering::Relaxed) > 0);
        // Every superseded generation was released once the calls stopped.
        assert_eq!(weaks.iter().filter(|w| w.upgrade().is_some()).count(), 0);
        assert!(current.0.retiring.lock().unwrap().is_empty());
    }
}
