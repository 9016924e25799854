//! [`HomeCells`]: a bounded pool of boxed values in which each value has a home cell and
//! always goes back to it.
//!
//! Taking a value swaps a cell empty (one atomic read-modify-write), starting at a cell the
//! caller picks, so threads that start at different cells mostly touch different cache lines
//! and there is no shared queue head. Returning a value is a plain release store into its
//! home, which its taker left empty. The wasm backend keeps its instances this way.

use std::ptr;
use std::sync::atomic::Ordering;

use crate::sync::AtomicPtr;

/// One cell of the pool, on its own cache line.
#[repr(align(64))]
struct Cell<T>(AtomicPtr<T>);

/// A bounded pool of boxed values with home cells; see the module docs.
///
/// ```
/// let pool = swapkit_sync::HomeCells::new(4);
/// pool.put(2, Box::new("instance"));
/// let (home, value) = pool.take(0).expect("one is idle");
/// assert_eq!((home, *value), (2, "instance"));
/// assert!(pool.take(0).is_none()); // taken
/// pool.put(home, value);
/// assert!(pool.any_idle());
/// ```
pub struct HomeCells<T> {
    cells: Box<[Cell<T>]>,
}

// SAFETY: the pool moves boxed values between threads and never shares a value: it is
// `Send`/`Sync` when `T` is `Send`, like a `Mutex<Vec<Box<T>>>`.
unsafe impl<T: Send> Send for HomeCells<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for HomeCells<T> {}

impl<T> HomeCells<T> {
    /// A pool of `n` empty cells.
    pub fn new(n: usize) -> HomeCells<T> {
        HomeCells {
            cells: (0..n)
                .map(|_| Cell(AtomicPtr::new(ptr::null_mut())))
                .collect(),
        }
    }

    /// The number of cells.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether the pool has no cells at all.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Claims an idle value and its home, looking at every cell once from `start` (taken
    /// modulo the length).
    #[inline]
    pub fn take(&self, start: usize) -> Option<(usize, Box<T>)> {
        let n = self.cells.len();
        if n == 0 {
            return None;
        }
        let mut i = start % n;
        for _ in 0..n {
            let cell = &self.cells[i].0;
            // A plain load first, so a busy cell costs no read-modify-write.
            if !cell.load(Ordering::Relaxed).is_null() {
                // Acquire pairs with `put`'s release: the value's last writes are visible.
                let p = cell.swap(ptr::null_mut(), Ordering::Acquire);
                if !p.is_null() {
                    // SAFETY: every non-null cell holds a `Box::into_raw`, and the swap made
                    // this thread its only owner.
                    return Some((i, unsafe { Box::from_raw(p) }));
                }
            }
            i = if i + 1 == n { 0 } else { i + 1 };
        }
        None
    }

    /// Puts `value` in cell `home`, which must be empty: a value goes back only to the home
    /// it was taken from, and a new value only to a cell the caller knows is vacant.
    ///
    /// # Panics
    ///
    /// If `home` is out of range. In debug builds, if the cell is occupied.
    #[inline]
    pub fn put(&self, home: usize, value: Box<T>) {
        let cell = &self.cells[home].0;
        debug_assert!(
            cell.load(Ordering::Relaxed).is_null(),
            "cell {home} is occupied"
        );
        cell.store(Box::into_raw(value), Ordering::Release);
    }

    /// Whether any cell holds an idle value right now.
    pub fn any_idle(&self) -> bool {
        self.cells
            .iter()
            .any(|c| !c.0.load(Ordering::Acquire).is_null())
    }

    /// Takes every idle value out, in cell order.
    pub fn drain(&self) -> Vec<Box<T>> {
        (0..self.cells.len())
            .filter_map(|i| {
                let p = self.cells[i].0.swap(ptr::null_mut(), Ordering::Acquire);
                // SAFETY: as in `take`.
                (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
            })
            .collect()
    }
}

impl<T> Drop for HomeCells<T> {
    fn drop(&mut self) {
        drop(self.drain());
    }
}

impl<T> std::fmt::Debug for HomeCells<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HomeCells")
            .field("cells", &self.cells.len())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn threads_take_and_return_values_and_none_is_shared_or_lost() {
        let pool = HomeCells::new(3);
        for home in 0..3 {
            pool.put(home, Box::new(AtomicUsize::new(0)));
        }
        let rounds = if cfg!(miri) { 50 } else { 20_000 };
        let taken = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (pool, taken) = (&pool, &taken);
                s.spawn(move || {
                    for r in 0..rounds {
                        if let Some((home, v)) = pool.take(t + r) {
                            // Only the taker touches it, so a plain load and store is exact
                            // unless two threads hold one value at once.
                            let n = v.load(Ordering::Relaxed);
                            v.store(n + 1, Ordering::Relaxed);
                            taken.fetch_add(1, Ordering::Relaxed);
                            pool.put(home, v);
                        }
                    }
                });
            }
        });
        let all = pool.drain();
        assert_eq!(all.len(), 3, "every value came home");
        assert!(!pool.any_idle());
        let total: usize = all.iter().map(|v| v.load(Ordering::Relaxed)).sum();
        assert_eq!(total, taken.load(Ordering::Relaxed), "no update was lost");
        assert!(total > 0);
    }

    #[test]
    fn dropping_the_pool_drops_idle_values() {
        let dropped = std::sync::Arc::new(());
        let pool = HomeCells::new(2);
        pool.put(0, Box::new(dropped.clone()));
        pool.put(1, Box::new(dropped.clone()));
        let (_, taken) = pool.take(1).unwrap();
        drop(pool);
        assert_eq!(
            std::sync::Arc::strong_count(&dropped),
            2,
            "the taken one lives on"
        );
        drop(taken);
        assert_eq!(std::sync::Arc::strong_count(&dropped), 1);
    }
}
