//! The controller: publishes releases, starts a rollout, and moves it through its steps,
//! advancing only when every host of a step runs the release and the gate passes on their
//! reports; a failed gate, a host that cannot run the release, or the progress deadline
//! aborts it, and every host returns to the stable release.
//!
//! It holds no state that matters: everything is in etcd, and every change it makes is a
//! transaction on the rollout's revision, so two controllers can drive one rollout and only
//! one of them moves each step.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use swapkit::trust::SecretKey;

use crate::access::EtcdAccess;
use crate::model::{now_ms, Hosts, Phase, Plan, Release, Report, Rollout, Step};
use crate::signed::{next_seq, Instruction, RolloutRecord};
use crate::store::Store;
use crate::FleetError;

/// What [`Controller::drive`] tells as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// The step in force, the hosts in it and how many of them run the release.
    Step {
        step: usize,
        of: usize,
        ready: usize,
        hosts: usize,
    },
    /// Every host of the step runs the release; it is held for the analysis window.
    Holding { step: usize, for_ms: u64 },
    /// The window is over, but the release has not served enough calls to be judged.
    Gathering {
        step: usize,
        calls: u64,
        needed: u64,
    },
    /// The rollout moved to this step.
    Advanced { step: usize },
    /// etcd cannot be reached: nothing moves until it is back.
    Waiting { reason: String },
    /// It ended.
    Finished {
        phase: Phase,
        reason: Option<String>,
    },
}

/// A controller of one service's rollouts.
pub struct Controller {
    access: EtcdAccess,
    seal: Seal,
    store: Option<Store>,
    runtime: tokio::runtime::Runtime,
    /// How often `drive` looks at the reports.
    pub poll: Duration,
}

impl Controller {
    /// A controller for `service` on the etcd cluster at `endpoints`; connects on first use.
    pub fn new(endpoints: &[String], service: &str) -> Result<Controller, FleetError> {
        Controller::with_access(EtcdAccess::new(endpoints.iter().cloned()), service)
    }

    /// A controller for `service` reaching etcd through `access` (a user, TLS).
    pub fn with_access(access: EtcdAccess, service: &str) -> Result<Controller, FleetError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| FleetError::Io {
                path: "(runtime)".into(),
                source: e,
            })?;
        Ok(Controller {
            access,
            seal: Seal {
                service: service.to_owned(),
                key: None,
            },
            store: None,
            runtime,
            poll: Duration::from_millis(10),
        })
    }

    /// Signs every rollout it writes with the operator's `key`, and follows (pauses, drives,
    /// aborts) only rollouts that key signed. Hosts given its public half
    /// ([`FleetConfig::operator_key`](crate::FleetConfig::operator_key)) follow nothing else,
    /// and move down to an older release only on such a rollout.
    pub fn operator_key(mut self, key: SecretKey) -> Controller {
        self.seal.key = Some(key);
        self
    }

    /// Runs `f` on the store, connecting first if needed; an etcd error drops the connection
    /// so that the next call makes a new one.
    fn with<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Store, &Seal) -> Result<T, FleetError>,
    ) -> Result<T, FleetError> {
        let Controller {
            access,
            seal,
            store,
            runtime,
            ..
        } = self;
        runtime.block_on(async {
            if store.is_none() {
                *store = Some(Store::connect(access, &seal.service).await?);
            }
            let result = f(store.as_mut().expect("connected above"), seal).await;
            if matches!(result, Err(FleetError::Etcd { .. })) {
                *store = None;
            }
            result
        })
    }

    /// Publishes a release (once per id).
    pub fn publish(&mut self, release: &Release) -> Result<(), FleetError> {
        self.with(async |s, _| s.publish(release).await)
    }

    /// Every published release.
    pub fn releases(&mut self) -> Result<Vec<Release>, FleetError> {
        self.with(async |s, _| s.releases().await)
    }

    /// The rollout, if any, and every live host's report, sorted by host. The rollout is
    /// what etcd holds, whoever wrote it: [`record`](Self::record) tells who signed it.
    pub fn status(&mut self) -> Result<(Option<Rollout>, Vec<Report>), FleetError> {
        self.with(async |s, _| {
            let rollout = s.rollout().await?.map(|(r, _)| r.instruction.rollout);
            let mut reports = s.reports().await?;
            reports.sort_by(|a, b| a.host.cmp(&b.host));
            Ok((rollout, reports))
        })
    }

    /// The rollout record in etcd, if any: what it says, its number and who signed it. It
    /// is not checked here; [`RolloutRecord::verify`](crate::RolloutRecord::verify) does.
    pub fn record(&mut self) -> Result<Option<crate::RolloutRecord>, FleetError> {
        self.with(async |s, _| Ok(s.rollout().await?.map(|(r, _)| r)))
    }

    /// Starts rolling `release` out with `plan`. The stable release hosts return to on an
    /// abort is `stable`, or the release the last rollout left every host on. Refused while
    /// another rollout is running or paused.
    pub fn start(
        &mut self,
        release: &str,
        plan: Plan,
        stable: Option<String>,
    ) -> Result<Rollout, FleetError> {
        if plan.steps.is_empty() {
            return Err(FleetError::BadRelease(
                "a rollout needs at least one step".into(),
            ));
        }
        self.with(async |s, seal| {
            if s.release(release).await?.is_none() {
                return Err(FleetError::BadRelease(format!(
                    "release `{release}` is not published; publish it first"
                )));
            }
            let (current, revision) = seal.read_over_forgery(s).await?;
            if let Some(Current { rollout: r, .. }) =
                current.as_ref().filter(|c| c.rollout.is_active())
            {
                return Err(FleetError::Conflict(format!(
                    "rollout {} of release `{}` is {:?} at step {}; abort it or let it finish",
                    r.id,
                    r.release,
                    r.phase,
                    r.step + 1
                )));
            }
            let stable = stable.or_else(|| {
                current
                    .as_ref()
                    .and_then(|Current { rollout: r, .. }| match r.phase {
                        Phase::Done => Some(r.release.clone()),
                        _ => r.stable.clone(),
                    })
            });
            let reports = s.reports().await?;
            let live = live_hosts(&reports);
            // Above the last rollout's id, and above any a host still reports (the record
            // before may have been deleted or forged): a report never counts for the wrong one.
            let last = reports
                .iter()
                .filter_map(|p| p.rollout)
                .chain(current.as_ref().map(|c| c.rollout.id))
                .max()
                .unwrap_or(0);
            let rollout = Rollout {
                id: last.checked_add(1).ok_or_else(|| {
                    FleetError::Conflict("rollout ids are at their largest".into())
                })?,
                release: release.to_owned(),
                stable,
                targets: targets(&plan.steps[0], None, &live),
                plan,
                step: 0,
                phase: Phase::Running,
                reason: None,
                step_started_ms: now_ms(),
            };
            // Numbered above what the hosts followed too, in case the record before was
            // deleted or forged and this controller's clock is behind the one that wrote it
            // (a number more than a day ahead of the clock is not believed: a host could lie).
            let horizon = now_ms().saturating_add(24 * 3600 * 1000);
            let followed = reports
                .iter()
                .filter_map(|p| p.seq)
                .filter(|&seq| seq <= horizon)
                .chain(current.as_ref().map(|c| c.seq))
                .max();
            if !seal
                .write_after(s, revision, current.as_ref(), followed, &rollout)
                .await?
            {
                return Err(FleetError::Conflict(
                    "another controller changed the rollout at the same moment; look at \
                     `swapkit fleet status` and try again"
                        .into(),
                ));
            }
            Ok(rollout)
        })
    }

    /// Moves the running rollout through its steps until it is done, aborted or paused, and
    /// returns it as it ended. While etcd cannot be reached it waits (nothing moves: hosts
    /// keep what they run) and goes on when it is back, giving the step its deadline anew.
    pub fn drive(&mut self, mut progress: impl FnMut(&Progress)) -> Result<Rollout, FleetError> {
        let mut held_since: Option<(u64, usize, Instant)> = None;
        let mut releases = HashMap::new();
        let mut outage: Option<Instant> = None;
        let mut last: Option<Progress> = None;
        let mut tell = |p: Progress| {
            if last.as_ref() != Some(&p) {
                progress(&p);
                last = Some(p);
            }
        };
        loop {
            let poll = self.poll;
            let step =
                self.with(async |s, seal| step_once(s, seal, &mut held_since, &mut releases).await);
            match step {
                Ok(Some(Next::Finished(r))) => {
                    tell(Progress::Finished {
                        phase: r.phase,
                        reason: r.reason.clone(),
                    });
                    return Ok(r);
                }
                Ok(Some(Next::Progress(p))) => {
                    if let Some(since) = outage.take() {
                        // Back after an outage: the deadline restarts.
                        let _ = self.with(async |s, seal| restart_deadline(s, seal).await);
                        tracing::info!(after = ?since.elapsed(), "etcd is back; the rollout goes on");
                    }
                    tell(p);
                }
                Ok(None) => {}
                Err(FleetError::Etcd { doing, source, .. }) => {
                    outage.get_or_insert_with(Instant::now);
                    held_since = None;
                    tell(Progress::Waiting {
                        reason: format!("cannot {doing}: {source}"),
                    });
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                Err(e) => return Err(e),
            }
            std::thread::sleep(poll);
        }
    }

    /// Holds the running rollout at its step.
    pub fn pause(&mut self) -> Result<Rollout, FleetError> {
        self.change(|r| match r.phase {
            Phase::Running => {
                r.phase = Phase::Paused;
                Ok(())
            }
            other => Err(format!("it is {other:?}, not running")),
        })
    }

    /// Lets a paused rollout go on (then [`drive`](Self::drive) it); its step's deadline
    /// starts anew.
    pub fn resume(&mut self) -> Result<Rollout, FleetError> {
        self.change(|r| match r.phase {
            Phase::Paused => {
                r.phase = Phase::Running;
                r.step_started_ms = now_ms();
                Ok(())
            }
            other => Err(format!("it is {other:?}, not paused")),
        })
    }

    /// Stops the rollout: every host returns to the stable release.
    pub fn abort(&mut self, reason: &str) -> Result<Rollout, FleetError> {
        self.change(|r| {
            if !r.is_active() {
                return Err(format!("it is {:?} already", r.phase));
            }
            r.phase = Phase::Aborted;
            r.reason = Some(reason.to_owned());
            Ok(())
        })
    }

    /// Undoes the last rollout, done or not: every host returns to the stable release.
    pub fn rollback(&mut self) -> Result<Rollout, FleetError> {
        self.change(|r| {
            if r.stable.is_none() {
                return Err(
                    "it was the first release: there is no stable one to go back to".into(),
                );
            }
            if matches!(r.phase, Phase::Aborted | Phase::RolledBack) {
                return Err(format!("it is {:?} already", r.phase));
            }
            r.phase = Phase::RolledBack;
            r.reason = Some("rolled back by an operator".into());
            Ok(())
        })
    }

    /// Applies `f` to the rollout in one transaction, again if another writer got first.
    fn change(
        &mut self,
        mut f: impl FnMut(&mut Rollout) -> Result<(), String>,
    ) -> Result<Rollout, FleetError> {
        self.with(async |s, seal| loop {
            let current = seal
                .read(s)
                .await?
                .ok_or_else(|| FleetError::Conflict("there is no rollout".into()))?;
            let mut rollout = current.rollout.clone();
            f(&mut rollout).map_err(|why| {
                FleetError::Conflict(format!(
                    "rollout {} of `{}`: {why}",
                    rollout.id, rollout.release
                ))
            })?;
            if seal.write(s, current.rev, Some(&current), &rollout).await? {
                return Ok(rollout);
            }
        })
    }
}

enum Next {
    Progress(Progress),
    Finished(Rollout),
}

/// One look at the rollout and the reports: abort, advance, or wait.
async fn step_once(
    s: &mut Store,
    seal: &Seal,
    held_since: &mut Option<(u64, usize, Instant)>,
    releases: &mut HashMap<String, Release>,
) -> Result<Option<Next>, FleetError> {
    let Some(current) = seal.read(s).await? else {
        return Err(FleetError::Conflict("there is no rollout".into()));
    };
    let (r, rev) = (current.rollout.clone(), current.rev);
    let finish = async |s: &mut Store, next: Rollout| {
        if seal.write(s, rev, Some(&current), &next).await? {
            Ok(Some(Next::Finished(next)))
        } else {
            // Another controller changed it first: look again.
            Ok(None)
        }
    };
    if r.phase != Phase::Running {
        return Ok(Some(Next::Finished(r)));
    }
    let release = published(s, releases, &r.release)
        .await?
        .ok_or_else(|| FleetError::BadRelease(format!("release `{}` vanished", r.release)))?;
    let stable = match &r.stable {
        Some(id) => published(s, releases, id).await?,
        None => None,
    };
    let reports = s.reports().await?;
    let in_step = |host: &str| {
        r.targets
            .as_ref()
            .is_none_or(|t| t.iter().any(|h| h == host))
    };
    let expected: Vec<&str> = match &r.targets {
        Some(t) => t.iter().map(String::as_str).collect(),
        None => reports.iter().map(|p| p.host.as_str()).collect(),
    };
    // A host is ready once it follows this very record (not only this rollout and step) and
    // runs what it asks.
    let ready = |host: &str| {
        reports.iter().any(|p| {
            p.host == host
                && p.rollout == Some(r.id)
                && p.step == Some(r.step)
                && p.seq == Some(current.seq)
                && p.converged
        })
    };

    let abort = |why: String| {
        let mut r = r.clone();
        r.phase = Phase::Aborted;
        r.reason = Some(why);
        r
    };
    // A host of the step that cannot run the release.
    if let Some(bad) = reports
        .iter()
        .find(|p| in_step(&p.host) && p.rollout == Some(r.id) && p.error.is_some())
    {
        let why = format!(
            "host `{}` cannot run release `{}`: {}",
            bad.host,
            r.release,
            bad.error.as_deref().unwrap_or_default()
        );
        return finish(s, abort(why)).await;
    }
    // The gate, judged on every look, so that a bad release goes as soon as it shows.
    if let Some(why) = gate(&r, &release, stable.as_ref(), &reports, &in_step) {
        return finish(s, abort(why)).await;
    }
    let step = &r.plan.steps[r.step];
    let done = expected.iter().filter(|h| ready(h)).count();
    if done < expected.len() || expected.is_empty() {
        *held_since = None;
        if now_ms().saturating_sub(r.step_started_ms) > r.plan.deadline_ms {
            let why = format!(
                "progress deadline: {done} of {} hosts of step {} ran release `{}` within {} ms",
                expected.len(),
                r.step + 1,
                r.release,
                r.plan.deadline_ms
            );
            return finish(s, abort(why)).await;
        }
        return Ok(Some(Next::Progress(Progress::Step {
            step: r.step,
            of: r.plan.steps.len(),
            ready: done,
            hosts: expected.len(),
        })));
    }
    let since = match held_since {
        Some((id, step, at)) if *id == r.id && *step == r.step => *at,
        _ => {
            let now = Instant::now();
            *held_since = Some((r.id, r.step, now));
            now
        }
    };
    if since.elapsed() < Duration::from_millis(step.hold_ms) {
        return Ok(Some(Next::Progress(Progress::Holding {
            step: r.step,
            for_ms: step.hold_ms,
        })));
    }
    // A watched step passes only on enough evidence: the release must have served
    // `min_calls` in its hosts. (A step with no window passes once its hosts run it.)
    if step.hold_ms > 0 {
        let calls: u64 = reports
            .iter()
            .filter(|p| in_step(&p.host) && p.rollout == Some(r.id))
            .map(|p| p.counts_of(&release).0)
            .sum();
        if calls < r.plan.min_calls {
            if now_ms().saturating_sub(r.step_started_ms) > r.plan.deadline_ms {
                let why = format!(
                    "progress deadline: release `{}` served {calls} calls in step {}, fewer than the {} calls the gate needs to judge it, within {} ms",
                    r.release,
                    r.step + 1,
                    r.plan.min_calls,
                    r.plan.deadline_ms
                );
                return finish(s, abort(why)).await;
            }
            return Ok(Some(Next::Progress(Progress::Gathering {
                step: r.step,
                calls,
                needed: r.plan.min_calls,
            })));
        }
    }
    // Advance.
    let mut next = r.clone();
    if r.step + 1 == r.plan.steps.len() {
        next.phase = Phase::Done;
        next.targets = None;
        return finish(s, next).await;
    }
    next.step += 1;
    next.targets = targets(
        &r.plan.steps[next.step],
        r.targets.as_ref(),
        &live_hosts(&reports),
    );
    next.step_started_ms = now_ms();
    *held_since = None;
    if seal.write(s, rev, Some(&current), &next).await? {
        Ok(Some(Next::Progress(Progress::Advanced { step: next.step })))
    } else {
        // Another controller moved it: look again.
        Ok(None)
    }
}

/// A published release, read from etcd once: a release never changes after `publish`.
async fn published(
    s: &mut Store,
    cache: &mut HashMap<String, Release>,
    id: &str,
) -> Result<Option<Release>, FleetError> {
    if let Some(release) = cache.get(id) {
        return Ok(Some(release.clone()));
    }
    let release = s.release(id).await?;
    if let Some(release) = &release {
        cache.insert(id.to_owned(), release.clone());
    }
    Ok(release)
}

async fn restart_deadline(s: &mut Store, seal: &Seal) -> Result<(), FleetError> {
    if let Some(current) = seal.read(s).await? {
        if current.rollout.phase == Phase::Running {
            let mut rollout = current.rollout.clone();
            rollout.step_started_ms = now_ms();
            seal.write(s, current.rev, Some(&current), &rollout).await?;
        }
    }
    Ok(())
}

/// The service a controller writes for, and the operator key it signs with.
struct Seal {
    service: String,
    key: Option<SecretKey>,
}

/// The rollout in force, as a controller read it.
struct Current {
    rollout: Rollout,
    seq: u64,
    rev: i64,
    /// The digests of the release records it was signed with.
    releases: BTreeMap<String, String>,
}

impl Seal {
    /// The rollout in etcd. With an operator key, one that key did not sign for this
    /// service is refused: a controller never builds on a forged rollout.
    async fn read(&self, s: &mut Store) -> Result<Option<Current>, FleetError> {
        let Some((record, rev)) = s.rollout().await? else {
            return Ok(None);
        };
        if let Some(key) = &self.key {
            record
                .verify(&key.public(), &self.service)
                .map_err(|refusal| FleetError::Refused { refusal })?;
        }
        Ok(Some(Current {
            seq: record.instruction.seq,
            rollout: record.instruction.rollout,
            releases: record.instruction.releases,
            rev,
        }))
    }

    /// The rollout in etcd and its revision, as [`read`](Self::read) does, except that a
    /// forged one is passed over (logged, and its revision kept so that writing over it is
    /// still checked): starting a rollout is how an operator puts a forged one right.
    async fn read_over_forgery(&self, s: &mut Store) -> Result<(Option<Current>, i64), FleetError> {
        match self.read(s).await {
            Ok(current) => {
                let rev = current.as_ref().map_or(0, |c| c.rev);
                Ok((current, rev))
            }
            Err(FleetError::Refused { refusal }) => {
                tracing::warn!(%refusal, "the rollout in etcd is not the operator's; the new rollout replaces it");
                let rev = s.rollout().await?.map_or(0, |(_, rev)| rev);
                Ok((None, rev))
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `rollout` if the rollout's revision is still `rev` (0: there is none),
    /// numbered above `previous`'s, bound to the records of the releases it names, and
    /// signed. A release `previous` was signed with keeps that record: if etcd holds another
    /// now, nothing is written. False if another writer got there first.
    async fn write(
        &self,
        s: &mut Store,
        rev: i64,
        previous: Option<&Current>,
        rollout: &Rollout,
    ) -> Result<bool, FleetError> {
        self.write_after(s, rev, previous, previous.map(|p| p.seq), rollout)
            .await
    }

    /// [`write`](Self::write), numbered above `after` rather than above `previous`.
    async fn write_after(
        &self,
        s: &mut Store,
        rev: i64,
        previous: Option<&Current>,
        after: Option<u64>,
        rollout: &Rollout,
    ) -> Result<bool, FleetError> {
        let mut releases = BTreeMap::new();
        for id in std::iter::once(&rollout.release).chain(rollout.stable.as_ref()) {
            let (_, digest) = s.release_and_digest(id).await?.ok_or_else(|| {
                FleetError::BadRelease(format!("release `{id}` is not published"))
            })?;
            if let Some((signed, seq)) = previous.and_then(|p| Some((p.releases.get(id)?, p.seq))) {
                if *signed != digest {
                    return Err(FleetError::BadRelease(format!(
                        "release `{id}` in etcd is not the record rollout record {seq} was \
                         signed with: it was rewritten since; nothing was written (publish \
                         the release again under a new id)"
                    )));
                }
            }
            releases.insert(id.clone(), digest);
        }
        let instruction = Instruction {
            service: self.service.clone(),
            seq: next_seq(after)?,
            rollout: rollout.clone(),
            releases,
        };
        let record = RolloutRecord::seal(instruction, self.key.as_ref())?;
        s.swap_rollout(rev, &record).await
    }
}

/// Why the release fails its gate on these reports, if it does: its failure rate in the
/// hosts of the step against the stable release's everywhere it runs.
fn gate(
    r: &Rollout,
    release: &Release,
    stable: Option<&Release>,
    reports: &[Report],
    in_step: &dyn Fn(&str) -> bool,
) -> Option<String> {
    let (mut calls, mut failures) = (0u64, 0u64);
    let (mut stable_calls, mut stable_failures) = (0u64, 0u64);
    for p in reports {
        if in_step(&p.host) && p.rollout == Some(r.id) {
            let (c, f) = p.counts_of(release);
            calls += c;
            failures += f;
            if let Some(canary) = &p.canary {
                stable_calls += canary.stable_calls;
                stable_failures += canary.stable_failures;
            }
        } else if let Some(stable) = stable {
            let (c, f) = p.counts_of(stable);
            stable_calls += c;
            stable_failures += f;
        }
    }
    if failures == 0 {
        return None;
    }
    let rate = failures as f64 / calls.max(1) as f64;
    let stable_rate = stable_failures as f64 / stable_calls.max(1) as f64;
    let judged = calls >= r.plan.min_calls || stable_failures == 0;
    (judged && rate > stable_rate + r.plan.failure_margin).then(|| {
        format!(
            "gate: release `{}` failed {failures} of {calls} calls ({:.1}%) in step {}, the \
             stable release {stable_failures} of {stable_calls} ({:.1}%)",
            r.release,
            100.0 * rate,
            r.step + 1,
            100.0 * stable_rate
        )
    })
}

/// The hosts that report, sorted.
fn live_hosts(reports: &[Report]) -> Vec<String> {
    let mut hosts: Vec<String> = reports.iter().map(|r| r.host.clone()).collect();
    hosts.sort();
    hosts
}

/// The hosts of a step: those of the last step, then more in order up to its share.
fn targets(step: &Step, previous: Option<&Vec<String>>, live: &[String]) -> Option<Vec<String>> {
    let want = match step.hosts {
        Hosts::All => return None,
        Hosts::Count(n) => n,
        Hosts::Percent(p) => ((p / 100.0) * live.len() as f64).ceil() as usize,
    };
    let mut chosen: Vec<String> = previous.cloned().unwrap_or_default();
    for host in live {
        if chosen.len() >= want {
            break;
        }
        if !chosen.contains(host) {
            chosen.push(host.clone());
        }
    }
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("h{i}")).collect()
    }

    fn release(id: &str, sha: &str, version: &str) -> Release {
        Release {
            id: id.into(),
            artifacts: vec![crate::Artifact {
                plugin: "p".into(),
                version: version.into(),
                sha256: sha.into(),
                file: "p.so".into(),
                url: "/p.so".into(),
                signature: None,
            }],
        }
    }

    fn report(host: &str, rollout: Option<u64>, sha: &str, calls: u64, failures: u64) -> Report {
        Report {
            host: host.into(),
            labels: Default::default(),
            rollout,
            step: Some(0),
            release: None,
            traffic: 100.0,
            converged: true,
            error: None,
            seq: None,
            refused: None,
            generation: 1,
            plugins: vec![crate::Serving {
                plugin: "p".into(),
                version: "?".into(),
                sha256: sha.into(),
                calls,
                failures,
            }],
            canary: None,
            at_ms: 0,
        }
    }

    #[test]
    fn the_gate_weighs_the_release_against_the_stable_one() {
        let (new, old) = (release("v2", "n", "2"), release("v1", "o", "1"));
        let r = Rollout {
            id: 7,
            release: "v2".into(),
            stable: Some("v1".into()),
            plan: Plan {
                steps: Plan::parse_steps("1,all", 0).unwrap(),
                deadline_ms: 1000,
                failure_margin: 0.01,
                min_calls: 100,
            },
            step: 0,
            targets: Some(vec!["a".into()]),
            phase: Phase::Running,
            reason: None,
            step_started_ms: 0,
        };
        let in_step = |h: &str| h == "a";
        let judge = |canary: Report, stable: Report| {
            gate(&r, &new, Some(&old), &[canary, stable], &in_step)
        };
        // No failure: nothing to say.
        assert_eq!(
            judge(
                report("a", Some(7), "n", 500, 0),
                report("b", None, "o", 500, 9)
            ),
            None
        );
        // One failure where the stable release has none: caught at once.
        let why = judge(
            report("a", Some(7), "n", 3, 1),
            report("b", None, "o", 500, 0),
        )
        .unwrap();
        assert!(why.contains("failed 1 of 3 calls"), "{why}");
        // Where the stable release fails too, few calls are not judged...
        assert_eq!(
            judge(
                report("a", Some(7), "n", 10, 1),
                report("b", None, "o", 1000, 10)
            ),
            None
        );
        // ...enough are, within the margin (2% against 1% + 1 point passes, 3% does not).
        assert_eq!(
            judge(
                report("a", Some(7), "n", 200, 4),
                report("b", None, "o", 1000, 10)
            ),
            None
        );
        assert!(judge(
            report("a", Some(7), "n", 200, 6),
            report("b", None, "o", 1000, 10)
        )
        .is_some());
        // A host's report of an earlier rollout is not this release's evidence.
        assert_eq!(
            judge(
                report("a", Some(6), "n", 5, 5),
                report("b", None, "o", 500, 0)
            ),
            None
        );
    }

    #[test]
    fn steps_take_hosts_in_order_and_keep_them() {
        let step = |hosts| Step {
            hosts,
            traffic: 100.0,
            hold_ms: 0,
        };
        let live = hosts(5);
        let one = targets(&step(Hosts::Count(1)), None, &live).unwrap();
        assert_eq!(one, ["h1"]);
        let half = targets(&step(Hosts::Percent(50.0)), Some(&one), &live).unwrap();
        assert_eq!(half, ["h1", "h2", "h3"]);
        // A host of an earlier step stays even if it no longer reports.
        let gone = targets(&step(Hosts::Count(2)), Some(&vec!["h9".into()]), &live).unwrap();
        assert_eq!(gone, ["h9", "h1"]);
        assert_eq!(targets(&step(Hosts::All), Some(&half), &live), None);
    }
}
