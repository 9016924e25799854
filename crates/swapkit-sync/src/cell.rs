//! [`HazardCell`]: an `Arc<T>` that calls hold with no lock and no shared write, and that a
//! writer can swap at any time.
//!
//! # The protocol
//!
//! The cell is a raw pointer that owns one strong reference (`Arc::into_raw`), or null.
//!
//! - **Enter.** A reader loads the pointer `g`, stores it in a hazard slot that only its
//!   thread writes, runs the light fence, and loads the pointer again. If it still reads `g`,
//!   `g` is protected until the slot is cleared. If not, the attempt **failed validation**: the
//!   reader clears its slot of `g` (it keeps it taken with a marker no value equals), fences,
//!   and scans the cell's retiring list itself before it tries again (see "leaving" below; a
//!   writer's scan may have seen `g` in the slot and kept it).
//! - **Swap.** A writer swaps the pointer (sequentially consistent), pushes the old value on
//!   the cell's retiring list, and **scans**: under the list's lock it runs the heavy fence,
//!   reads every slot of every record, and releases each retiring value that no slot names.
//! - **Leave.** A reader clears its slot (release), runs the light fence, and loads the
//!   pointer. If the cell no longer holds `g`, it scans.
//!
//! # Why no value is freed under a reader
//!
//! A reader's slot store and its second load, and a writer's pointer swap and its slot loads,
//! each have a fence between them; at least one of the two fences is a full barrier on both
//! threads (`fence::heavy` forces one on every thread, or both are `fence(SeqCst)`). By the
//! store-buffer argument, either the writer's scan reads the reader's slot as `g`, and keeps
//! `g`, or the reader's second load reads the new pointer, and the reader does not use `g`.
//! A slot is cleared only after the reader's last use of `g` (release), and a scan loads it
//! with acquire, so the free happens after every use.
//!
//! # Why every superseded value is freed
//!
//! The same argument run the other way: when a reader clears a slot that named `g` (on leaving
//! or after a failed validation), either the writer's scan, which comes after the swap that
//! retired `g`, reads the cleared slot and frees `g`, or the reader's load after its fence
//! reads a pointer other than `g` and the reader scans. The writer pushes `g` on the list
//! before its fence, so a reader that scans finds it there (or finds it already freed). So the
//! last slot to let go of a superseded value always leads to a scan that frees it. Before this
//! rule covered failed validations, a reader that retried after a swap left its superseded
//! value held until the next swap of that cell.
//!
//! # Guards
//!
//! A [`Guard`] keeps the pointer it protected, with the provenance of `Arc::into_raw`, and
//! hands out references that borrow the guard, so no reference outlives its protection.
//! Guards are `!Send`; they may drop in any order, and may outlive their thread's exit in a
//! thread-local (see `record.rs`).

use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::fence;
use crate::record::{holders, registry, take_slot, Slot, RESERVED};
use crate::sync::{lock, AtomicPtr, Mutex};

/// An `Arc<T>` (or nothing) that calls can hold for their length without a lock or a shared
/// write, and that can be swapped at any time. A superseded value is released once no guard
/// holds it, by whichever of the writer and the last guard comes last.
///
/// ```
/// use std::sync::Arc;
/// use swapkit_sync::HazardCell;
///
/// let cell = HazardCell::new(Arc::new(String::from("v1")));
/// let guard = cell.enter().expect("the cell holds a value");
/// let old = cell.swap(Some(Arc::new(String::from("v2"))));
/// assert_eq!(guard.get(), "v1"); // still protected
/// drop(guard); // the last guard out releases "v1"
/// assert_eq!(Arc::strong_count(&old.unwrap()), 1);
/// assert_eq!(cell.enter().unwrap().get(), "v2");
/// ```
pub struct HazardCell<T> {
    /// Owns one strong reference (`Arc::into_raw`), or is null.
    ptr: AtomicPtr<T>,
    /// Superseded values, each holding one strong reference until no slot names it.
    retiring: Mutex<Vec<Arc<T>>>,
}

// SAFETY: the cell hands out `&T` to many threads (needs `T: Sync`) and drops `T` on whichever
// thread releases it last (needs `T: Send`), exactly like `Arc<T>`.
unsafe impl<T: Send + Sync> Send for HazardCell<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for HazardCell<T> {}

impl<T> HazardCell<T> {
    /// An empty cell, usable in a `static`.
    #[cfg(not(loom))]
    pub const fn empty() -> HazardCell<T> {
        HazardCell {
            ptr: AtomicPtr::new(ptr::null_mut()),
            retiring: Mutex::new(Vec::new()),
        }
    }

    /// An empty cell.
    #[cfg(loom)]
    pub fn empty() -> HazardCell<T> {
        HazardCell {
            ptr: AtomicPtr::new(ptr::null_mut()),
            retiring: Mutex::new(Vec::new()),
        }
    }

    /// A cell holding `value`.
    pub fn new(value: Arc<T>) -> HazardCell<T> {
        fence::init();
        HazardCell {
            ptr: AtomicPtr::new(Arc::into_raw(value).cast_mut()),
            retiring: Mutex::new(Vec::new()),
        }
    }

    /// Whether the cell holds no value: one load, for fast paths that only care about empty.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.ptr.load(Ordering::Acquire).is_null()
    }

    /// Protects the current value for as long as the guard lives, or returns `None` if the
    /// cell is empty. No lock and no shared write: a store to this thread's own slot, a
    /// compiler fence and two loads.
    #[inline]
    pub fn enter(&self) -> Option<Guard<'_, T>> {
        self.protect::<true>()
    }

    /// [`enter`](Self::enter) for a cell the caller knows is never empty: the emptiness
    /// check is compiled out.
    ///
    /// # Panics
    ///
    /// If the cell is empty after all.
    #[inline(always)]
    pub fn enter_full(&self) -> Guard<'_, T> {
        match self.protect::<false>() {
            Some(guard) => guard,
            None => unreachable!("protect::<false> never returns None"),
        }
    }

    #[inline(always)]
    fn protect<const MAY_BE_EMPTY: bool>(&self) -> Option<Guard<'_, T>> {
        let mut g = self.ptr.load(Ordering::Acquire);
        if g.is_null() {
            return Self::nothing::<'_, MAY_BE_EMPTY>();
        }
        let slot = take_slot(g.cast());
        let hazard = slot.cell();
        loop {
            fence::light();
            // If `g` is still in the cell after our slot was published, any swap that removes
            // it comes later, and the scan after that swap will see our slot.
            let now = self.ptr.load(Ordering::Acquire);
            if now == g {
                return Some(Guard {
                    cell: self,
                    // `now`, not `g`: equal addresses, but `g` may be a freed value whose
                    // address the value now in the cell reuses (ABA, which is harmless here:
                    // our slot protects that address from now on), and only `now` carries the
                    // provenance of the live value. Miri caught the difference.
                    // SAFETY: `now == g`, which is not null (checked above).
                    ptr: unsafe { NonNull::new_unchecked(now) },
                    slot,
                    not_send: PhantomData,
                });
            }
            self.failed_validation(hazard);
            g = now;
            if g.is_null() {
                slot.release();
                return Self::nothing::<'_, MAY_BE_EMPTY>();
            }
            hazard.store(g.cast(), Ordering::Relaxed);
        }
    }

    /// What [`protect`](Self::protect) returns for an empty cell.
    #[cold]
    fn nothing<'a, const MAY_BE_EMPTY: bool>() -> Option<Guard<'a, T>> {
        if MAY_BE_EMPTY {
            return None;
        }
        panic!("HazardCell::enter_full on an empty cell");
    }

    /// After a failed validation: the slot stops naming `g` (see "Why every superseded value
    /// is freed" above) but stays taken ([`RESERVED`]), since the scan may run a value's drop,
    /// which may take guards on this thread.
    #[cold]
    fn failed_validation(&self, hazard: &AtomicPtr<()>) {
        hazard.store(RESERVED, Ordering::Release);
        fence::light();
        self.reclaim();
    }

    /// A strong reference to the current value, or `None` if the cell is empty.
    pub fn load_full(&self) -> Option<Arc<T>> {
        self.enter().map(|guard| guard.to_arc())
    }

    /// Puts `next` in the cell and returns the superseded value, which is released as soon as
    /// no guard holds it (perhaps before this returns, leaving the caller the only owner).
    pub fn swap(&self, next: Option<Arc<T>>) -> Option<Arc<T>> {
        fence::init();
        let raw = next.map_or(ptr::null_mut(), |n| Arc::into_raw(n).cast_mut());
        let old = self.ptr.swap(raw, Ordering::SeqCst);
        if old.is_null() {
            return None;
        }
        // SAFETY: `old` came from `Arc::into_raw` and was in the cell until the swap above;
        // the strong reference it owned moves here.
        let old = unsafe { Arc::from_raw(old) };
        let returned = old.clone();
        lock(&self.retiring).push(old);
        self.reclaim();
        Some(returned)
    }

    /// Releases every superseded value that no hazard slot names. Guards and swaps call it;
    /// it is public for callers that want to release promptly after their own bookkeeping.
    pub fn reclaim(&self) {
        let released: Vec<Arc<T>> = {
            let mut retiring = lock(&self.retiring);
            if retiring.is_empty() {
                return;
            }
            fence::heavy();
            let records = registry();
            let (held, free): (Vec<_>, Vec<_>) = retiring
                .drain(..)
                .partition(|g| holders(&records, Arc::as_ptr(g).cast()) > 0);
            *retiring = held;
            free
        };
        // Dropped outside the locks: a last reference may run arbitrary code (on_free).
        drop(released);
    }

    /// How many guards hold `value` right now, on any thread.
    pub fn guards_on(&self, value: &T) -> usize {
        fence::heavy();
        holders(&registry(), ptr::from_ref(value).cast())
    }

    /// Whether `value` was superseded and is waiting for its last guard.
    pub fn is_retiring(&self, value: &T) -> bool {
        lock(&self.retiring).iter().any(|g| ptr::eq(&**g, value))
    }

    /// How many superseded values wait for their last guard.
    pub fn retiring(&self) -> usize {
        lock(&self.retiring).len()
    }
}

impl<T> Drop for HazardCell<T> {
    fn drop(&mut self) {
        // No guard can exist: each borrows `self`.
        let raw = self.ptr.swap(ptr::null_mut(), Ordering::Relaxed);
        if !raw.is_null() {
            // SAFETY: the pointer owns one strong reference from `Arc::into_raw`.
            drop(unsafe { Arc::from_raw(raw) });
        }
        lock(&self.retiring).clear();
    }
}

impl<T> std::fmt::Debug for HazardCell<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HazardCell")
            .field("empty", &self.is_empty())
            .field("retiring", &self.retiring())
            .finish()
    }
}

/// A call's hold on one value of a [`HazardCell`]: the value is not released while the guard
/// lives. Not `Send`: it is dropped on the thread that made it, in any order.
pub struct Guard<'a, T> {
    cell: &'a HazardCell<T>,
    /// From `Arc::into_raw`, protected by `slot`.
    ptr: NonNull<T>,
    slot: Slot,
    not_send: PhantomData<*const ()>,
}

impl<T> Guard<'_, T> {
    /// The guarded value, borrowed from the guard: it cannot outlive the protection.
    ///
    /// ```compile_fail
    /// use std::sync::Arc;
    /// let cell = swapkit_sync::HazardCell::new(Arc::new(1));
    /// let escaped: &i32 = {
    ///     let guard = cell.enter().unwrap();
    ///     guard.get() // error: `guard` does not live long enough
    /// };
    /// cell.swap(Some(Arc::new(2))); // would free the value `escaped` points at
    /// assert_eq!(*escaped, 1);
    /// ```
    #[inline(always)]
    pub fn get(&self) -> &T {
        // SAFETY: the value is protected by our slot for as long as `self` lives (see the
        // module docs), and the returned reference borrows `self`.
        unsafe { self.ptr.as_ref() }
    }

    /// A strong reference to the guarded value, to hold it past this guard (for example
    /// across an `.await`, where a guard cannot go).
    pub fn to_arc(&self) -> Arc<T> {
        let raw = self.ptr.as_ptr().cast_const();
        // SAFETY: `raw` came from `Arc::into_raw` (keeping its provenance), and the value is
        // protected by this guard, so its strong count is at least one while we add ours.
        unsafe {
            Arc::increment_strong_count(raw);
            Arc::from_raw(raw)
        }
    }
}

impl<T> std::ops::Deref for Guard<'_, T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        self.get()
    }
}

impl<T> Drop for Guard<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        let g = self.ptr.as_ptr();
        self.slot.release();
        fence::light();
        // Compared, never dereferenced: `g` may be freed by now.
        if self.cell.ptr.load(Ordering::Acquire) != g {
            self.cell.reclaim();
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Guard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Guard").field(self.get()).finish()
    }
}
