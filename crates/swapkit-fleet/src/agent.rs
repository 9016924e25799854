//! The agent: a thread in each host that follows the service's rollout in etcd. It fetches
//! and checks the release its host should run, loads it (whole, or as a canary for a share
//! of traffic), and reports what the host serves under a lease, so that a dead host's report
//! goes away on its own.
//!
//! It never stops the host from serving: while etcd cannot be reached it keeps what runs and
//! tries again; a release it cannot load leaves the current generation serving and is
//! reported for the controller to abort.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use swapkit::{Extension, LoadError, Swapper};
use tokio::sync::Notify;

use crate::fetch::Fetcher;
use crate::model::{now_ms, CanaryCounts, Desire, Release, Report, Serving};
use crate::signed::{Highest, Refusal, RolloutRecord};
use crate::store::{etcd, Store};
use crate::{FleetConfig, FleetError};

/// The agent as an [`Extension`] of a swapper.
pub(crate) struct Agent {
    pub config: FleetConfig,
}

impl Extension for Agent {
    fn start(self: Box<Self>, swapper: Swapper) -> Result<Box<dyn Send>, LoadError> {
        let config = self.config;
        let fetcher = fetcher(&config, &swapper);
        let started = fetcher.and_then(|fetcher| {
            let highest = Highest::load(&fetcher.cache).map_err(std::io::Error::other)?;
            let stop = Arc::new(Stop::default());
            let thread = {
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name("swapkit-fleet".into())
                    .spawn(move || run(config, fetcher, highest, swapper, &stop))?
            };
            Ok(Running {
                stop,
                thread: Some(thread),
            })
        });
        match started {
            Ok(running) => Ok(Box::new(running)),
            Err(e) => Err(LoadError::Ops {
                what: "fleet agent",
                at: "its thread and artifact cache".into(),
                source: e.into(),
            }),
        }
    }
}

/// The host's fetcher: its private cache (made and checked now) and local root.
fn fetcher(config: &FleetConfig, swapper: &Swapper) -> std::io::Result<Fetcher> {
    let cache = match (&config.cache_dir, swapper.state_dir()) {
        (Some(dir), _) => dir.clone(),
        (None, Some(state)) => state.join("fleet-cache"),
        (None, None) => swapkit::user_cache_dir()
            .ok_or_else(|| {
                std::io::Error::other(
                    "no state directory, no FleetConfig::cache_dir and no $HOME: nowhere \
                     private to keep fetched artifacts",
                )
            })?
            .join("fleet")
            .join(format!("{}-{}", config.service, config.host)),
    };
    swapkit::ensure_private_dir(&cache)?;
    let local_root = match &config.local_root {
        Some(root) => Some(std::fs::canonicalize(root).map_err(|e| {
            std::io::Error::other(format!("the local artifacts root {}: {e}", root.display()))
        })?),
        None => None,
    };
    Ok(Fetcher {
        cache,
        local_root,
        deadlines: config.deadlines,
    })
}

#[derive(Default)]
struct Stop {
    set: AtomicBool,
    notify: Notify,
}

/// The running agent; stops it when dropped.
struct Running {
    stop: Arc<Stop>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.set.store(true, Ordering::SeqCst);
        self.stop.notify.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the agent knows between sessions with etcd.
#[derive(Default)]
struct State {
    /// The rollout and step it last followed.
    rollout: Option<u64>,
    step: Option<usize>,
    /// The release and traffic share it runs as asked.
    applied: Option<(String, f64)>,
    /// What it could not run, and why; not tried again until the rollout asks for
    /// something else.
    failed: Option<((String, f64), String)>,
    converged: bool,
    /// The number of the rollout record it follows.
    seq: Option<u64>,
    /// The last rollout record it refused (its digest), and why: reported until a record it
    /// follows replaces it.
    refused: Option<(String, String)>,
}

fn run(config: FleetConfig, fetcher: Fetcher, mut highest: Highest, swapper: Swapper, stop: &Stop) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "the fleet agent cannot start its runtime");
            return;
        }
    };
    runtime.block_on(async {
        let mut state = State::default();
        let mut backoff = Duration::from_millis(100);
        while !stop.set.load(Ordering::SeqCst) {
            let agent = Host {
                config: &config,
                fetcher: &fetcher,
                swapper: &swapper,
            };
            match session(&agent, &mut highest, stop, &mut state).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "fleet agent: etcd session ended; this host keeps serving what it runs and tries again");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.notify.notified() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    });
}

/// One connection to etcd: follow the rollout and report until stopped (`Ok`) or etcd fails.
async fn session(
    host: &Host<'_>,
    highest: &mut Highest,
    stop: &Stop,
    state: &mut State,
) -> Result<(), FleetError> {
    let Host {
        config, swapper, ..
    } = *host;
    let mut store = Store::connect(&config.access, &config.service).await?;
    let lease = store.lease(config.lease_ttl_s).await?;
    let (mut keeper, mut renewals) = store.keeper(lease).await?;
    // The host loads its own selection first (its known-good, or its plugin directory);
    // following the fleet starts from there.
    while swapper.generation() == 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = stop.notify.notified() => return Ok(()),
        }
    }
    let mut watch = store.watch(0).await?;
    let mut tick = tokio::time::interval(config.report_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let record = store.rollout().await?.map(|(r, _)| r);
        converge(&mut store, host, highest, state, record).await?;
        store.report(&report(config, swapper, state), lease).await?;
        tokio::select! {
            _ = stop.notify.notified() => {
                // Gone at once, rather than when the lease runs out.
                let _ = store.revoke(lease).await;
                return Ok(());
            }
            event = watch.message() => {
                event
                    .map_err(|e| etcd("watch the rollout", e))?
                    .ok_or_else(|| FleetError::Conflict("etcd closed the watch".into()))?;
            }
            _ = tick.tick() => {
                keeper.keep_alive().await.map_err(|e| etcd("renew the lease", e))?;
                match renewals.message().await {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    Ok(_) => return Err(FleetError::Conflict("the host's lease expired".into())),
                    Err(e) => return Err(etcd("renew the lease", e)),
                }
            }
        }
    }
}

/// What the agent works with in its host.
struct Host<'a> {
    config: &'a FleetConfig,
    fetcher: &'a Fetcher,
    swapper: &'a Swapper,
}

/// The rollout record the host may follow: with an operator key, only one it signed for this
/// service, numbered no lower than the last followed (which is recorded before the host acts
/// on it). `Ok(None)`: the record was refused (kept in `state` and reported).
fn admit(
    host: &Host<'_>,
    highest: &mut Highest,
    state: &mut State,
    record: RolloutRecord,
) -> Option<(RolloutRecord, bool)> {
    let Some(key) = &host.config.operator else {
        return Some((record, false));
    };
    let admitted = record
        .verify(key, &host.config.service)
        .and_then(|()| highest.admits(&record))
        .map_err(|refusal| refusal.to_string())
        .and_then(|()| {
            highest.advance(&record).map_err(|e| {
                format!("cannot record the rollout's number, so it is not followed: {e}")
            })
        });
    match admitted {
        Ok(()) => Some((record, true)),
        Err(why) => {
            refuse(state, record.digest(), why);
            None
        }
    }
}

/// Keeps a refusal for the report, logging it once per record.
fn refuse(state: &mut State, digest: String, why: String) {
    if state.refused.as_ref().is_none_or(|(d, _)| *d != digest) {
        tracing::error!(refusal = %why, "fleet agent: refused the rollout record in etcd; this host keeps what it runs");
    }
    state.refused = Some((digest, why));
}

/// Makes the host run what the rollout `record` asks of it. Errors of etcd end the session;
/// a release the host cannot run is kept in `state` and reported, and so is a record it
/// refuses.
async fn converge(
    store: &mut Store,
    host: &Host<'_>,
    highest: &mut Highest,
    state: &mut State,
    record: Option<RolloutRecord>,
) -> Result<(), FleetError> {
    let Host {
        config,
        fetcher,
        swapper,
    } = *host;
    let Some(record) = record else {
        // No rollout: nothing to do.
        *state = State {
            applied: state.applied.take(),
            converged: true,
            ..State::default()
        };
        return Ok(());
    };
    let Some((record, signed)) = admit(host, highest, state, record) else {
        // Refused: the host keeps what it runs and follows what it followed.
        return Ok(());
    };
    state.refused = None;
    let digest = record.digest();
    let instruction = record.instruction;
    let rollout = &instruction.rollout;
    state.rollout = Some(rollout.id);
    state.step = Some(rollout.step);
    state.seq = Some(instruction.seq);
    let Desire::Run { release, traffic } = rollout.desire_for(&config.host) else {
        state.converged = true;
        return Ok(());
    };
    let key = (release.clone(), traffic);
    if state.applied.as_ref() == Some(&key) {
        state.converged = true;
        return Ok(());
    }
    state.converged = false;
    if state.failed.as_ref().is_some_and(|(k, _)| *k == key) {
        return Ok(());
    }
    let outcome = match store.release_and_digest(&release).await? {
        Some((_, found)) if signed && instruction.releases.get(&release) != Some(&found) => {
            let refusal = Refusal::ReleaseChanged {
                release: release.clone(),
            };
            refuse(state, digest, refusal.to_string());
            return Ok(());
        }
        // Signed by the operator: the rollout may take the host down to an older release.
        Some((release, _)) => apply(swapper, fetcher, &release, traffic, signed),
        None => Err(FleetError::BadRelease(format!(
            "release `{release}` is not published"
        ))),
    };
    match outcome {
        Ok(()) => {
            tracing::info!(release = %key.0, traffic = key.1, "fleet agent: running the release as asked");
            state.applied = Some(key);
            state.failed = None;
            state.converged = true;
        }
        Err(e) => {
            tracing::error!(release = %key.0, error = %e, "fleet agent: cannot run the release; the current generation keeps serving");
            state.failed = Some((key, e.to_string()));
        }
    }
    Ok(())
}

/// Loads `release` in the host: all of it, or (below 100% of traffic) the one plugin it
/// changes as a canary. Only a rollout the operator signed (`may_downgrade`) may take a
/// plugin below the highest version the host ran; otherwise the host's rollback protection
/// (under a trust policy) refuses it.
fn apply(
    swapper: &Swapper,
    fetcher: &Fetcher,
    release: &Release,
    traffic: f64,
    may_downgrade: bool,
) -> Result<(), FleetError> {
    let files = fetcher.fetch_release(release)?;
    let canary = swapper.canary_status();
    let is_release_canary = |plugin: &str, version: &str| {
        release
            .artifacts
            .iter()
            .any(|a| a.plugin == plugin && a.version == version)
    };
    if traffic >= 100.0 {
        if let Some(c) = &canary {
            if is_release_canary(&c.plugin, &c.canary.version) {
                swapper.promote_canary()?;
            } else {
                swapper.abort_canary()?;
            }
        }
        let mut running: Vec<String> = serving_hashes(swapper);
        let mut wanted: Vec<String> = release.artifacts.iter().map(|a| a.sha256.clone()).collect();
        running.sort();
        wanted.sort();
        if running != wanted {
            if may_downgrade {
                swapper.downgrade(&files)?;
            } else {
                swapper.load_files(&files)?;
            }
        }
        return Ok(());
    }
    let running = serving_hashes(swapper);
    let changed: Vec<usize> = (0..release.artifacts.len())
        .filter(|&i| !running.contains(&release.artifacts[i].sha256))
        .collect();
    let [i] = changed[..] else {
        return Err(FleetError::BadRelease(format!(
            "a step below 100% of traffic runs the release as a canary, which replaces one \
             plugin; release `{}` differs from this host's selection in {}",
            release.id,
            changed.len()
        )));
    };
    let artifact = &release.artifacts[i];
    match &canary {
        Some(c) if c.plugin == artifact.plugin && c.canary.version == artifact.version => {
            swapper.set_canary_percent(traffic)?;
        }
        other => {
            if other.is_some() {
                swapper.abort_canary()?;
            }
            swapper
                .canary(&files[i])
                .percent(traffic)
                .manual()
                .start()?;
        }
    }
    Ok(())
}

fn serving_hashes(swapper: &Swapper) -> Vec<String> {
    swapper
        .status()
        .current
        .plugins
        .into_iter()
        .map(|p| p.content_hash)
        .collect()
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn report(config: &FleetConfig, swapper: &Swapper, state: &State) -> Report {
    let status = swapper.status();
    let failures = |c: swapkit::CallCounts| c.errors + c.panics + c.traps;
    Report {
        host: config.host.clone(),
        labels: config.labels.clone(),
        rollout: state.rollout,
        step: state.step,
        release: state.applied.as_ref().map(|(r, _)| r.clone()),
        traffic: state.applied.as_ref().map_or(0.0, |(_, t)| *t),
        converged: state.converged,
        error: state.failed.as_ref().map(|(_, e)| e.clone()),
        seq: state.seq,
        refused: state.refused.as_ref().map(|(_, why)| why.clone()),
        generation: status.current.id,
        plugins: status
            .current
            .plugins
            .iter()
            .map(|p| Serving {
                plugin: p.name.clone(),
                version: p.version.clone(),
                sha256: p.content_hash.clone(),
                calls: p.counts.calls,
                failures: failures(p.counts),
            })
            .collect(),
        canary: swapper.canary_status().map(|c| CanaryCounts {
            p50_us: c.canary.p50.map(micros),
            p99_us: c.canary.p99.map(micros),
            stable_p50_us: c.stable.p50.map(micros),
            stable_p99_us: c.stable.p99.map(micros),
            plugin: c.plugin,
            version: c.canary.version,
            percent: c.percent,
            calls: c.canary.counts.calls,
            failures: failures(c.canary.counts),
            stable_version: c.stable.version,
            stable_calls: c.stable.counts.calls,
            stable_failures: failures(c.stable.counts),
        }),
        at_ms: now_ms(),
    }
}
