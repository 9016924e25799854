//! [`Places`]: a bounded pool of values in fixed places, in which a thread may keep one place
//! of each pool for itself between uses.
//!
//! Taking an idle value is one compare-and-swap on its place, starting at a place the caller
//! picks, so threads that start at different places mostly touch different cache lines.
//! Better still, a thread that gave a value back may **keep** its place: its next use of the
//! pool enters that place with no atomic read-modify-write and no shared write at all, a
//! plain store to a flag only it writes, a compiler fence, and a load. The wasm backend keeps
//! its instances this way, so a call into a wasm plugin finds its instance as cheaply as a
//! thread-local would, while a pool that runs short can still take every idle instance back.
//!
//! # States of a place
//!
//! ```text
//!   EMPTY --fill--> TAKEN --drop--> IDLE --take--> TAKEN
//!                     |                              |
//!                     +--keep--> OWNED <--enter/leave (its owner only)
//!                                  |
//!                               revoke
//!                                  v
//!                               REVOKED --(owner or revoker)--> IDLE
//! ```
//!
//! A value in `TAKEN` or `OWNED`-and-busy is used by one thread; `discard` empties its place.
//!
//! # The owner's handshake
//!
//! The owner of a place writes its `busy` flag, and nobody else does. Entering, it stores
//! `busy = true`, runs the light fence, and loads the state; if the state is still `OWNED`,
//! the value is its own. A revoker swaps the state `OWNED -> REVOKED`, runs the heavy fence,
//! and loads `busy`. One of the two fences is a full barrier on both threads (see `fence.rs`),
//! so by the store-buffer argument either the owner sees `REVOKED` and backs off, or the
//! revoker sees `busy` and leaves the value to the owner. Leaving, the owner stores
//! `busy = false` (release), fences, and loads the state again; if it reads `REVOKED`, it
//! hands the value back (`REVOKED -> IDLE`). The same argument shows that the owner's leaving
//! and the revoker's check cannot both miss each other, so a revoked value always comes back
//! (both may try: the hand-back is a compare-and-swap, and only one succeeds).
//!
//! # Why a place is kept at most once
//!
//! `busy` must have one writer. A thread remembers the places it keeps in a thread-local
//! (pool id and index) and may still hold that entry after its place was revoked, until its
//! next use of the pool notices. If the place could then be kept by another thread, the old
//! owner's next `busy = true` would overwrite the new owner's flag. So a place that has been
//! kept is never kept again while its pool lives (it stays shared), unless its owner itself
//! emptied it, which also drops the owner's entry. Revocation only happens when the pool runs
//! short, so a pool loses its kept places only under pressure, and a place costs at most one
//! heavy fence each time it is kept; a new pool (each reload makes one) starts with every
//! place keepable. Revocations take a lock, one at a time (see [`Places::revoke`]).

use std::cell::{Cell, UnsafeCell};
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;

use crate::fence;
use crate::sync::{lock, AtomicBool, AtomicU32, AtomicU64, Mutex};

const EMPTY: u32 = 0;
const IDLE: u32 = 1;
const TAKEN: u32 = 2;
const OWNED: u32 = 3;
const REVOKED: u32 = 4;

/// How many pools a thread keeps a place in at once. A thread that uses more pools forgets
/// one (its place stays kept until a revocation gives it back).
const KEEP: usize = 4;

/// One place, on cache lines of its own; its flags first, on the line where the value begins,
/// so that entering a place and using its value touch one line fewer.
#[repr(C, align(128))]
struct Place<T> {
    state: AtomicU32,
    /// Written only by the place's owner: whether it is using the value now.
    busy: AtomicBool,
    /// Whether the place was kept since its owner last emptied it: it may not be kept again.
    kept: AtomicBool,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// A bounded pool of values in fixed places, where a thread may keep a place for itself; see
/// the module docs.
///
/// ```
/// use swapkit_sync::Places;
///
/// let pool = Places::new(2);
/// drop(pool.fill(1, String::from("instance")));
/// let held = pool.hold(|| 0).expect("one is idle");
/// assert_eq!((held.index(), held.as_str()), (1, "instance"));
/// held.keep(); // this thread keeps place 1...
/// assert!(!pool.any_idle()); // ...so nobody else sees it idle,
/// let again = pool.hold(|| 0).expect("but this thread enters it");
/// assert!(again.is_kept());
/// drop(again);
/// assert_eq!(pool.revoke(), 1); // until a pool that runs short takes it back.
/// assert!(pool.any_idle());
/// ```
pub struct Places<T> {
    /// Unique over the process's life, so a thread-local entry never names a later pool.
    id: u64,
    places: Box<[Place<T>]>,
    /// Held while revoking: two revocations of one place must not interleave, or the first
    /// could read the flag of the place's next owner (see `revoke`).
    revoking: Mutex<()>,
}

// SAFETY: the pool moves values between threads and never lets two threads use one at once:
// it is `Send`/`Sync` when `T` is `Send`, like a `Mutex<Vec<T>>`.
unsafe impl<T: Send> Send for Places<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Places<T> {}

#[cfg(not(loom))]
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[cfg(loom)]
loom::lazy_static! {
    static ref NEXT_ID: AtomicU64 = AtomicU64::new(1);
}

#[cfg(not(loom))]
std::thread_local! {
    /// The places this thread keeps, as `(pool id, index)`; id 0 marks a free entry. No
    /// destructor, so reading it costs no "is it alive" check; a dead thread's places are
    /// orphans that the next revocation gives back.
    static KEPT: [Cell<(u64, usize)>; KEEP] = const { [const { Cell::new((0, 0)) }; KEEP] };
}

#[cfg(loom)]
loom::thread_local! {
    static KEPT: [Cell<(u64, usize)>; KEEP] = [const { Cell::new((0, 0)) }; KEEP];
}

/// The index this thread keeps in pool `id`, if any.
#[inline(always)]
fn kept_in(id: u64) -> Option<usize> {
    KEPT.try_with(|kept| kept.iter().find(|e| e.get().0 == id).map(|e| e.get().1))
        .ok()
        .flatten()
}

/// Forgets this thread's place in pool `id`.
fn forget(id: u64) {
    let _ = KEPT.try_with(|kept| {
        for e in kept.iter().filter(|e| e.get().0 == id) {
            e.set((0, 0));
        }
    });
}

/// Remembers that this thread keeps place `index` of pool `id`, in a free entry or in place of
/// the oldest; false if its thread-locals are gone.
fn remember(id: u64, index: usize) -> bool {
    KEPT.try_with(|kept| {
        let free = kept.iter().position(|e| e.get().0 == 0);
        if free.is_none() {
            // The oldest goes: its place stays kept, an orphan the next revocation frees.
            for i in 1..KEEP {
                kept[i - 1].set(kept[i].get());
            }
        }
        kept[free.unwrap_or(KEEP - 1)].set((id, index));
    })
    .is_ok()
}

impl<T> Places<T> {
    /// A pool of `n` empty places.
    pub fn new(n: usize) -> Places<T> {
        fence::init();
        Places {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            places: (0..n)
                .map(|_| Place {
                    state: AtomicU32::new(EMPTY),
                    busy: AtomicBool::new(false),
                    kept: AtomicBool::new(false),
                    value: UnsafeCell::new(MaybeUninit::uninit()),
                })
                .collect(),
            revoking: Mutex::new(()),
        }
    }

    /// The number of places.
    pub fn len(&self) -> usize {
        self.places.len()
    }

    /// Whether the pool has no places at all.
    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    /// Holds a value: the place this thread keeps in this pool, if it is not in use already
    /// (a nested use on the same thread) and was not revoked; else an idle value, looking at
    /// every place once from `start()` (taken modulo the length), which only a thread without
    /// a place of its own calls.
    #[inline(always)]
    pub fn hold(&self, start: impl FnOnce() -> usize) -> Option<Held<'_, T>> {
        if let Some(index) = kept_in(self.id) {
            if let Some(held) = self.enter(index) {
                return Some(held);
            }
        }
        self.take(start())
    }

    /// The owner's side of the handshake (module docs).
    #[inline(always)]
    fn enter(&self, index: usize) -> Option<Held<'_, T>> {
        let place = &self.places[index];
        if place.busy.load(Ordering::Relaxed) {
            // This thread is using it already, further up its stack.
            return None;
        }
        place.busy.store(true, Ordering::Relaxed);
        fence::light();
        if place.state.load(Ordering::Relaxed) == OWNED {
            return Some(Held {
                pool: self,
                place,
                index,
                kept: true,
            });
        }
        self.back_off(place);
        None
    }

    /// The owner found its place revoked: it stops using it, and hands the value back in
    /// case the revoker saw its flag up.
    #[cold]
    fn back_off(&self, place: &Place<T>) {
        forget(self.id);
        Self::leave(place);
    }

    /// Clears the owner's flag and hands the value back if its place was revoked meanwhile.
    #[inline(always)]
    fn leave(place: &Place<T>) {
        // Release: the owner's writes to the value happen before a revoker that reads false.
        place.busy.store(false, Ordering::Release);
        fence::light();
        if place.state.load(Ordering::Acquire) == REVOKED {
            Self::give_back(place);
        }
    }

    /// `REVOKED -> IDLE`, by whichever of the owner and the revoker gets there first.
    #[cold]
    fn give_back(place: &Place<T>) {
        let _ = place
            .state
            .compare_exchange(REVOKED, IDLE, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Claims an idle value, looking at every place once from `start`. Out of line: a thread
    /// that keeps a place seldom comes here.
    #[inline(never)]
    fn take(&self, start: usize) -> Option<Held<'_, T>> {
        let n = self.places.len();
        if n == 0 {
            return None;
        }
        let mut i = start % n;
        for _ in 0..n {
            let state = &self.places[i].state;
            // A plain load first, so a busy place costs no read-modify-write.
            if state.load(Ordering::Relaxed) == IDLE
                // Acquire: the last user's writes to the value are visible.
                && state
                    .compare_exchange(IDLE, TAKEN, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(Held {
                    pool: self,
                    place: &self.places[i],
                    index: i,
                    kept: false,
                });
            }
            i = if i + 1 == n { 0 } else { i + 1 };
        }
        None
    }

    /// Puts `value` in the empty place `index` and holds it. The caller knows the place is
    /// empty (it keeps the list of vacant places).
    ///
    /// # Panics
    ///
    /// If `index` is out of range or the place is not empty.
    pub fn fill(&self, index: usize, value: T) -> Held<'_, T> {
        let place = &self.places[index];
        assert!(
            place
                .state
                .compare_exchange(EMPTY, TAKEN, Ordering::Acquire, Ordering::Relaxed)
                .is_ok(),
            "place {index} is not empty"
        );
        // SAFETY: the compare-and-swap made this thread the place's only user.
        unsafe { (*place.value.get()).write(value) };
        Held {
            pool: self,
            place,
            index,
            kept: false,
        }
    }

    /// Gives every kept place that its owner is not using back to all threads, and returns
    /// how many came back. A place in use comes back when its owner leaves it. Costs one heavy
    /// fence (a `membarrier` system call) when any place is kept; for a pool that ran short.
    pub fn revoke(&self) -> usize {
        if !self
            .places
            .iter()
            .any(|p| p.state.load(Ordering::Relaxed) == OWNED)
        {
            return 0;
        }
        // One revocation at a time. Within one, a place it marked REVOKED is either handed
        // back once (by it or the owner), or emptied by its owner and refilled: then it is not
        // REVOKED when this revocation reads it, unless another revocation marked it again,
        // which the lock rules out until this one is done.
        let _one = lock(&self.revoking);
        let revoked: Vec<usize> = (0..self.places.len())
            .filter(|&i| {
                let state = &self.places[i].state;
                state.load(Ordering::Relaxed) == OWNED
                    && state
                        .compare_exchange(OWNED, REVOKED, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
            })
            .collect();
        if revoked.is_empty() {
            return 0;
        }
        fence::heavy();
        revoked
            .into_iter()
            .filter(|&i| {
                let place = &self.places[i];
                // Acquire pairs with the owner's release in `leave`.
                !place.busy.load(Ordering::Acquire)
                    && place
                        .state
                        .compare_exchange(REVOKED, IDLE, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
            })
            .count()
    }

    /// Whether any place holds an idle value right now (kept places are not idle).
    pub fn any_idle(&self) -> bool {
        self.places
            .iter()
            .any(|p| p.state.load(Ordering::Acquire) == IDLE)
    }

    /// Takes every value out, kept or idle, in place order, leaving every place empty.
    pub fn drain(&mut self) -> Vec<T> {
        self.places
            .iter_mut()
            .filter_map(|p| {
                // No `Held` borrows the pool, so no value is in use. (Atomic operations, not
                // `get_mut`, which loom's atomics lack.)
                let state = p.state.swap(EMPTY, Ordering::Acquire);
                p.busy.store(false, Ordering::Relaxed);
                p.kept.store(false, Ordering::Relaxed);
                // SAFETY: every state but EMPTY holds a value, which is now nobody's.
                (state != EMPTY).then(|| unsafe { p.value.get_mut().assume_init_read() })
            })
            .collect()
    }
}

impl<T> Drop for Places<T> {
    fn drop(&mut self) {
        drop(self.drain());
    }
}

impl<T> std::fmt::Debug for Places<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Places")
            .field("places", &self.places.len())
            .finish()
    }
}

/// A value held from a [`Places`] pool: this thread's alone until the `Held` drops, when it
/// goes back to its place (to everyone, or to this thread if it keeps the place).
pub struct Held<'a, T> {
    pool: &'a Places<T>,
    place: &'a Place<T>,
    index: usize,
    /// Entered as its owner, through the handshake.
    kept: bool,
}

impl<T> Held<'_, T> {
    /// The value's place.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether this thread holds the value as the owner of a place it kept.
    pub fn is_kept(&self) -> bool {
        self.kept
    }

    /// Gives the value back, and keeps its place for this thread if it may: a place kept
    /// before (and revoked since) stays shared, and so does any place after this thread's
    /// thread-locals are gone. The thread's next [`Places::hold`] enters it with no atomic
    /// read-modify-write, and nobody else takes it until [`Places::revoke`].
    #[inline]
    pub fn keep(self) {
        if self.kept {
            return; // dropping leaves it kept
        }
        let place = self.place;
        if place.kept.load(Ordering::Relaxed)
            || kept_in(self.pool.id).is_some()
            || !remember(self.pool.id, self.index)
        {
            return; // dropping gives it to everyone
        }
        place.kept.store(true, Ordering::Relaxed);
        place.busy.store(false, Ordering::Relaxed);
        std::mem::forget(self);
        // Release: what this thread wrote to the value, and the flags above, happen before a
        // revoker's swap.
        place.state.store(OWNED, Ordering::Release);
    }

    /// Takes the value out of the pool and leaves its place empty, for a value that must not
    /// be used again. The caller gives the place back to whatever fills places.
    pub fn discard(self) -> T {
        let (pool, place, kept) = (self.pool, self.place, self.kept);
        std::mem::forget(self);
        // SAFETY: this thread holds the value, and the place is emptied below before anyone
        // else can look at it.
        let value = unsafe { (*place.value.get()).assume_init_read() };
        if kept {
            // Its owner empties it and forgets it, so it may be kept again.
            forget(pool.id);
            place.kept.store(false, Ordering::Relaxed);
            // A swap, not a store: a revoker may have marked it REVOKED meanwhile, and must
            // find it EMPTY, not hand it back.
            place.state.swap(EMPTY, Ordering::AcqRel);
            place.busy.store(false, Ordering::Release);
        } else {
            place.state.store(EMPTY, Ordering::Release);
        }
        value
    }
}

impl<T> Deref for Held<'_, T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: a `Held` is the only user of its place's value, which is initialised.
        unsafe { (*self.place.value.get()).assume_init_ref() }
    }
}

impl<T> DerefMut for Held<'_, T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`.
        unsafe { (*self.place.value.get()).assume_init_mut() }
    }
}

impl<T> Drop for Held<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        if self.kept {
            Places::leave(self.place);
        } else {
            // Release: this thread's writes to the value happen before the next taker's.
            self.place.state.store(IDLE, Ordering::Release);
        }
    }
}

impl<T> std::fmt::Debug for Held<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("index", &self.index)
            .field("kept", &self.kept)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    /// A value that notices two users at once: only its holder touches it, so a plain load
    /// and store of its count are exact unless two threads hold it together.
    #[derive(Default)]
    struct Used {
        count: AtomicUsize,
        inside: AtomicBool,
    }

    impl Used {
        fn use_once(&self) {
            assert!(
                !self.inside.swap(true, Ordering::Relaxed),
                "two users at once"
            );
            let n = self.count.load(Ordering::Relaxed);
            std::hint::spin_loop();
            self.count.store(n + 1, Ordering::Relaxed);
            self.inside.store(false, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_thread_keeps_its_place_and_enters_it_again() {
        let pool = Places::new(3);
        drop(pool.fill(2, 7));
        let held = pool.hold(|| 0).unwrap();
        assert_eq!((held.index(), *held, held.is_kept()), (2, 7, false));
        held.keep();
        assert!(!pool.any_idle(), "a kept place is nobody else's");
        let mut again = pool.hold(|| 1).unwrap();
        assert!(again.is_kept());
        *again += 1;
        // A nested hold on the same thread does not enter the place in use.
        assert!(pool.hold(|| 0).is_none());
        drop(again);
        assert_eq!(*pool.hold(|| 0).unwrap(), 8);
    }

    #[test]
    fn other_threads_do_not_see_a_kept_place_until_it_is_revoked() {
        let pool = Places::new(2);
        drop(pool.fill(0, 1));
        pool.hold(|| 0).unwrap().keep();
        std::thread::scope(|s| {
            s.spawn(|| assert!(pool.hold(|| 0).is_none()));
        });
        assert_eq!(pool.revoke(), 1);
        assert_eq!(pool.revoke(), 0, "nothing is kept any more");
        std::thread::scope(|s| {
            s.spawn(|| {
                let held = pool.hold(|| 0).expect("revoked, so idle");
                // A place kept once stays shared.
                held.keep();
                assert!(pool.any_idle());
            });
        });
        // Its old owner backs off, and the value is still there for everyone.
        let held = pool.hold(|| 0).unwrap();
        assert!(!held.is_kept());
        assert_eq!(*held, 1);
    }

    #[test]
    fn a_place_revoked_while_its_owner_uses_it_comes_back_when_it_leaves() {
        let pool = Places::new(1);
        drop(pool.fill(0, 5));
        pool.hold(|| 0).unwrap().keep();
        let held = pool.hold(|| 0).unwrap();
        assert!(held.is_kept());
        assert_eq!(
            pool.revoke(),
            0,
            "in use, so it stays with its owner for now"
        );
        assert!(!pool.any_idle());
        drop(held);
        assert!(pool.any_idle(), "its owner handed it back");
    }

    #[test]
    fn an_owner_that_discards_its_place_may_keep_the_next_value_there() {
        let pool = Places::new(1);
        drop(pool.fill(0, String::from("first")));
        pool.hold(|| 0).unwrap().keep();
        let held = pool.hold(|| 0).unwrap();
        assert_eq!(held.discard(), "first");
        assert!(pool.hold(|| 0).is_none(), "empty");
        pool.fill(0, String::from("second")).keep();
        let held = pool.hold(|| 0).unwrap();
        assert!(held.is_kept());
        assert_eq!(*held, "second");
    }

    #[test]
    fn dropping_the_pool_drops_every_value_kept_idle_or_revoked() {
        let alive = Arc::new(());
        let pool = Places::new(3);
        for i in 0..3 {
            drop(pool.fill(i, alive.clone()));
        }
        pool.hold(|| 0).unwrap().keep();
        std::thread::scope(|s| {
            s.spawn(|| pool.hold(|| 0).unwrap().keep());
        });
        let held = pool.hold(|| 0).unwrap();
        assert_eq!(pool.revoke(), 1, "the other thread's place");
        drop(held);
        assert_eq!(Arc::strong_count(&alive), 4);
        drop(pool);
        assert_eq!(Arc::strong_count(&alive), 1);
    }

    #[test]
    #[should_panic(expected = "not empty")]
    fn filling_a_full_place_panics() {
        let pool = Places::new(1);
        drop(pool.fill(0, 1));
        drop(pool.fill(0, 2));
    }

    #[test]
    fn threads_keep_take_and_revoke_and_no_value_has_two_users() {
        let size = 3;
        let pool = Places::new(size);
        for i in 0..size {
            drop(pool.fill(i, Used::default()));
        }
        let rounds = if cfg!(miri) { 40 } else { 20_000 };
        let taken = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (pool, taken) = (&pool, &taken);
                s.spawn(move || {
                    for r in 0..rounds {
                        if let Some(held) = pool.hold(|| t + r) {
                            held.use_once();
                            taken.fetch_add(1, Ordering::Relaxed);
                            held.keep();
                        } else if r % 7 == 0 {
                            pool.revoke();
                        }
                    }
                });
            }
            let pool = &pool;
            s.spawn(move || {
                for _ in 0..rounds / 50 {
                    pool.revoke();
                    std::thread::yield_now();
                }
            });
        });
        let mut pool = pool;
        let all = pool.drain();
        assert_eq!(all.len(), size, "every value is still in the pool");
        let total: usize = all.iter().map(|v| v.count.load(Ordering::Relaxed)).sum();
        assert_eq!(total, taken.load(Ordering::Relaxed), "no use was lost");
        assert!(total > 0);
    }
}
