//! A canary's analysis gate: a thread that compares the canary with the stable version over
//! windows (see [`Probation`]) and moves it through its steps, promotes it or aborts it.
//!
//! The gate holds the swapper only weakly, and acts only on the canary it was started for:
//! an operator's promote or abort, or a newer canary, ends it.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::Reloader;
use crate::error::LoadError;
use crate::lock::lock;
use crate::probation::Check;
use crate::Probation;

/// Where a gate is, shared with status reports.
#[derive(Debug, Clone)]
pub(crate) struct GateState {
    pub policy: Probation,
    pub step: Option<usize>,
    /// The share the gate last set (or the canary started at), in percent.
    pub percent: f64,
    pub failed: u32,
    pub window_end: Instant,
    pub last: Option<String>,
}

impl GateState {
    pub fn new(policy: Probation, percent: f64) -> GateState {
        let mut state = GateState {
            step: None,
            percent,
            window_end: Instant::now() + policy.window,
            policy,
            failed: 0,
            last: None,
        };
        state.move_to(percent);
        state
    }

    /// Records that the canary serves `percent` now (the gate's step, or an operator's):
    /// the next step is the first above it.
    pub fn move_to(&mut self, percent: f64) {
        self.percent = percent;
        self.step = self.policy.steps.iter().position(|&s| s == percent);
    }
}

/// Starts the gate of canary `number`.
pub(crate) fn spawn(
    core: Weak<Reloader>,
    number: u64,
    state: Arc<Mutex<GateState>>,
) -> Result<(), LoadError> {
    std::thread::Builder::new()
        .name("swapkit-canary-gate".into())
        .spawn(move || run(core, number, state))
        .map(drop)
        .map_err(|source| LoadError::Thread {
            what: "canary gate",
            source,
        })
}

/// How often the gate looks: often enough to abort a failing canary within a tenth of a
/// window, never more than every 2 ms.
fn tick(window: Duration) -> Duration {
    (window / 10).clamp(Duration::from_millis(2), Duration::from_millis(200))
}

fn run(core: Weak<Reloader>, number: u64, state: Arc<Mutex<GateState>>) {
    let policy = lock(&state).policy.clone();
    let Some(mut base) = core.upgrade().and_then(|c| c.canary_totals(number)) else {
        return;
    };
    loop {
        std::thread::sleep(tick(policy.window));
        let Some(core) = core.upgrade() else { return };
        let Some(now) = core.canary_totals(number) else {
            return; // promoted, aborted or replaced
        };
        let (stable, canary) = (now.0.since(&base.0), now.1.since(&base.1));
        let check = policy.compare(&stable, &canary);
        let mut st = lock(&state);
        match check {
            Check::Fail(reason) => {
                st.failed += 1;
                tracing::warn!(canary = number, failed = st.failed, of = policy.failed_checks, %reason, "canary check failed");
                st.last = Some(format!("failed: {reason}"));
                st.window_end = Instant::now() + policy.window;
                base = now;
                if st.failed >= policy.failed_checks {
                    drop(st);
                    let reason = format!(
                        "{} failed checks of the gate, the last: {reason}",
                        policy.failed_checks
                    );
                    match core.abort_canary(Some(number), Some(&reason)) {
                        Ok(_) | Err(LoadError::NoCanary) => {}
                        Err(e) => {
                            tracing::error!(canary = number, error = %e, "the gate could not abort the canary")
                        }
                    }
                    return;
                }
            }
            Check::Wait if Instant::now() >= st.window_end => {
                st.last = Some(format!(
                    "waiting: {} calls into the canary this window, {} needed",
                    canary.calls, policy.min_calls
                ));
            }
            Check::Pass if Instant::now() >= st.window_end => {
                st.last = Some(format!(
                    "passed: {} canary calls, {} failed; {} stable calls, {} failed",
                    canary.calls, canary.failures, stable.calls, stable.failures
                ));
                // The next step is the first above where the canary is: steps only go up.
                let current = st.percent;
                let next = policy.steps.iter().position(|&p| p > current);
                st.window_end = Instant::now() + policy.window;
                base = now;
                if let Some(next) = next {
                    let percent = policy.steps[next];
                    st.move_to(percent);
                    drop(st);
                    tracing::info!(
                        canary = number,
                        percent,
                        "canary passed its window; next step"
                    );
                    match core.set_canary(percent, Some(number)) {
                        Ok(_) => {}
                        // An operator promoted or aborted it meanwhile: nothing left to judge.
                        Err(LoadError::NoCanary) => return,
                        Err(e) => {
                            tracing::error!(canary = number, error = %e, "the gate could not move the canary on");
                            return;
                        }
                    }
                } else if !policy.steps.is_empty() {
                    drop(st);
                    tracing::info!(canary = number, "canary passed its last step; promoting");
                    match core.promote_canary(Some(number)) {
                        Ok(_) | Err(LoadError::NoCanary) => return,
                        // A veto by `before_publish` keeps the canary; try again next window.
                        Err(e) => {
                            tracing::error!(canary = number, error = %e, "the gate could not promote the canary")
                        }
                    }
                }
            }
            Check::Wait | Check::Pass => {}
        }
    }
}
