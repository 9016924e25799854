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
    /// Sampled call latencies, recorded only while a canary routes calls to this plugin.
    pub latency: Latency,
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
            latency: Latency::default(),
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

/// Latency buckets: one per nanosecond below 4 ns, then four per power of two up to 2^40 ns
/// (18 minutes), so a bucket is at most 25% wide.
const LATENCY_BUCKETS: usize = 4 * 40;

/// A histogram of call latencies in nanoseconds: a fixed array of counters in an allocation
/// of its own, so that its lines are never the lines the call path reads. Only sampled calls
/// write to it (see `canary::route`), with a relaxed add.
pub(crate) struct Latency {
    buckets: Box<[AtomicU64; LATENCY_BUCKETS]>,
}

impl Default for Latency {
    fn default() -> Latency {
        Latency {
            buckets: Box::new([const { AtomicU64::new(0) }; LATENCY_BUCKETS]),
        }
    }
}

/// The bucket of a latency of `ns` nanoseconds.
fn bucket_of(ns: u64) -> usize {
    if ns < 4 {
        return ns as usize;
    }
    let octave = 63 - ns.leading_zeros() as usize; // 2 and up
    let sub = ((ns >> (octave - 2)) & 3) as usize;
    (4 * (octave - 1) + sub).min(LATENCY_BUCKETS - 1)
}

/// The middle of bucket `i`, in nanoseconds.
fn bucket_middle(i: usize) -> u64 {
    if i < 4 {
        return i as u64;
    }
    let (octave, sub) = (i / 4 + 1, (i % 4) as u64);
    let low = (4 + sub) << (octave - 2);
    low + (1u64 << (octave - 2)) / 2
}

impl Latency {
    /// Records one sampled call that took `took`.
    pub fn record(&self, took: std::time::Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot(
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        )
    }
}

/// The counts of a [`Latency`] at one moment; subtract an earlier one for a window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LatencySnapshot(Vec<u64>);

impl LatencySnapshot {
    /// The samples recorded between `earlier` and this one.
    pub fn since(&self, earlier: &LatencySnapshot) -> LatencySnapshot {
        LatencySnapshot(
            self.0
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.0.get(i).copied().unwrap_or(0)))
                .collect(),
        )
    }

    /// How many samples it holds.
    pub fn samples(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The latency below which a share `q` (0 to 1) of the samples fall, to the bucket's
    /// middle; `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<std::time::Duration> {
        let total = self.samples();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(std::time::Duration::from_nanos(bucket_middle(i)));
            }
        }
        None
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
    fn latency_buckets_are_ordered_and_at_most_a_quarter_wide() {
        let mut last = 0;
        for ns in (0..100_000u64).chain([1 << 30, u64::MAX]) {
            let b = bucket_of(ns);
            assert!(b >= last, "buckets never go down");
            last = b;
            if (16..1 << 39).contains(&ns) {
                let middle = bucket_middle(b) as f64;
                assert!(
                    (middle - ns as f64).abs() <= 0.25 * ns as f64,
                    "{ns} -> {middle}"
                );
            }
        }
    }

    #[test]
    fn quantiles_of_a_window() {
        use std::time::Duration;
        let latency = Latency::default();
        let before = latency.snapshot();
        for _ in 0..98 {
            latency.record(Duration::from_micros(10));
        }
        latency.record(Duration::from_millis(5));
        latency.record(Duration::from_millis(5));
        let window = latency.snapshot().since(&before);
        assert_eq!(window.samples(), 100);
        let p50 = window.quantile(0.5).unwrap();
        let p99 = window.quantile(0.99).unwrap();
        assert!(
            p50 > Duration::from_micros(8) && p50 < Duration::from_micros(12),
            "{p50:?}"
        );
        assert!(
            p99 > Duration::from_millis(4) && p99 < Duration::from_millis(6),
            "{p99:?}"
        );
        assert_eq!(LatencySnapshot::default().quantile(0.5), None);
    }
}
