//! Per-instance call counts, kept without a shared counter on the call path.
//!
//! Each thread adds to a stripe of its own (its own cache line), so two threads calling the
//! same plugin never write the same line; the sum over stripes is read only by status
//! reports, metrics and probation. Failures are rare, and counted on the cold error path.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const STRIPES: usize = 16;

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
#[derive(Default)]
pub(crate) struct Stats {
    calls: [Line; STRIPES],
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

fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}

impl Stats {
    /// Counts one call, on this thread's stripe.
    #[inline]
    pub fn call(&self) {
        self.calls[stripe()].0.fetch_add(1, Ordering::Relaxed);
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
}
