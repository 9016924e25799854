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
//!                     +--keep--> OWNED(e) <--enter/leave (through entry e only)
//!                                  |
//!                               revoke
//!                                  v
//!                               REVOKED(e) --(e's thread or the revoker)--> IDLE
//! ```
//!
//! A value in `TAKEN` or `OWNED`-and-entered is used by one thread; `discard` empties its
//! place. `OWNED` and `REVOKED` carry the number of the owner's entry in its thread's keeper
//! (`keeper.rs`), in the same word as the state.
//!
//! # The owner's handshake
//!
//! The owner's flag is `busy` in its own entry, which nobody else writes. Entering, it stores
//! the place's address there, runs the light fence, and loads the state; if the state is
//! `OWNED` by its entry, the value is its own. A revoker swaps the state `OWNED(e) ->
//! REVOKED(e)`, runs the heavy fence, and loads `e.busy`. One of the two fences is a full
//! barrier on both threads (see `fence.rs`), so by the store-buffer argument either the owner
//! sees `REVOKED(e)` and backs off, or the revoker sees the place's address in `e.busy` and
//! leaves the value to the owner. Leaving, the owner stores 0 (release), fences, and loads the
//! state again; if it reads `REVOKED(e)`, it hands the value back (`REVOKED(e) -> IDLE`). The
//! same argument shows that the owner's leaving and the revoker's check cannot both miss each
//! other, so a revoked value always comes back (both may try: the hand-back is a
//! compare-and-swap, and only one succeeds).
//!
//! # Why a place can be kept again, by anyone
//!
//! A thread may still remember a place it lost (revoked, given back, and kept by another thread
//! since) until its next use of the pool notices. That stale owner writes only its own entry's
//! flag, and finds the state naming another entry, so it backs off without touching the place;
//! it hands back only a state that names its own entry, `REVOKED(e)`, which only a revocation
//! of its own ownership makes. `busy` holds a place's address rather than a yes/no, so that an
//! entry its thread reused for another pool (or a keeper a later thread took over) never reads
//! as inside a place it no longer keeps. Revocations take a lock, one at a time, so one
//! revocation never hands back a place that another revoked again meanwhile.
//!
//! A revocation costs one heavy fence (a `membarrier`). It happens only when a pool runs
//! short. A place revoked for the first time may be kept again at once; each later revocation
//! doubles the shared uses it waits first, up to [`MAX_COOL`]: a pool with more callers than
//! values settles into sharing, and one extra caller (a reload's hook, an admin thread) costs
//! its workers a revocation, not their kept places.
//!
//! # Nested use
//!
//! A thread that holds a value of a pool and asks the same pool again (a plugin calling back
//! into itself through its host) gets [`Miss::Nested`], whether it holds a kept place or a
//! taken one: the pool never hands one thread two of its values at once.

use std::cell::{Cell, UnsafeCell};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;

use crate::fence;
use crate::keeper::{self, Entry};
use crate::sync::{lock, AtomicU32, AtomicU64, AtomicUsize, Mutex};

const EMPTY: u64 = 0;
const IDLE: u64 = 1;
const TAKEN: u64 = 2;
const OWNED: u64 = 3;
const REVOKED: u64 = 4;
/// The low bits of a state word hold the state; `OWNED` and `REVOKED` carry their owner's
/// entry number above them.
const TAG: u64 = 7;
const TAG_BITS: u32 = 3;

#[inline(always)]
const fn owned(owner: u64) -> u64 {
    (owner << TAG_BITS) | OWNED
}

#[inline(always)]
const fn revoked(owner: u64) -> u64 {
    (owner << TAG_BITS) | REVOKED
}

/// A revoked place may be kept again after at most this many shared uses (the first time at
/// once, then after 1, 3, 7, ... uses, each revocation doubling the wait).
pub const MAX_COOL: u32 = 1 << 12;

/// Why [`Places::hold`] found no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// This thread holds a value of this pool already, further up its stack.
    Nested,
    /// Every value is in use or kept by another thread (or the pool has none).
    Busy,
}

/// One place, on cache lines of its own; its state first, on the line where the value begins,
/// so that entering a place and using its value touch one line fewer.
#[repr(C, align(128))]
struct Place<T> {
    state: AtomicU64,
    /// The thread holding it while `TAKEN` (an address unique to the thread), else 0: how a
    /// nested hold of a thread without a kept place is noticed.
    holder: AtomicUsize,
    /// Shared uses left before it may be kept again (a heuristic: no safety rests on it).
    cool: AtomicU32,
    /// How often it was revoked, which sets the next wait.
    strikes: AtomicU32,
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
    /// Unique over the process's life, so a thread's entry never names a later pool; renewed
    /// by [`Places::drain`].
    id: u64,
    places: Box<[Place<T>]>,
    /// Held while revoking: two revocations of one place must not interleave, or the first
    /// could hand back a place the second revoked again (see `revoke`).
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
    /// Values this thread holds as `TAKEN`; when there are none, a hold cannot be nested in a
    /// taken one, and no place needs looking at. No destructor.
    static TAKEN_HERE: Cell<usize> = const { Cell::new(0) };
    /// A byte whose address names this thread while it lives.
    static ME: u8 = const { 0 };
}

#[cfg(loom)]
loom::thread_local! {
    static TAKEN_HERE: Cell<usize> = Cell::new(0);
    static ME: u8 = 0;
}

/// This thread's name for `holder` (never 0), or 0 once its thread-locals are gone.
fn me() -> usize {
    ME.try_with(|b| b as *const u8 as usize).unwrap_or(0)
}

fn count_taken(delta: isize) {
    let _ = TAKEN_HERE.try_with(|n| n.set(n.get().wrapping_add_signed(delta)));
}

impl<T> Places<T> {
    /// A pool of `n` empty places.
    pub fn new(n: usize) -> Places<T> {
        fence::init();
        Places {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            places: (0..n)
                .map(|_| Place {
                    state: AtomicU64::new(EMPTY),
                    holder: AtomicUsize::new(0),
                    cool: AtomicU32::new(0),
                    strikes: AtomicU32::new(0),
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

    /// Holds a value: the place this thread keeps in this pool, if it was not revoked; else an
    /// idle value, looking at every place once from `start()` (taken modulo the length), which
    /// only a thread without a place of its own calls. A thread that holds a value of this
    /// pool already gets [`Miss::Nested`].
    #[inline(always)]
    pub fn hold(&self, start: impl FnOnce() -> usize) -> Result<Held<'_, T>, Miss> {
        if let Some((entry, index)) = keeper::find(self.id) {
            if entry.busy.load(Ordering::Relaxed) != 0 {
                // Inside its kept place already, further up its stack.
                return Err(Miss::Nested);
            }
            if let Some(held) = self.enter(entry, index) {
                return Ok(held);
            }
        }
        self.take(start())
    }

    /// The owner's side of the handshake (module docs).
    #[inline(always)]
    fn enter(&self, entry: &'static Entry, index: usize) -> Option<Held<'_, T>> {
        let place = self.places.get(index)?;
        entry
            .busy
            .store(place as *const Place<T> as usize, Ordering::Relaxed);
        fence::light();
        if place.state.load(Ordering::Relaxed) == owned(entry.owner) {
            return Some(Held {
                pool: self,
                place,
                index,
                kept: Some(entry),
                _not_send: PhantomData,
            });
        }
        self.back_off(entry, place);
        None
    }

    /// The owner found its place revoked, or kept by another since: it stops using it, and
    /// hands the value back if the revocation was of its own ownership and the revoker saw
    /// its flag up.
    #[cold]
    fn back_off(&self, entry: &'static Entry, place: &Place<T>) {
        keeper::forget(entry);
        Self::leave(entry, place);
    }

    /// Clears the owner's flag and hands the value back if its place was revoked meanwhile.
    #[inline(always)]
    fn leave(entry: &Entry, place: &Place<T>) {
        // Release: the owner's writes to the value happen before a revoker that reads 0.
        entry.busy.store(0, Ordering::Release);
        fence::light();
        if place.state.load(Ordering::Acquire) == revoked(entry.owner) {
            Self::give_back(place, entry.owner);
        }
    }

    /// `REVOKED(owner) -> IDLE`, by whichever of the owner and the revoker gets there first.
    #[cold]
    fn give_back(place: &Place<T>, owner: u64) {
        let _ =
            place
                .state
                .compare_exchange(revoked(owner), IDLE, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Claims an idle value, looking at every place once from `start`. Out of line: a thread
    /// that keeps a place seldom comes here.
    #[inline(never)]
    fn take(&self, start: usize) -> Result<Held<'_, T>, Miss> {
        let n = self.places.len();
        // Only a thread that holds taken values at all looks for one of this pool.
        if TAKEN_HERE.try_with(Cell::get).unwrap_or(0) > 0 {
            let me = me();
            if me != 0
                && self
                    .places
                    .iter()
                    .any(|p| p.holder.load(Ordering::Relaxed) == me)
            {
                return Err(Miss::Nested);
            }
        }
        if n == 0 {
            return Err(Miss::Busy);
        }
        let mut i = start % n;
        for _ in 0..n {
            let place = &self.places[i];
            // A plain load first, so a busy place costs no read-modify-write.
            if place.state.load(Ordering::Relaxed) == IDLE
                // Acquire: the last user's writes to the value are visible.
                && place
                    .state
                    .compare_exchange(IDLE, TAKEN, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Ok(self.taken(i));
            }
            i = if i + 1 == n { 0 } else { i + 1 };
        }
        Err(Miss::Busy)
    }

    /// A `Held` for place `index`, which this thread just made `TAKEN`.
    fn taken(&self, index: usize) -> Held<'_, T> {
        let place = &self.places[index];
        place.holder.store(me(), Ordering::Relaxed);
        count_taken(1);
        Held {
            pool: self,
            place,
            index,
            kept: None,
            _not_send: PhantomData,
        }
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
        self.taken(index)
    }

    /// Gives every kept place that its owner is not using back to all threads, and returns
    /// how many came back. A place in use comes back when its owner leaves it. Costs one heavy
    /// fence (a `membarrier` system call) when any place is kept; for a pool that ran short.
    pub fn revoke(&self) -> usize {
        if !self
            .places
            .iter()
            .any(|p| p.state.load(Ordering::Relaxed) & TAG == OWNED)
        {
            return 0;
        }
        // One revocation at a time. Within one, a place it marked REVOKED(e) is either handed
        // back once (by it or e's thread), or emptied by its owner and refilled: then it is not
        // REVOKED(e) when this revocation reads it, unless another revocation marked it again,
        // which the lock rules out until this one is done.
        let _one = lock(&self.revoking);
        let marked: Vec<(usize, u64)> = (0..self.places.len())
            .filter_map(|i| {
                let place = &self.places[i];
                let state = place.state.load(Ordering::Relaxed);
                if state & TAG != OWNED {
                    return None;
                }
                let owner = state >> TAG_BITS;
                place
                    .state
                    .compare_exchange(state, revoked(owner), Ordering::AcqRel, Ordering::Relaxed)
                    .ok()?;
                // Each revocation of a place doubles the shared uses it waits before it may be
                // kept again: a pool with more callers than values settles into sharing.
                // The first revocation costs nothing more: it may be kept again at once.
                let strikes = (place.strikes.load(Ordering::Relaxed) + 1).min(MAX_COOL.ilog2() + 1);
                place.strikes.store(strikes, Ordering::Relaxed);
                place
                    .cool
                    .store((1 << (strikes - 1)) - 1, Ordering::Relaxed);
                Some((i, owner))
            })
            .collect();
        if marked.is_empty() {
            return 0;
        }
        fence::heavy();
        let keepers = keeper::keepers();
        marked
            .into_iter()
            .filter(|&(i, owner)| {
                let place = &self.places[i];
                // Acquire pairs with the owner's release in `leave`.
                keepers.entry(owner).busy.load(Ordering::Acquire)
                    != place as *const Place<T> as usize
                    && place
                        .state
                        .compare_exchange(revoked(owner), IDLE, Ordering::AcqRel, Ordering::Relaxed)
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
    ///
    /// The pool takes a new id: a thread that kept a place before still remembers the old one,
    /// and must never enter a place refilled since (its owner may be another thread now).
    pub fn drain(&mut self) -> Vec<T> {
        self.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        self.places
            .iter_mut()
            .filter_map(|p| {
                // No `Held` borrows the pool, so no value is in use. (Atomic operations, not
                // `get_mut`, which loom's atomics lack.)
                let state = p.state.swap(EMPTY, Ordering::Acquire);
                p.holder.store(0, Ordering::Relaxed);
                p.cool.store(0, Ordering::Relaxed);
                p.strikes.store(0, Ordering::Relaxed);
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
/// goes back to its place (to everyone, or to this thread if it keeps the place). It stays on
/// the thread that took it: the flags it clears when it drops are that thread's.
pub struct Held<'a, T> {
    pool: &'a Places<T>,
    place: &'a Place<T>,
    index: usize,
    /// The owner's entry, when entered as the owner of a place it kept.
    kept: Option<&'static Entry>,
    _not_send: PhantomData<*const ()>,
}

impl<T> Held<'_, T> {
    /// The value's place.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether this thread holds the value as the owner of a place it kept.
    pub fn is_kept(&self) -> bool {
        self.kept.is_some()
    }

    /// Gives the value back, and keeps its place for this thread if it may: not while the
    /// place is cooling after a revocation, nor when the thread keeps a place of this pool
    /// already, nor after its thread-locals are gone. The thread's next [`Places::hold`] enters
    /// it with no atomic read-modify-write, and nobody else takes it until
    /// [`Places::revoke`].
    #[inline]
    pub fn keep(self) {
        if self.kept.is_some() {
            return; // dropping leaves it kept
        }
        let place = self.place;
        let cool = place.cool.load(Ordering::Relaxed);
        if cool > 0 {
            place.cool.store(cool - 1, Ordering::Relaxed);
            return; // dropping gives it to everyone
        }
        let Some(entry) = keeper::claim(self.pool.id, self.index) else {
            return;
        };
        std::mem::forget(self);
        place.holder.store(0, Ordering::Relaxed);
        count_taken(-1);
        // Release: what this thread wrote to the value happens before a revoker's swap.
        place.state.store(owned(entry.owner), Ordering::Release);
    }

    /// Takes the value out of the pool and leaves its place empty, for a value that must not
    /// be used again. The caller gives the place back to whatever fills places.
    pub fn discard(self) -> T {
        let (place, kept) = (self.place, self.kept);
        std::mem::forget(self);
        // SAFETY: this thread holds the value, and the place is emptied below before anyone
        // else can look at it.
        let value = unsafe { (*place.value.get()).assume_init_read() };
        place.cool.store(0, Ordering::Relaxed);
        place.strikes.store(0, Ordering::Relaxed);
        match kept {
            Some(entry) => {
                // Its owner empties it and forgets it.
                keeper::forget(entry);
                // A swap, not a store: a revoker may have marked it REVOKED meanwhile, and
                // must find it EMPTY, not hand it back.
                place.state.swap(EMPTY, Ordering::AcqRel);
                entry.busy.store(0, Ordering::Release);
            }
            None => {
                place.holder.store(0, Ordering::Relaxed);
                count_taken(-1);
                place.state.store(EMPTY, Ordering::Release);
            }
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
        match self.kept {
            Some(entry) => Places::<T>::leave(entry, self.place),
            None => {
                self.place.holder.store(0, Ordering::Relaxed);
                count_taken(-1);
                // Release: this thread's writes to the value happen before the next taker's.
                self.place.state.store(IDLE, Ordering::Release);
            }
        }
    }
}

impl<T> std::fmt::Debug for Held<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("index", &self.index)
            .field("kept", &self.kept.is_some())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
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
        // A nested hold on the same thread is refused, though two places are idle.
        assert_eq!(pool.hold(|| 0).err(), Some(Miss::Nested));
        drop(again);
        assert_eq!(*pool.hold(|| 0).unwrap(), 8);
    }

    #[test]
    fn other_threads_do_not_see_a_kept_place_until_it_is_revoked() {
        let pool = Places::new(2);
        drop(pool.fill(0, 1));
        pool.hold(|| 0).unwrap().keep();
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(pool.hold(|| 0).err(), Some(Miss::Busy)));
        });
        assert_eq!(pool.revoke(), 1);
        assert_eq!(pool.revoke(), 0, "nothing is kept any more");
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut held = pool.hold(|| 0).expect("revoked, so idle");
                *held += 1;
                // A place revoked once may be kept again, by anyone.
                held.keep();
                assert!(!pool.any_idle());
                assert!(pool.hold(|| 0).unwrap().is_kept());
            });
        });
        // Its old owner backs off without touching it: the other thread (gone now) keeps it.
        assert_eq!(pool.hold(|| 0).err(), Some(Miss::Busy));
        assert_eq!(pool.revoke(), 1, "an exited thread's place comes back");
        let held = pool.hold(|| 0).unwrap();
        assert!(!held.is_kept());
        assert_eq!(*held, 2);
    }

    /// A place kept again after a revocation waits longer each time, so a pool with more
    /// callers than values settles into sharing instead of revoking on every call.
    #[test]
    fn each_revocation_of_a_place_doubles_the_wait_before_it_is_kept_again() {
        let pool = Places::new(1);
        drop(pool.fill(0, ()));
        let mut waits = vec![];
        for _ in 0..5 {
            pool.hold(|| 0).unwrap().keep();
            assert!(pool.hold(|| 0).unwrap().is_kept());
            assert_eq!(pool.revoke(), 1);
            let mut shared = 0;
            loop {
                let held = pool.hold(|| 0).unwrap();
                if held.is_kept() {
                    break;
                }
                held.keep();
                shared += 1;
            }
            waits.push(shared - 1);
        }
        assert_eq!(waits, [0, 1, 3, 7, 15]);
    }

    /// A thread that took a value (not kept) and asks the pool again, with other values idle,
    /// is refused too: the pool never hands one thread two of its values at once.
    #[test]
    fn a_nested_hold_is_refused_whether_the_outer_one_is_kept_or_taken() {
        let pool = Places::new(3);
        for i in 0..3 {
            drop(pool.fill(i, i));
        }
        let outer = pool.hold(|| 0).unwrap();
        assert!(!outer.is_kept());
        assert_eq!(pool.hold(|| 1).err(), Some(Miss::Nested));
        std::thread::scope(|s| {
            s.spawn(|| assert!(pool.hold(|| 1).is_ok(), "another thread is not nested"));
        });
        drop(outer);
        let again = pool.hold(|| 0).unwrap();
        assert_eq!(pool.hold(|| 1).err(), Some(Miss::Nested));
        again.keep();
        let kept = pool.hold(|| 0).unwrap();
        assert!(kept.is_kept());
        assert_eq!(pool.hold(|| 1).err(), Some(Miss::Nested));
        drop(kept);
        // A discarded value is no longer held either.
        let taken = pool.hold(|| 0).unwrap();
        let index = taken.index();
        assert_eq!(taken.discard(), index);
        drop(pool.fill(index, 9));
        assert!(pool.hold(|| 0).is_ok());
    }

    /// A thread calling more pools in turn than the four it used to remember keeps a place in
    /// each: none is orphaned, and every use after the first enters a kept place.
    #[test]
    fn a_thread_keeps_a_place_in_each_of_eight_pools_it_uses_in_turn() {
        let pools: Vec<Places<u32>> = (0..8).map(|_| Places::new(2)).collect();
        for pool in &pools {
            drop(pool.fill(0, 0));
        }
        for round in 0..10 {
            for pool in &pools {
                let held = pool.hold(|| 0).unwrap();
                assert_eq!(held.is_kept(), round > 0, "round {round}");
                held.keep();
            }
        }
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
        assert_eq!(pool.hold(|| 0).err(), Some(Miss::Busy), "empty");
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

    /// `drain` cleared the places but left each thread's remembered place valid, so after a
    /// refill a new owner kept place 0 while the old one still entered it: two threads held
    /// one value. A drained pool forgets every thread's place.
    #[test]
    fn a_thread_that_kept_a_place_before_a_drain_never_enters_it_after() {
        use std::sync::mpsc::channel;
        use std::sync::Mutex;
        let pool = Mutex::new(Places::new(1));
        drop(pool.lock().unwrap().fill(0, 1));
        let (to_old, old_goes) = channel::<()>();
        let (old_said, from_old) = channel::<Option<i32>>();
        let pool = &pool;
        std::thread::scope(|s| {
            s.spawn(move || {
                pool.lock().unwrap().hold(|| 0).unwrap().keep();
                old_said.send(None).unwrap();
                old_goes.recv().unwrap();
                // Drained, refilled, and kept by another thread since.
                let pool = pool.lock().unwrap();
                old_said
                    .send(pool.hold(|| 0).ok().map(|held| *held))
                    .unwrap();
            });
            from_old.recv().unwrap();
            {
                let mut pool = pool.lock().unwrap();
                assert_eq!(pool.drain(), vec![1]);
                pool.fill(0, 2).keep();
            }
            to_old.send(()).unwrap();
            assert_eq!(
                from_old.recv().unwrap(),
                None,
                "the old owner entered the new owner's place"
            );
        });
        assert!(pool.lock().unwrap().hold(|| 0).unwrap().is_kept());
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
                        if let Ok(held) = pool.hold(|| t + r) {
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
