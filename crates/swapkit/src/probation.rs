//! Judging new code on its calls: a swap's probation (its failure rate, then auto-rollback;
//! see `ops`), and a canary's analysis gate (its failure rate and latency against the stable
//! version's over the same window; see `canary::gate`).

use std::time::Duration;

use crate::stats::LatencySnapshot;

/// How new code is judged on its calls: a swap's probation, or a canary's analysis gate.
///
/// **A swap's probation** ([`SwapperBuilder::auto_rollback`](crate::SwapperBuilder)): for
/// `window` after a reload publishes, the calls into the plugins it loaded are counted. If at
/// least `min_calls` were made and more than `max_failure_rate` of them failed (an error
/// status, a panic, a trap or a timeout), the swapper rolls back to the previous selection and
/// logs why. A generation that passes probation becomes the known-good one.
///
/// ```
/// use std::time::Duration;
/// let policy = swapkit::Probation::new(Duration::from_secs(60))
///     .max_failure_rate(0.02)
///     .min_calls(100);
/// # #[cfg(feature = "ops")]
/// let swapper = swapkit::Swapper::builder().auto_rollback(policy).build().unwrap();
/// ```
///
/// **A canary's gate** ([`CanaryBuilder::gate`](crate::CanaryBuilder::gate)): the
/// canary is compared with the stable version over windows of `window`. A check fails when,
/// with at least `min_calls` calls into the canary in the window, its failure rate is more
/// than [`failure_margin`](Self::failure_margin) above the stable version's, or its p50 or
/// p99 latency is more than [`latency_ratio`](Self::latency_ratio) times the stable
/// version's plus [`latency_slack`](Self::latency_slack). After
/// [`failed_checks`](Self::failed_checks) failed checks the canary is aborted. A window that
/// ends with no failed check moves the canary to the next of [`steps`](Self::steps), and
/// past the last one promotes it.
///
/// ```
/// use std::time::Duration;
/// let gate = swapkit::Probation::new(Duration::from_secs(30))
///     .min_calls(500)
///     .failure_margin(0.005)
///     .latency_ratio(1.2)
///     .failed_checks(2)
///     .steps([1.0, 10.0, 50.0]); // then promote
/// # drop(gate);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Probation {
    pub(crate) window: Duration,
    pub(crate) max_failure_rate: f64,
    pub(crate) min_calls: u64,
    pub(crate) failure_margin: f64,
    pub(crate) latency_ratio: f64,
    pub(crate) latency_slack: Duration,
    pub(crate) failed_checks: u32,
    pub(crate) steps: Vec<f64>,
}

/// Latency is compared only with this many timed calls on each side in the window, and p99
/// only with [`P99_SAMPLES`]: fewer is noise.
pub(crate) const P50_SAMPLES: u64 = 20;
/// See [`P50_SAMPLES`].
pub(crate) const P99_SAMPLES: u64 = 100;

impl Probation {
    /// A probation of `window`, at most 5% failures, judged after 20 calls. As a canary gate:
    /// a failure margin of 1 point, a latency ratio of 1.5 with 250 µs of slack, 2 failed
    /// checks to abort, and no steps.
    pub fn new(window: Duration) -> Probation {
        Probation {
            window,
            max_failure_rate: 0.05,
            min_calls: 20,
            failure_margin: 0.01,
            latency_ratio: 1.5,
            latency_slack: Duration::from_micros(250),
            failed_checks: 2,
            steps: vec![],
        }
    }

    /// The share of failed calls, from 0 to 1, above which the swap is rolled back.
    pub fn max_failure_rate(mut self, rate: f64) -> Probation {
        self.max_failure_rate = rate.clamp(0.0, 1.0);
        self
    }

    /// How many calls must be made before the rate is judged (into a canary: in each window).
    pub fn min_calls(mut self, calls: u64) -> Probation {
        self.min_calls = calls.max(1);
        self
    }

    /// Canary gate: by how much, from 0 to 1, the canary's failure rate may exceed the stable
    /// version's in the same window.
    pub fn failure_margin(mut self, margin: f64) -> Probation {
        self.failure_margin = margin.clamp(0.0, 1.0);
        self
    }

    /// Canary gate: how many times the stable version's p50 and p99 latency the canary's may
    /// reach (at least 1).
    pub fn latency_ratio(mut self, ratio: f64) -> Probation {
        self.latency_ratio = if ratio.is_nan() { 1.0 } else { ratio.max(1.0) };
        self
    }

    /// Canary gate: latency the canary may add beyond the ratio, so that calls of a few
    /// microseconds are not judged on scheduling noise.
    pub fn latency_slack(mut self, slack: Duration) -> Probation {
        self.latency_slack = slack;
        self
    }

    /// Canary gate: how many failed checks abort the canary (at least 1).
    pub fn failed_checks(mut self, checks: u32) -> Probation {
        self.failed_checks = checks.max(1);
        self
    }

    /// Canary gate: the percentages the canary moves through, one window each, before it is
    /// promoted. Without steps the gate only guards: it aborts a failing canary, and an
    /// operator promotes.
    pub fn steps(mut self, percents: impl IntoIterator<Item = f64>) -> Probation {
        self.steps = percents
            .into_iter()
            .filter(|p| !p.is_nan())
            .map(|p| p.clamp(0.0, 100.0))
            .collect();
        self
    }

    /// The window: a swap's probation, or each step of a canary.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Compares one window of the canary's calls with the stable version's.
    pub(crate) fn compare(&self, stable: &Window, canary: &Window) -> Check {
        if canary.calls < self.min_calls {
            return Check::Wait;
        }
        let (c, s) = (canary.failure_rate(), stable.failure_rate());
        if c > s + self.failure_margin {
            return Check::Fail(format!(
                "the canary failed {:.2}% of {} calls, the stable version {:.2}% of {}: more \
                 than {:.2} points above",
                c * 100.0,
                canary.calls,
                s * 100.0,
                stable.calls,
                self.failure_margin * 100.0
            ));
        }
        for (q, name, needed) in [(0.5, "p50", P50_SAMPLES), (0.99, "p99", P99_SAMPLES)] {
            if canary.latency.samples() < needed || stable.latency.samples() < needed {
                continue;
            }
            let (Some(c), Some(s)) = (canary.latency.quantile(q), stable.latency.quantile(q))
            else {
                continue;
            };
            let limit = s.mul_f64(self.latency_ratio) + self.latency_slack;
            if c > limit {
                return Check::Fail(format!(
                    "the canary's {name} latency is {c:?}, the stable version's {s:?}: over \
                     {:.2}x plus {:?}",
                    self.latency_ratio, self.latency_slack
                ));
            }
        }
        Check::Pass
    }
}

/// One version's calls over a window.
#[derive(Debug, Clone, Default)]
pub(crate) struct Window {
    pub calls: u64,
    pub failures: u64,
    pub latency: LatencySnapshot,
}

impl Window {
    /// The calls made between `earlier` and this one.
    pub fn since(&self, earlier: &Window) -> Window {
        Window {
            calls: self.calls.saturating_sub(earlier.calls),
            failures: self.failures.saturating_sub(earlier.failures),
            latency: self.latency.since(&earlier.latency),
        }
    }

    fn failure_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.failures as f64 / self.calls as f64
        }
    }
}

/// What one comparison found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Check {
    /// Too few calls into the canary yet.
    Wait,
    Pass,
    /// Why it failed.
    Fail(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Latency;

    fn window(calls: u64, failures: u64, latency_us: &[(u64, u64)]) -> Window {
        let l = Latency::default();
        for &(us, n) in latency_us {
            for _ in 0..n {
                l.record(Duration::from_micros(us));
            }
        }
        Window {
            calls,
            failures,
            latency: l.snapshot(),
        }
    }

    #[test]
    fn too_few_calls_wait() {
        let gate = Probation::new(Duration::from_secs(1)).min_calls(100);
        let (s, c) = (window(1000, 0, &[]), window(99, 99, &[]));
        assert_eq!(gate.compare(&s, &c), Check::Wait);
    }

    #[test]
    fn failures_are_judged_against_the_stable_version() {
        let gate = Probation::new(Duration::from_secs(1)).failure_margin(0.01);
        // Both fail 10% (a dependency is down): the canary is no worse.
        let (s, c) = (window(1000, 100, &[]), window(100, 10, &[]));
        assert_eq!(gate.compare(&s, &c), Check::Pass);
        let c = window(100, 12, &[]);
        assert!(matches!(gate.compare(&s, &c), Check::Fail(m) if m.contains("12.00% of 100")));
    }

    #[test]
    fn latency_is_judged_on_enough_samples_with_slack() {
        let gate = Probation::new(Duration::from_secs(1))
            .latency_ratio(1.5)
            .latency_slack(Duration::from_micros(10));
        let s = window(1000, 0, &[(100, 200)]);
        // 140 us < 1.5 x 100 + 10.
        assert_eq!(
            gate.compare(&s, &window(200, 0, &[(140, 200)])),
            Check::Pass
        );
        let slow = window(200, 0, &[(400, 200)]);
        assert!(matches!(gate.compare(&s, &slow), Check::Fail(m) if m.contains("p50")));
        // A slow tail alone fails p99, given enough samples; with too few it is not judged.
        let tail = window(200, 0, &[(100, 190), (5000, 10)]);
        assert!(matches!(gate.compare(&s, &tail), Check::Fail(m) if m.contains("p99")));
        let few = window(200, 0, &[(5000, 19)]);
        assert_eq!(gate.compare(&s, &few), Check::Pass);
    }

    #[test]
    fn settings_are_clamped() {
        let p = Probation::new(Duration::from_secs(1))
            .latency_ratio(0.5)
            .failed_checks(0)
            .steps([f64::NAN, 5.0, 250.0]);
        assert_eq!((p.latency_ratio, p.failed_checks), (1.0, 1));
        assert_eq!(p.steps, vec![5.0, 100.0]);
    }
}
