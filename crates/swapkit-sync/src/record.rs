//! Hazard records: each thread's slots, where a call names the value it holds.
//!
//! A record is a few slots on a cache line of its own. A thread claims one on its first
//! protected call and writes only its own; the retirement scan reads every record's slots.
//! Records are leaked and reused by later threads, so a scan can read them without counting
//! references to them.
//!
//! # Who may use a slot, and when a record changes hands
//!
//! A guard takes *any* free slot of its thread's record, one that names nothing (null), and
//! names its value in it at once; it remembers which slot, so guards may drop in any order.
//! Only the record's holder writes its slots, so finding a free slot needs no read-modify-
//! write: the hot path is a load, a store, and at release a store (a bitmap of slots in use
//! cost two dependent read-modify-writes per call, most of a lane call's time in a tight loop;
//! issue 37). A slot that must stay taken while it names no value (a guard between two tries,
//! see `cell.rs`) holds [`RESERVED`], which no value's address equals.
//!
//! A record goes back to the free list only when none of its slots is in use: when its thread
//! exits with a guard still alive (one kept in a thread-local whose destructor runs after
//! ours, or one that was leaked), the record is marked [`Record::orphan`] and the last guard
//! to leave gives it back, or nobody does and the values it names are kept forever: a leak,
//! never a free under a reader. When a thread's slots are all in use, or its thread-locals are
//! gone, a guard claims a whole spare record for itself, orphaned from the start.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::Ordering;

use crate::sync::{lock, AtomicBool, AtomicPtr, Mutex, MutexGuard};

/// Slots per record: how many guards one thread can hold at once before it borrows a spare
/// record. Nested calls (plugin to host to plugin) and patched calls inside plugin calls each
/// hold one. Loom explores every interleaving of every slot it reads, so it gets two.
pub(crate) const SLOTS: usize = if cfg!(loom) { 2 } else { 8 };

/// What a taken slot holds while it names no value: address 1, not null (which marks a free
/// slot) and never the address of a value (those come from `Arc::into_raw`: the value inside
/// an `ArcInner`, after its two counters, so aligned to at least 8).
pub(crate) const RESERVED: *mut () = ptr::dangling_mut::<()>();

/// One thread's hazard slots, on a cache line of its own so that no other thread writes to it.
#[repr(align(128))]
pub(crate) struct Record {
    /// Null when free; a value's address, or [`RESERVED`], when a guard holds it.
    pub slots: [AtomicPtr<()>; SLOTS],
    /// The record's thread has exited with a guard alive, or the record is a spare lent to
    /// one guard: the guard that leaves every slot free gives the record back. Only the
    /// record's holder writes it, with plain loads and stores; the handover through
    /// [`Record::owned`] orders it for the next.
    orphan: AtomicBool,
    /// Whether a thread or a spare guard holds the record.
    owned: AtomicBool,
}

impl Record {
    fn new() -> Record {
        Record {
            slots: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            orphan: AtomicBool::new(false),
            owned: AtomicBool::new(true),
        }
    }

    /// Takes a free slot of this record, which the calling thread holds, and names `value`
    /// (not null) in it, relaxed: the caller fences before it relies on the slot.
    #[inline(always)]
    fn take(&'static self, value: *mut ()) -> Option<Slot> {
        debug_assert!(!value.is_null());
        let index = self
            .slots
            .iter()
            .position(|s| s.load(Ordering::Relaxed).is_null())?;
        self.slots[index].store(value, Ordering::Relaxed);
        Some(Slot {
            record: self,
            index,
        })
    }

    /// Whether no slot is taken.
    fn is_free(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.load(Ordering::Relaxed).is_null())
    }

    /// Gives the record back to the free list.
    fn give_back(&self) {
        self.orphan.store(false, Ordering::Relaxed);
        // Release pairs with the claim's acquire: the next holder sees every slot cleared
        // and `orphan` false.
        self.owned.store(false, Ordering::Release);
    }
}

/// One slot of a record, held by one guard.
pub(crate) struct Slot {
    record: &'static Record,
    index: usize,
}

impl Slot {
    /// The slot's atomic.
    #[inline(always)]
    pub fn cell(&self) -> &'static AtomicPtr<()> {
        &self.record.slots[self.index]
    }

    /// Clears the slot, which frees it; gives an orphaned record back once every slot is
    /// free. Must run on the thread that took the slot (guards are `!Send`).
    #[inline(always)]
    pub fn release(&self) {
        let record = self.record;
        // Release: the guard's reads of the value happen before a scan sees the slot clear.
        record.slots[self.index].store(ptr::null_mut(), Ordering::Release);
        if record.orphan.load(Ordering::Relaxed) && record.is_free() {
            record.give_back();
        }
    }
}

#[cfg(not(loom))]
static REGISTRY: Mutex<Vec<&'static Record>> = Mutex::new(Vec::new());

#[cfg(loom)]
loom::lazy_static! {
    static ref REGISTRY: Mutex<Vec<&'static Record>> = Mutex::new(Vec::new());
}

/// Every record ever made.
pub(crate) fn registry() -> MutexGuard<'static, Vec<&'static Record>> {
    lock(&REGISTRY)
}

/// Takes a free record, or makes one.
fn claim() -> &'static Record {
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

/// Gives this thread's record back when the thread exits, or orphans it if a guard of this
/// thread is still alive.
struct Owner;

impl Drop for Owner {
    fn drop(&mut self) {
        // Guards made later in this thread's teardown take spare records instead.
        let Ok(Some(r)) = LOCAL.try_with(|l| l.take()) else {
            return;
        };
        if r.is_free() {
            r.give_back();
        } else {
            r.orphan.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(not(loom))]
std::thread_local! {
    /// This thread's record. It has no destructor, so the hot path reads it with no "is it
    /// alive" check; [`Owner`] gives the record back at exit.
    static LOCAL: Cell<Option<&'static Record>> = const { Cell::new(None) };
    static OWNER: Owner = const { Owner };
}

#[cfg(loom)]
loom::thread_local! {
    static LOCAL: Cell<Option<&'static Record>> = Cell::new(None);
    static OWNER: Owner = Owner;
}

/// A free slot for a new guard on this thread, naming `value` (not null).
#[inline(always)]
pub(crate) fn take_slot(value: *mut ()) -> Slot {
    if let Ok(Some(record)) = LOCAL.try_with(Cell::get) {
        if let Some(slot) = record.take(value) {
            return slot;
        }
    }
    take_slot_slow(value)
}

/// This thread's first slot, claiming its record; or a spare record's, when every slot of
/// this thread's record is in use or the thread is exiting.
#[cold]
fn take_slot_slow(value: *mut ()) -> Slot {
    let local = LOCAL.try_with(Cell::get).ok();
    // Touching OWNER registers its destructor, which gives the record back at exit; once the
    // thread is exiting, a record claimed now could never be given back.
    if matches!(local, Some(None)) && OWNER.try_with(|_| ()).is_ok() {
        let r = claim();
        if LOCAL.try_with(|l| l.set(Some(r))).is_ok() {
            if let Some(slot) = r.take(value) {
                return slot;
            }
        }
        r.give_back();
    }
    let spare = claim();
    // Orphaned from the start: releasing its one slot gives it back.
    spare.orphan.store(true, Ordering::Relaxed);
    spare
        .take(value)
        .expect("a claimed record has every slot free")
}

/// How many slots name `value` right now. The caller has fenced (see `fence::heavy`).
pub(crate) fn holders(records: &[&'static Record], value: *const ()) -> usize {
    records
        .iter()
        .flat_map(|r| r.slots.iter())
        .filter(|s| ptr::eq(s.load(Ordering::Acquire), value))
        .count()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A value's address, for a slot to name: never dereferenced.
    const V: *mut () = ptr::without_provenance_mut(8);

    #[test]
    fn slots_are_taken_lowest_free_first_and_released_in_any_order() {
        let a = take_slot(V);
        let b = take_slot(V);
        let c = take_slot(V);
        assert!(ptr::eq(a.record, b.record) && ptr::eq(b.record, c.record));
        let (ia, ib, ic) = (a.index, b.index, c.index);
        assert_eq!((ib, ic), (ia + 1, ia + 2));
        assert_eq!(
            b.cell().load(Ordering::Relaxed),
            V,
            "a slot names its value at once"
        );
        b.release();
        assert!(b.cell().load(Ordering::Relaxed).is_null());
        let d = take_slot(V);
        assert_eq!(d.index, ib, "the freed middle slot is reused");
        a.release();
        c.release();
        d.release();
        assert_eq!(take_slot_index_and_release(), ia);
    }

    fn take_slot_index_and_release() -> usize {
        let s = take_slot(V);
        let i = s.index;
        s.release();
        i
    }

    #[test]
    fn a_full_record_lends_spares_that_go_back_when_released() {
        let mine: Vec<Slot> = (0..SLOTS).map(|_| take_slot(V)).collect();
        let spare = take_slot(V);
        assert!(!ptr::eq(spare.record, mine[0].record));
        let spare_record = spare.record;
        assert!(spare_record.owned.load(Ordering::Relaxed));
        spare.release();
        assert!(
            !spare_record.owned.load(Ordering::Relaxed),
            "a spare goes back"
        );
        mine.iter().for_each(Slot::release);
    }
}
