//! Per-instance call counts, kept without a shared counter on the call path.
//!
//! A thread that calls plugins takes one of [`OWNED`] stripe numbers for its lifetime, and
//! gives it back when it exits. Stripe `k` of every instance's counts has one writer, the
//! thread holding `k`, so counting a call is a plain load and store on a cache line no other
//! thread writes: no atomic read-modify-write, which costs about 6 ns on the call path. Threads
//! beyond the first [`OWNED`] at once share one more stripe, counted with `fetch_add`. The sum
//! over stripes is read only by status reports, metrics and probation. Failures are rare, and
//! counted on the cold error path.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Stripe numbers threads can hold for themselves: one bit each of [`FREE`].
const OWNED: usize = u32::BITS as usize;

/// The stripe threads share when every owned one is taken.
const SHARED: usize = OWNED;

/// One cache line (two on CPUs that prefetch pairs), so stripes never share one.
#[repr(align(128))]
#[derive(Default)]
struct Line(AtomicU64);

/// How a call failed, as the counts and metrics class it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// An error status, a result that did not decode, an exhausted pool.
    Error,
    /// A panic caught at the boundary.
    Panic,
    /// A wasm trap, timeout or resource limit.
    Trap,
}

/// The counts of one plugin instance.
pub(crate) struct Stats {
    calls: [Line; OWNED + 1],
    errors: AtomicU64,
    panics: AtomicU64,
    traps: AtomicU64,
}

/// A snapshot of [`Stats`].
pub(crate) type Counts = crate::CallCounts;

impl crate::CallCounts {
    pub(crate) fn failures(&self) -> u64 {
        self.errors + self.panics + self.traps
    }
}

impl std::ops::AddAssign for crate::CallCounts {
    fn add_assign(&mut self, other: Self) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.panics += other.panics;
        self.traps += other.traps;
    }
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            calls: std::array::from_fn(|_| Line::default()),
            errors: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            traps: AtomicU64::new(0),
        }
    }
}

/// The stripe numbers no thread holds, one bit each.
static FREE: AtomicU32 = AtomicU32::new(u32::MAX);

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

thread_local! {
    static STRIPE: Stripe = Stripe::claim();
}

impl Stats {
    /// Counts one call, on this thread's stripe.
    #[inline]
    pub fn call(&self) {
        match STRIPE.try_with(|s| s.0) {
            Ok(k) if k < OWNED => {
                // Only this thread writes stripe `k` (see the module docs).
                let line = &self.calls[k].0;
                line.store(line.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            }
            // A shared stripe, or a thread past its thread-local destructors.
            _ => {
                self.calls[SHARED].0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts one failed call.
    #[cold]
    pub fn fault(&self, fault: Fault) {
        let counter = match fault {
            Fault::Error => &self.errors,
            Fault::Panic => &self.panics,
            Fault::Trap => &self.traps,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Counts {
        Counts {
            calls: self.calls.iter().map(|l| l.0.load(Ordering::Relaxed)).sum(),
            errors: self.errors.load(Ordering::Relaxed),
            panics: self.panics.load(Ordering::Relaxed),
            traps: self.traps.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_over_threads() {
        let stats = std::sync::Arc::new(Stats::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| stats.call()))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        stats.fault(Fault::Panic);
        stats.fault(Fault::Trap);
        stats.fault(Fault::Trap);
        let c = stats.counts();
        assert_eq!((c.calls, c.errors, c.panics, c.traps), (4000, 0, 1, 2));
        assert_eq!(c.failures(), 3);
    }

    #[test]
    fn threads_past_the_owned_stripes_share_one_and_lose_nothing() {
        let stats = std::sync::Arc::new(Stats::default());
        let threads = OWNED + 8;
        let all_alive = std::sync::Arc::new(std::sync::Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (stats, all_alive) = (stats.clone(), all_alive.clone());
                std::thread::spawn(move || {
                    stats.call();
                    // Every thread holds its stripe number here, so some share.
                    all_alive.wait();
                    (0..999).for_each(|_| stats.call());
                })
            })
            .collect();
        handles.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(stats.counts().calls, threads as u64 * 1000);
        assert!(stats.calls[SHARED].0.load(Ordering::Relaxed) >= 8 * 1000);
        // Stripe numbers come back when threads exit, and their counts stay.
        for _ in 0..3 * OWNED {
            let stats = stats.clone();
            std::thread::spawn(move || stats.call()).join().unwrap();
        }
        assert_eq!(
            stats.counts().calls,
            threads as u64 * 1000 + 3 * OWNED as u64
        );
    }
}
