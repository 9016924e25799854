//! Keepers: each thread's record of the [`Places`](crate::Places) it keeps, and the flags that
//! say which of them it is using now.
//!
//! A keeper is a few sets of entries on cache lines of their own. An entry names one pool (its
//! id) and the place the thread keeps there, and carries the entry's `busy` word: the address
//! of the place the thread is inside through it, or 0. Only the keeper's thread writes an
//! entry; a revoker reads `busy`. A kept place's state names its owner by the entry's number,
//! so a thread that still remembers a place it lost writes only its own entry, never another
//! owner's flag: the reason the flag lives here and not in the place.
//!
//! Keepers are leaked and reused by later threads (given back when a thread exits, as hazard
//! records are), so a revoker can read any entry without counting references to it. Entries
//! are found by pool id in a small set-associative table: a pool's id picks a set of [`WAYS`]
//! entries, and a thread keeps at most one place per pool.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use crate::sync::{lock, AtomicBool, AtomicU64, AtomicUsize, Mutex, MutexGuard};

/// Sets of entries per keeper; a pool's id picks one.
const SETS: usize = if cfg!(loom) { 1 } else { 8 };
/// Entries per set: how many pools whose ids share a set one thread keeps places in at once.
/// One more evicts the entry used longest ago (its place stays kept, an orphan that the next
/// revocation gives back).
pub(crate) const WAYS: usize = if cfg!(loom) { 2 } else { 4 };
/// Entries per keeper.
const ENTRIES: usize = SETS * WAYS;

/// One pool's entry in a thread's keeper.
pub(crate) struct Entry {
    /// The pool whose place this entry keeps, 0 for none. Only the keeper's thread uses it.
    pool: AtomicU64,
    /// The place kept, in that pool. Only the keeper's thread uses it.
    index: AtomicUsize,
    /// The address of the place the thread is inside through this entry, or 0. Written only by
    /// the keeper's thread; read by revokers, after their heavy fence.
    pub busy: AtomicUsize,
    /// When the thread last claimed the entry, in its own count: the oldest is evicted.
    stamp: AtomicU64,
    /// The entry's number, which a kept place's state names as its owner.
    pub owner: u64,
}

/// One thread's entries, on cache lines no other thread writes.
#[repr(align(128))]
struct Keeper {
    entries: [Entry; ENTRIES],
    /// Whether a thread holds the keeper.
    owned: AtomicBool,
    /// Claims made, for the entries' stamps.
    claims: AtomicU64,
}

impl Keeper {
    fn new(number: usize) -> Keeper {
        Keeper {
            entries: std::array::from_fn(|i| Entry {
                pool: AtomicU64::new(0),
                index: AtomicUsize::new(0),
                busy: AtomicUsize::new(0),
                stamp: AtomicU64::new(0),
                owner: (number * ENTRIES + i) as u64,
            }),
            owned: AtomicBool::new(true),
            claims: AtomicU64::new(0),
        }
    }

    /// The entries pool `id` may use.
    #[inline(always)]
    fn set(&self, id: u64) -> &[Entry] {
        // Fibonacci hashing: pools made one after another land in different sets.
        let set = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % SETS;
        &self.entries[set * WAYS..(set + 1) * WAYS]
    }
}

#[cfg(not(loom))]
static KEEPERS: Mutex<Vec<&'static Keeper>> = Mutex::new(Vec::new());

#[cfg(loom)]
loom::lazy_static! {
    static ref KEEPERS: Mutex<Vec<&'static Keeper>> = Mutex::new(Vec::new());
}

/// Every keeper ever made, in the order of their numbers.
pub(crate) struct Keepers(MutexGuard<'static, Vec<&'static Keeper>>);

/// Locks the list of keepers, to look entries up by owner.
pub(crate) fn keepers() -> Keepers {
    Keepers(lock(&KEEPERS))
}

impl Keepers {
    /// The entry whose number is `owner`.
    pub(crate) fn entry(&self, owner: u64) -> &'static Entry {
        let owner = owner as usize;
        &self.0[owner / ENTRIES].entries[owner % ENTRIES]
    }
}

/// Gives this thread's keeper back when the thread exits.
struct Exit;

impl Drop for Exit {
    fn drop(&mut self) {
        let Ok(Some(k)) = MINE.try_with(|m| m.take()) else {
            return;
        };
        if k.entries
            .iter()
            .any(|e| e.busy.load(Ordering::Relaxed) != 0)
        {
            // A value is held past the thread's end (in a thread-local dropped later): the
            // keeper stays this thread's for good, so no later thread writes its flags.
            return;
        }
        for e in &k.entries {
            e.pool.store(0, Ordering::Relaxed);
        }
        // Release pairs with the next claim's acquire: it sees every entry cleared.
        k.owned.store(false, Ordering::Release);
    }
}

#[cfg(not(loom))]
std::thread_local! {
    /// This thread's keeper. No destructor, so the hot path reads it with no "is it alive"
    /// check; [`Exit`] gives the keeper back.
    static MINE: Cell<Option<&'static Keeper>> = const { Cell::new(None) };
    static EXIT: Exit = const { Exit };
}

#[cfg(loom)]
loom::thread_local! {
    static MINE: Cell<Option<&'static Keeper>> = Cell::new(None);
    static EXIT: Exit = Exit;
}

/// This thread's entry for pool `id`, and the index of the place it keeps there.
#[inline(always)]
pub(crate) fn find(id: u64) -> Option<(&'static Entry, usize)> {
    let keeper = MINE.try_with(Cell::get).ok().flatten()?;
    keeper
        .set(id)
        .iter()
        .find(|e| e.pool.load(Ordering::Relaxed) == id)
        .map(|e| (e, e.index.load(Ordering::Relaxed)))
}

/// Forgets this thread's place in pool `id` (its entry is free again).
pub(crate) fn forget(entry: &Entry) {
    entry.pool.store(0, Ordering::Relaxed);
}

/// An entry of this thread for keeping place `index` of pool `id`: a free one of its set, or
/// else the one claimed longest ago that the thread is not inside. `None` if the thread
/// keeps a place of the pool already, or its thread-locals are gone.
pub(crate) fn claim(id: u64, index: usize) -> Option<&'static Entry> {
    let keeper = mine()?;
    let set = keeper.set(id);
    if set.iter().any(|e| e.pool.load(Ordering::Relaxed) == id) {
        return None;
    }
    let entry = set
        .iter()
        .filter(|e| e.busy.load(Ordering::Relaxed) == 0)
        .min_by_key(|e| {
            // Free entries first, then the oldest.
            let free = e.pool.load(Ordering::Relaxed) == 0;
            (!free, e.stamp.load(Ordering::Relaxed))
        })?;
    let stamp = keeper.claims.load(Ordering::Relaxed) + 1;
    keeper.claims.store(stamp, Ordering::Relaxed);
    entry.stamp.store(stamp, Ordering::Relaxed);
    entry.index.store(index, Ordering::Relaxed);
    entry.pool.store(id, Ordering::Relaxed);
    Some(entry)
}

/// This thread's keeper, claimed on first use.
fn mine() -> Option<&'static Keeper> {
    if let Some(k) = MINE.try_with(Cell::get).ok()? {
        return Some(k);
    }
    // Touching EXIT registers its destructor, which gives the keeper back; once the thread
    // is exiting, a keeper claimed now could never be given back.
    EXIT.try_with(|_| ()).ok()?;
    let mut all = lock(&KEEPERS);
    let k = match all.iter().find(|k| {
        k.owned
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }) {
        Some(k) => *k,
        None => {
            let k: &'static Keeper = Box::leak(Box::new(Keeper::new(all.len())));
            all.push(k);
            k
        }
    };
    drop(all);
    MINE.try_with(|m| m.set(Some(k))).ok()?;
    Some(k)
}
