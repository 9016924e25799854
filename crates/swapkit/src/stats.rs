//! Per-instance call counts, kept without a shared counter on the call path.
//!
//! Calls are counted on a [`StripedCounter`]: a plain load and store on a stripe only the
//! calling thread writes, with no atomic read-modify-write (which costs about 6 ns on the call
//! path). The sum over stripes is read only by status reports, metrics and probation. Failures
//! are rare, and counted on the cold error path.

use std::sync::atomic::{AtomicU64, Ordering};

use swapkit_sync::StripedCounter;

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
    calls: StripedCounter,
    errors: AtomicU64,
    panics: AtomicU64,
    traps: AtomicU64,
}

/// A snapshot of [`Stats`].
pub(crate) type Counts = crate::CallCounts;

impl crate::CallCounts {
    #[cfg_attr(not(feature = "ops"), allow(dead_code))]
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
            calls: StripedCounter::new(),
            errors: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            traps: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// Counts one call, on this thread's stripe.
    #[inline]
    pub fn call(&self) {
        self.calls.add_one();
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
            calls: self.calls.sum(),
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
