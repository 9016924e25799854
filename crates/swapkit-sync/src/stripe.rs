//! [`StripedCounter`]: a counter that many threads bump with no locked instruction.
//!
//! A thread that counts takes one of [`OWNED`] stripe numbers for its lifetime, from a
//! lock-free bitmap, and a thread-local destructor gives it back when the thread exits.
//! Stripe `k` of every counter has one writer, the thread holding `k`, so counting is a plain
//! load and store on a cache line no other thread writes: no atomic read-modify-write, which
//! costs about 6 ns on x86-64. Threads beyond the first [`OWNED`] alive at once share one more
//! stripe, counted with `fetch_add`; so does a thread that counts after its thread-locals
//! were destroyed. The sum over stripes is read only by reports.
//!
//! Handing a stripe to a new thread is ordered by the bitmap: the old holder's release
//! (`fetch_or`) pairs with the new holder's acquire (its compare-exchange), so the new holder's
//! plain load sees every count the old one stored.

use std::sync::atomic::Ordering;

use crate::sync::{AtomicU32, AtomicU64};

/// Stripe numbers threads can hold for themselves: one bit each of the free bitmap.
pub const OWNED: usize = u32::BITS as usize;

/// The stripe threads share when every owned one is taken.
const SHARED: usize = OWNED;

/// One cache line (two on CPUs that prefetch pairs), so stripes never share one.
#[repr(align(128))]
struct Line(AtomicU64);

/// A counter that threads bump without contending: see the module docs.
///
/// ```
/// let counter = swapkit_sync::StripedCounter::new();
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| (0..1000).for_each(|_| counter.add_one()));
///     }
/// });
/// assert_eq!(counter.sum(), 4000);
/// ```
pub struct StripedCounter {
    lines: [Line; OWNED + 1],
}

impl Default for StripedCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for StripedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StripedCounter").field(&self.sum()).finish()
    }
}

/// The stripe numbers no thread holds, one bit each.
#[cfg(not(loom))]
static FREE: AtomicU32 = AtomicU32::new(u32::MAX);

#[cfg(loom)]
loom::lazy_static! {
    static ref FREE: AtomicU32 = AtomicU32::new(u32::MAX);
}

/// A thread's stripe number, given back when the thread exits.
struct Stripe(usize);

impl Stripe {
    fn claim() -> Stripe {
        let mut free = FREE.load(Ordering::Relaxed);
        while free != 0 {
            let bit = free.trailing_zeros();
            // Acquire pairs with the release in `drop`: the counts the last holder wrote are
            // visible to this thread's plain loads.
            match FREE.compare_exchange_weak(
                free,
                free & !(1 << bit),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Stripe(bit as usize),
                Err(now) => free = now,
            }
        }
        Stripe(SHARED)
    }
}

impl Drop for Stripe {
    fn drop(&mut self) {
        if self.0 < OWNED {
            FREE.fetch_or(1 << self.0, Ordering::Release);
        }
    }
}

#[cfg(not(loom))]
std::thread_local! {
    static STRIPE: Stripe = Stripe::claim();
}

#[cfg(loom)]
loom::thread_local! {
    static STRIPE: Stripe = Stripe::claim();
}

impl StripedCounter {
    /// A counter at zero.
    pub fn new() -> StripedCounter {
        StripedCounter {
            lines: std::array::from_fn(|_| Line(AtomicU64::new(0))),
        }
    }

    /// Adds one, on this thread's stripe.
    #[inline]
    pub fn add_one(&self) {
        match STRIPE.try_with(|s| s.0) {
            Ok(k) if k < OWNED => {
                // Only this thread writes stripe `k` (see the module docs).
                let line = &self.lines[k].0;
                line.store(line.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            }
            // The shared stripe, or a thread past its thread-local destructors.
            _ => {
                self.lines[SHARED].0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The sum over all stripes. Counts still being stored by running threads may be missed;
    /// none is ever counted twice.
    pub fn sum(&self) -> u64 {
        self.lines.iter().map(|l| l.0.load(Ordering::Relaxed)).sum()
    }

    /// What the threads that share a stripe counted (for tests of the overflow path).
    #[doc(hidden)]
    pub fn shared(&self) -> u64 {
        self.lines[SHARED].0.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn counts_sum_over_threads() {
        let counter = Arc::new(StripedCounter::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| counter.add_one()))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(counter.sum(), 4000);
    }

    #[test]
    fn threads_past_the_owned_stripes_share_one_and_lose_nothing() {
        let counter = Arc::new(StripedCounter::new());
        // Miri runs threads slowly; a few past the owned stripes still take the shared path.
        let (threads, per) = if cfg!(miri) {
            (OWNED + 2, 10)
        } else {
            (OWNED + 8, 1000)
        };
        let all_alive = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (counter, all_alive) = (counter.clone(), all_alive.clone());
                std::thread::spawn(move || {
                    counter.add_one();
                    // Every thread holds its stripe number here, so some share.
                    all_alive.wait();
                    (1..per).for_each(|_| counter.add_one());
                })
            })
            .collect();
        handles.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(counter.sum(), (threads * per) as u64);
        // Other tests' threads may hold stripes too, so at least the overflow shares.
        assert!(counter.shared() >= ((threads - OWNED) * per) as u64);
        // Stripe numbers come back when threads exit, and their counts stay.
        let again = if cfg!(miri) { OWNED + 2 } else { 3 * OWNED };
        for _ in 0..again {
            let counter = counter.clone();
            std::thread::spawn(move || counter.add_one())
                .join()
                .unwrap();
        }
        assert_eq!(counter.sum(), (threads * per + again) as u64);
    }
}
