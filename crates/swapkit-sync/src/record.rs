//! Hazard records: each thread's slots, where a call names the value it holds.
//!
//! A record is a few slots on a cache line of its own. A thread claims one on its first
//! protected call and writes only its own; the retirement scan reads every record's slots.
//! Records are leaked and reused by later threads, so a scan can read them without counting
//! references to them.
//!
//! # Who may use a slot, and when a record changes hands
//!
//! A guard takes *any* free slot of its thread's record (a bit in [`Record::used`], which only
//! the holder writes) and remembers which one, so guards may drop in any order. A record goes
//! back to the free list only when none of its slots is in use: when its thread exits with a
//! guard still alive (one kept in a thread-local whose destructor runs after ours, or one that
//! was leaked), the record is marked [`ORPHAN`] and the last guard to leave gives it back, or
//! nobody does and the values it names are kept forever: a leak, never a free under a reader.
//! When a thread's slots are all in use, or its thread-locals are gone, a guard claims a whole
//! spare record for itself, orphaned from the start.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::Ordering;

use crate::sync::{lock, AtomicBool, AtomicPtr, AtomicUsize, Mutex, MutexGuard};

/// Slots per record: how many guards one thread can hold at once before it borrows a spare
/// record. Nested calls (plugin to host to plugin) and patched calls inside plugin calls each
/// hold one. Loom explores every interleaving of every slot it reads, so it gets two.
pub(crate) const SLOTS: usize = if cfg!(loom) { 2 } else { 8 };

/// The bit of [`Record::used`] that says the record's thread has exited: the last guard to
/// release a slot gives the record back.
const ORPHAN: usize = 1 << (usize::BITS - 1);

/// One thread's hazard slots, on a cache line of its own so that no other thread writes to it.
#[repr(align(128))]
pub(crate) struct Record {
    pub slots: [AtomicPtr<()>; SLOTS],
    /// The slots in use, one bit each, and [`ORPHAN`]. Only the record's holder writes it, with
    /// plain loads and stores; the handover through [`Record::owned`] orders it for the next.
    used: AtomicUsize,
    /// Whether a thread or a spare guard holds the record.
    owned: AtomicBool,
}

impl Record {
    fn new() -> Record {
        Record {
            slots: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            used: AtomicUsize::new(0),
            owned: AtomicBool::new(true),
        }
    }

    /// Takes a free slot of this record, which the calling thread holds.
    #[inline(always)]
    fn take(&'static self) -> Option<Slot> {
        let used = self.used.load(Ordering::Relaxed);
        let index = (!used).trailing_zeros() as usize;
        if index >= SLOTS {
            return None;
        }
        self.used.store(used | (1 << index), Ordering::Relaxed);
        Some(Slot {
            record: self,
            index,
        })
    }

    /// Gives the record back to the free list.
    fn give_back(&self) {
        self.used.store(0, Ordering::Relaxed);
        // Release pairs with the claim's acquire: the next holder sees every slot cleared
        // and `used` zero.
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

    /// Clears the slot and marks it free; gives an orphaned record back once it is empty.
    /// Must run on the thread that took the slot (guards are `!Send`).
    #[inline(always)]
    pub fn release(&self) {
        let record = self.record;
        // Release: the guard's reads of the value happen before a scan sees the slot clear.
        record.slots[self.index].store(ptr::null_mut(), Ordering::Release);
        let used = record.used.load(Ordering::Relaxed) & !(1 << self.index);
        if used == ORPHAN {
            record.give_back();
        } else {
            record.used.store(used, Ordering::Relaxed);
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
        let used = r.used.load(Ordering::Relaxed);
        if used == 0 {
            r.give_back();
        } else {
            r.used.store(used | ORPHAN, Ordering::Relaxed);
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

/// A free slot for a new guard on this thread.
#[inline(always)]
pub(crate) fn take_slot() -> Slot {
    if let Ok(Some(record)) = LOCAL.try_with(Cell::get) {
        if let Some(slot) = record.take() {
            return slot;
        }
    }
    take_slot_slow()
}

/// This thread's first slot, claiming its record; or a spare record's, when every slot of
/// this thread's record is in use or the thread is exiting.
#[cold]
fn take_slot_slow() -> Slot {
    let local = LOCAL.try_with(Cell::get).ok();
    // Touching OWNER registers its destructor, which gives the record back at exit; once the
    // thread is exiting, a record claimed now could never be given back.
    if matches!(local, Some(None)) && OWNER.try_with(|_| ()).is_ok() {
        let r = claim();
        if LOCAL.try_with(|l| l.set(Some(r))).is_ok() {
            if let Some(slot) = r.take() {
                return slot;
            }
        }
        r.give_back();
    }
    let spare = claim();
    // Orphaned from the start: releasing its one slot gives it back.
    spare.used.store(ORPHAN, Ordering::Relaxed);
    spare.take().expect("a claimed record has every slot free")
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

    #[test]
    fn slots_are_taken_lowest_free_first_and_released_in_any_order() {
        let a = take_slot();
        let b = take_slot();
        let c = take_slot();
        assert!(ptr::eq(a.record, b.record) && ptr::eq(b.record, c.record));
        let (ia, ib, ic) = (a.index, b.index, c.index);
        assert_eq!((ib, ic), (ia + 1, ia + 2));
        b.release();
        let d = take_slot();
        assert_eq!(d.index, ib, "the freed middle slot is reused");
        a.release();
        c.release();
        d.release();
        assert_eq!(take_slot_index_and_release(), ia);
    }

    fn take_slot_index_and_release() -> usize {
        let s = take_slot();
        let i = s.index;
        s.release();
        i
    }

    #[test]
    fn a_full_record_lends_spares_that_go_back_when_released() {
        let mine: Vec<Slot> = (0..SLOTS).map(|_| take_slot()).collect();
        let spare = take_slot();
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
