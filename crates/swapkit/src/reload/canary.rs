//! The canary's steps in the reload transaction: start, a new split, promote, abort. Each
//! publishes a new generation under the reload lock, like a reload, and none touches the
//! selection's history except promote, which is a reload of the selection with the canary's
//! code in place of the stable one's.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::gate::{self, GateState};
use super::{build, ReloadState, Reloader};
use crate::backend::{Code, Instance};
use crate::canary::{CanaryReport, CanaryStatus, GateStatus, Plan, VersionStatus};
use crate::error::LoadError;
use crate::generation::Generation;
use crate::key::{buckets_for, BUCKETS};
use crate::load::Source;
use crate::lock::lock;
use crate::probation::Window;
use crate::route::{Route, Split};
use crate::stats::LatencySnapshot;
use crate::status::CallCounts;
use crate::trigger::Trigger;
use crate::{plan, ReloadReport};

/// The canary that runs, in the reload state.
pub(crate) struct Active {
    pub instance: Arc<Instance>,
    pub split: Split,
    pub started: Instant,
    /// The stable instance's id, counts and latency when the canary started, for its status.
    baseline: (u64, CallCounts, LatencySnapshot),
    pub gate: Option<Arc<Mutex<GateState>>>,
}

/// What composing a generation found of the canary.
pub(crate) struct Composed {
    pub plugins: Vec<Arc<Instance>>,
    pub route: Option<Route>,
    /// The canary ended, and why: the selection no longer has its plugin, or has its code.
    pub ended: Option<String>,
}

/// One instance's totals, for a gate's windows and a status.
fn totals(instance: &Instance) -> Window {
    let counts = instance.stats.counts();
    Window {
        calls: counts.calls,
        failures: counts.failures(),
        latency: instance.stats.latency.snapshot(),
    }
}

impl Reloader {
    /// The plugins and route of a generation of `plugins` (a selection's instances), with the
    /// canary beside its stable version if one runs.
    pub(super) fn compose(&self, state: &ReloadState, mut plugins: Vec<Arc<Instance>>) -> Composed {
        let Some(active) = &state.canary else {
            return Composed {
                plugins,
                route: None,
                ended: None,
            };
        };
        let code = &active.instance.code;
        let ended = match plugins.iter().position(|p| p.code.name == code.name) {
            Some(i) if plugins[i].code.content_hash != code.content_hash => {
                plugins.push(active.instance.clone());
                let route = Route::new(i, plugins.len() - 1, active.split.clone());
                return Composed {
                    plugins,
                    route: Some(route),
                    ended: None,
                };
            }
            Some(_) => format!(
                "the selection now has {} {} as its stable version",
                code.name, code.version
            ),
            None => format!("the selection no longer has plugin `{}`", code.name),
        };
        Composed {
            plugins,
            route: None,
            ended: Some(ended),
        }
    }

    /// Ends the canary after a publish that left it out.
    pub(super) fn canary_ended(&self, state: &mut ReloadState, why: String) {
        if let Some(active) = state.canary.take() {
            tracing::warn!(plugin = %active.instance.code.name, version = %active.instance.code.version, "canary ended: {why}");
            state.last_canary = Some(format!("ended: {why}"));
        }
    }

    /// Starts the canary `plan` describes.
    pub(crate) fn start_canary(self: &Arc<Self>, plan: Plan) -> Result<CanaryReport, LoadError> {
        let result = self.try_start_canary(plan);
        self.settle(result)
    }

    fn try_start_canary(self: &Arc<Self>, plan: Plan) -> Result<CanaryReport, LoadError> {
        let start = Instant::now();
        let mut state = self.lock();
        if self.loader.is_static() {
            return Err(LoadError::StaticMode);
        }
        if let Some(active) = &state.canary {
            return Err(LoadError::CanaryRunning {
                plugin: active.instance.code.name.to_string(),
                version: active.instance.code.version.to_string(),
            });
        }
        let _span = tracing::info_span!("canary", artifact = %plan.artifact.display()).entered();
        let code = self
            .loader
            .load_source(&Source::Files(vec![plan.artifact.clone()]))?
            .pop()
            .ok_or(LoadError::NoSource)?;
        let refuse = |reason: String| LoadError::Canary {
            plugin: code.name.to_string(),
            version: code.version.to_string(),
            reason,
        };
        let current = self.published.current().load_full();
        let Some(stable_index) = current
            .plugins
            .iter()
            .position(|p| p.code.name == code.name)
        else {
            return Err(refuse(format!(
                "the current generation has no plugin `{}` to run it beside; load it first",
                code.name
            )));
        };
        let stable = current.plugins[stable_index].clone();
        if !stable.code.manifest.options.reloadable {
            return Err(LoadError::NotReloadable {
                plugin: stable.code.name.to_string(),
                version: stable.code.version.to_string(),
                change: format!("canary would run {} beside it", code.version),
            });
        }
        if !code.manifest.options.reloadable {
            // A canary ends by being removed or promoted, and every reload while it runs
            // carries it: one that may never be replaced would hold every reload back.
            return Err(refuse(
                "it declares itself not reloadable (`reloadable: false`), and a canary is \
                 replaced or removed when it ends, while every reload meanwhile carries it: \
                 it would hold every reload back; load it as a release instead"
                    .into(),
            ));
        }
        if stable.code.content_hash == code.content_hash {
            return Err(refuse("it is the stable version's own artifact".into()));
        }
        for decl in &stable.code.manifest.interfaces {
            if !code.manifest.interfaces.iter().any(|c| c.hash == decl.hash) {
                return Err(refuse(format!(
                    "it does not export `{}` as the stable version {} does (hash {:#x}); a \
                     canary serves every interface of the stable version, unchanged",
                    decl.name, stable.code.version, decl.hash
                )));
            }
        }
        self.check_interfaces(std::slice::from_ref(&code))?;
        if let Some(highest) = &self.highest {
            lock(highest).check(std::slice::from_ref(&code), false)?;
        }
        // Its dependencies must be in the generation, with no cycle through it.
        plan::order(promoted(&state.selection.codes, &code))?;

        let id = state.next_id;
        state.next_id += 1;
        let instance = build::canary(&code, &current, stable_index, id, &self.services)?;
        let number = state.canaries + 1;
        let split = Split {
            number,
            share: buckets_for(plan.percent),
            seed: Split::seed(&code.name, &code.version),
            without_key: plan.without_key,
            rules: plan.rules.into(),
        };
        let mut plugins = current.plugins.clone();
        plugins.push(instance.clone());
        let route = Route::new(stable_index, plugins.len() - 1, split.clone());
        let generation = self.published.generation(id, plugins, Some(route));
        let loaded = [(code.name.to_string(), code.version.to_string())];
        self.vet(&generation, &Trigger::CanaryStart, &loaded)?;
        drop(current);
        let old = self.published.publish(generation);
        state.canaries = number;
        let baseline = (
            stable.id,
            stable.stats.counts(),
            stable.stats.latency.snapshot(),
        );
        let gate = plan
            .gate
            .map(|policy| Arc::new(Mutex::new(GateState::new(policy, plan.percent))));
        state.canary = Some(Active {
            instance,
            split,
            started: start,
            baseline,
            gate: gate.clone(),
        });
        let report = CanaryReport {
            generation: id,
            plugin: code.name.to_string(),
            stable: stable.code.version.to_string(),
            canary: code.version.to_string(),
            percent: share_percent(buckets_for(plan.percent)),
            took: start.elapsed(),
        };
        tracing::info!(generation = id, plugin = %report.plugin, stable = %report.stable, canary = %report.canary, percent = report.percent, took = ?report.took, "canary started");
        drop(state);
        self.published.retire(old);
        if let Some(gate) = gate {
            if let Err(e) = gate::spawn(Arc::downgrade(self), number, gate) {
                tracing::error!(error = %e, "the canary's gate did not start; aborting the canary");
                let _ = self.abort_canary(Some(number), Some("its gate did not start"));
                return Err(e);
            }
        }
        Ok(report)
    }

    /// The running canary, if it is `number` (any, for `None`).
    fn active(state: &mut ReloadState, number: Option<u64>) -> Result<&mut Active, LoadError> {
        match state.canary.as_mut() {
            Some(active) if number.is_none_or(|n| n == active.split.number) => Ok(active),
            _ => Err(LoadError::NoCanary),
        }
    }

    /// Takes the running canary out of the state, if it is `number` (any, for `None`).
    fn take_active(state: &mut ReloadState, number: Option<u64>) -> Result<Active, LoadError> {
        Self::active(state, number)?;
        Ok(state.canary.take().expect("checked above"))
    }

    /// Sets the canary's share of keys, in percent; `number`, for a gate, names the canary it
    /// means. Returns the generation published.
    pub(crate) fn set_canary(&self, percent: f64, number: Option<u64>) -> Result<u64, LoadError> {
        let mut state = self.lock();
        let active = Self::active(&mut state, number)?;
        active.split.share = buckets_for(percent);
        if let Some(gate) = &active.gate {
            lock(gate).move_to(percent);
        }
        let (plugin, share) = (active.instance.code.name.clone(), active.split.share);
        let id = self.republish(&mut state);
        tracing::info!(generation = id, %plugin, percent = share_percent(share), "canary share set");
        Ok(id)
    }

    /// Ends the canary, dropping it: the stable version serves every call again, with its
    /// state as it was. Returns the generation published.
    pub(crate) fn abort_canary(
        &self,
        number: Option<u64>,
        reason: Option<&str>,
    ) -> Result<u64, LoadError> {
        let mut state = self.lock();
        let active = Self::take_active(&mut state, number)?;
        let id = self.republish(&mut state);
        let reason = reason.unwrap_or("asked for");
        tracing::warn!(generation = id, plugin = %active.instance.code.name, version = %active.instance.code.version, %reason, "canary aborted");
        state.last_canary = Some(format!(
            "{} {} aborted: {reason}",
            active.instance.code.name, active.instance.code.version
        ));
        Ok(id)
    }

    /// Makes the canary the only version of its plugin, with its own state: a reload of the
    /// selection with the canary's code in place of the stable one's, which the reload carries
    /// over with its instance. On any error the canary keeps running.
    pub(crate) fn promote_canary(&self, number: Option<u64>) -> Result<ReloadReport, LoadError> {
        let start = Instant::now();
        let mut state = self.lock();
        // Nothing to promote is not a failed reload: no observer hears of it.
        let active = Self::take_active(&mut state, number)?;
        let code = active.instance.code.clone();
        let codes = promoted(&state.selection.codes, &code);
        let report = self.install(&mut state, codes, &Trigger::CanaryPromote, start);
        match &report {
            Ok(r) => {
                tracing::info!(generation = r.generation, plugin = %code.name, version = %code.version, "canary promoted");
                state.last_canary = Some(format!("{} {} promoted", code.name, code.version));
            }
            Err(_) => state.canary = Some(active),
        }
        self.settle(report)
    }

    /// Publishes the current generation's plugins again, composed with the canary as it is
    /// now (or without it). Returns the new generation's number.
    fn republish(&self, state: &mut ReloadState) -> u64 {
        let current = self.published.current().load_full();
        let mut plugins = current.plugins.clone();
        if current.route().is_some() {
            plugins.pop(); // the canary is last
        }
        let composed = self.compose(state, plugins);
        let id = state.next_id;
        state.next_id += 1;
        let generation = self
            .published
            .generation(id, composed.plugins, composed.route);
        drop(current);
        let old = self.published.publish(generation);
        if let Some(why) = composed.ended {
            self.canary_ended(state, why);
        }
        self.published.retire(old);
        id
    }

    /// Runs the host's `before_publish` check on `generation`.
    pub(super) fn vet(
        &self,
        generation: &Arc<Generation>,
        trigger: &Trigger,
        loaded: &[(String, String)],
    ) -> Result<(), LoadError> {
        let Some(check) = &self.before_publish else {
            return Ok(());
        };
        let candidate = crate::candidate::Candidate::new(generation.clone(), trigger, loaded);
        let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&candidate)));
        drop(candidate);
        let reason = match verdict {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!(
                "the check panicked: {}",
                crate::error::panic_message(&*panic)
            ),
        };
        tracing::warn!(generation = generation.id, trigger = %trigger, %reason, "before_publish vetoed the generation");
        Err(LoadError::Vetoed {
            generation: generation.id,
            trigger: trigger.label(),
            reason,
        })
    }

    /// The totals of the stable version and of canary `number`, from the current generation:
    /// `None` once that canary no longer runs.
    pub(crate) fn canary_totals(&self, number: u64) -> Option<(Window, Window)> {
        let guard = self.published.current().enter();
        let generation = guard.get();
        let route = generation.route().filter(|r| r.split.number == number)?;
        Some((
            totals(&generation.plugins[route.stable]),
            totals(&generation.plugins[route.canary]),
        ))
    }

    /// The running canary's status.
    pub(crate) fn canary_status(&self) -> Option<CanaryStatus> {
        let state = self.lock();
        let active = state.canary.as_ref()?;
        let current = self.published.current().load_full();
        let route = current.route()?;
        let stable = &current.plugins[route.stable];
        let canary = &current.plugins[route.canary];
        let (counts_base, latency_base) = if stable.id == active.baseline.0 {
            (active.baseline.1, active.baseline.2.clone())
        } else {
            Default::default() // a reload replaced the stable instance meanwhile
        };
        let version =
            |instance: &Instance, counts_base: CallCounts, latency_base: &LatencySnapshot| {
                let latency = instance.stats.latency.snapshot().since(latency_base);
                VersionStatus {
                    version: instance.code.version.to_string(),
                    counts: minus(instance.stats.counts(), counts_base),
                    timed: latency.samples(),
                    p50: latency.quantile(0.5),
                    p99: latency.quantile(0.99),
                }
            };
        let gate = active.gate.as_ref().map(|g| {
            let g = lock(g);
            GateStatus {
                steps: g.policy.steps.clone(),
                step: g.step,
                failed_checks: (g.failed, g.policy.failed_checks),
                window_left: g.window_end.saturating_duration_since(Instant::now()),
                last_check: g.last.clone(),
            }
        });
        Some(CanaryStatus {
            plugin: active.instance.code.name.to_string(),
            percent: share_percent(active.split.share),
            without_key: active.split.without_key,
            rules: active.split.rules.len(),
            running_for: active.started.elapsed(),
            stable: version(stable, counts_base, &latency_base),
            canary: version(canary, CallCounts::default(), &LatencySnapshot::default()),
            gate,
        })
    }

    /// How the last canary ended, if one did.
    pub(crate) fn last_canary(&self) -> Option<String> {
        self.lock().last_canary.clone()
    }
}

/// `selection` with `canary` in place of its plugin's stable version.
fn promoted(selection: &[Arc<Code>], canary: &Arc<Code>) -> Vec<Arc<Code>> {
    selection
        .iter()
        .map(|c| if c.name == canary.name { canary } else { c })
        .cloned()
        .collect()
}

fn share_percent(share: u32) -> f64 {
    share as f64 * 100.0 / BUCKETS as f64
}

/// `now - base`, field by field.
fn minus(now: CallCounts, base: CallCounts) -> CallCounts {
    CallCounts {
        calls: now.calls.saturating_sub(base.calls),
        errors: now.errors.saturating_sub(base.errors),
        panics: now.panics.saturating_sub(base.panics),
        traps: now.traps.saturating_sub(base.traps),
    }
}
