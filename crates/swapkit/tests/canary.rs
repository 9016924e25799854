//! Canaries: two versions of one plugin serving side by side, routed by the request key, on
//! real plugins through the native and wasm backends, called from real threads.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{start, Backend, Fixture, Logs};
use fixture_api::{Counter, Greeter};
use swapkit::canary::Variant;
use swapkit::patch::with_key;
use swapkit::{CallError, LoadError, Probation, Swapper};

fn versions_by_key(swapper: &Swapper, keys: u64) -> Vec<String> {
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    (0..keys)
        .map(|k| with_key(format!("user-{k}"), || greeter.version().unwrap()))
        .collect()
}

/// A thread calling `greet` under rotating keys until the returned flag is set; `check`
/// sees each result.
fn traffic(
    swapper: &Arc<Swapper>,
    check: impl Fn(Result<String, CallError>) + Send + 'static,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let (swapper, stop) = (swapper.clone(), Arc::new(AtomicBool::new(false)));
    let stopped = stop.clone();
    let worker = std::thread::spawn(move || {
        let greeter = swapper.client::<dyn Greeter>().unwrap();
        let mut n = 0u64;
        while !stopped.load(Ordering::Relaxed) {
            n += 1;
            check(with_key(format!("user-{}", n % 1000), || {
                greeter.greet("x")
            }));
        }
    });
    (stop, worker)
}

/// Polls `done` until it holds, or fails the test after a minute.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn shares_are_sticky_as_the_percentage_grows(backend: Backend) {
    let swapper = start(backend, &Logs::default(), &[Fixture::GreeterV1]).unwrap();
    let report = swapper
        .canary(Fixture::GreeterV2.artifact(backend))
        .percent(10.0)
        .start()
        .unwrap();
    assert_eq!(
        (
            report.plugin.as_str(),
            report.stable.as_str(),
            report.canary.as_str()
        ),
        ("greeter", "1.0.0", "2.0.0")
    );
    let at10 = versions_by_key(&swapper, 2000);
    let on = at10.iter().filter(|v| *v == "2.0.0").count();
    assert!((120..300).contains(&on), "about 10% of 2000 keys: {on}");
    // Calls without a key go to the stable version by default.
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    assert_eq!(greeter.version().unwrap(), "1.0.0");

    swapper.set_canary_percent(50.0).unwrap();
    let at50 = versions_by_key(&swapper, 2000);
    for (k, (before, after)) in at10.iter().zip(&at50).enumerate() {
        assert!(
            before == "1.0.0" || after == "2.0.0",
            "user-{k} left the canary at 50%"
        );
    }
    let on = at50.iter().filter(|v| *v == "2.0.0").count();
    assert!((850..1150).contains(&on), "about 50% of 2000 keys: {on}");
    // Back to 10%: the same keys as before.
    swapper.set_canary_percent(10.0).unwrap();
    assert_eq!(versions_by_key(&swapper, 2000), at10);

    let status = swapper.canary_status().unwrap();
    assert_eq!(
        (
            status.stable.version.as_str(),
            status.canary.version.as_str()
        ),
        ("1.0.0", "2.0.0")
    );
    assert_eq!(status.percent, 10.0);
    assert!(status.canary.counts.calls >= 1000, "{status:?}");
    assert!(
        status.stable.timed > 0 && status.canary.timed > 0,
        "{status:?}"
    );
    assert!(status.canary.p50.is_some() && status.canary.p99 >= status.canary.p50);
}

fn rules_and_the_default_pick_a_version(backend: Backend) {
    let swapper = start(backend, &Logs::default(), &[Fixture::GreeterV1]).unwrap();
    swapper
        .canary(Fixture::GreeterV2.artifact(backend))
        .percent(100.0)
        .route(|k| k.as_str().starts_with("eu-"), Variant::Stable)
        .route(|k| k.as_str() == "tester", Variant::Canary)
        .without_key(Variant::Canary)
        .start()
        .unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    let version = |key: &str| with_key(key, || greeter.version().unwrap());
    assert_eq!(
        version("eu-anna"),
        "1.0.0",
        "rules come before the percentage"
    );
    assert_eq!(version("tester"), "2.0.0");
    assert_eq!(version("us-bob"), "2.0.0", "100% of the other keys");
    assert_eq!(greeter.version().unwrap(), "2.0.0", "no key: the default");
}

fn pinned_work_never_mixes_versions(backend: Backend) {
    let swapper = Arc::new(start(backend, &Logs::default(), &[Fixture::GreeterV1]).unwrap());
    swapper
        .canary(Fixture::GreeterV2.artifact(backend))
        .percent(50.0)
        .start()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mixed = Arc::new(AtomicU64::new(0));
    let units = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..2)
        .map(|t| {
            let (swapper, stop, mixed, units) =
                (swapper.clone(), stop.clone(), mixed.clone(), units.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let pin = swapper.pin();
                    let greeter = pin.client::<dyn Greeter>();
                    // The first call chooses by its key; later calls under other keys keep it.
                    let first = with_key(format!("t{t}-{n}"), || greeter.version().unwrap());
                    for other in 0..8 {
                        let again = with_key(format!("x{other}"), || greeter.version().unwrap());
                        if again != first {
                            mixed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let chose = pin.variant();
                    let expected = if first == "2.0.0" {
                        Variant::Canary
                    } else {
                        Variant::Stable
                    };
                    if chose.is_some() && chose != Some(expected) {
                        mixed.fetch_add(1, Ordering::Relaxed);
                    }
                    units.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Every step under the pinned work: percentages, an abort, a new canary, a promote.
    for step in 0..6 {
        std::thread::sleep(Duration::from_millis(20));
        match step {
            0 => drop(swapper.set_canary_percent(100.0).unwrap()),
            1 => drop(swapper.set_canary_percent(0.0).unwrap()),
            2 => drop(swapper.abort_canary().unwrap()),
            3 => drop(
                swapper
                    .canary(Fixture::GreeterV2.artifact(backend))
                    .percent(50.0)
                    .start()
                    .unwrap(),
            ),
            4 => drop(swapper.set_canary_percent(75.0).unwrap()),
            _ => drop(swapper.promote_canary().unwrap()),
        }
    }
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    workers.into_iter().for_each(|w| w.join().unwrap());
    assert!(units.load(Ordering::Relaxed) > 0);
    assert_eq!(
        mixed.load(Ordering::Relaxed),
        0,
        "a pinned unit of work saw two versions"
    );
}

/// Callers under load, each on its own key, through every step: no call fails, and after
/// an abort or a promote every new call lands on the one version left.
fn abort_and_promote_under_load_fail_no_call(backend: Backend) {
    let swapper = Arc::new(start(backend, &Logs::default(), &[Fixture::GreeterV1]).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(Mutex::new(vec![]));
    let calls = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..2)
        .map(|t| {
            let (swapper, stop, failed, calls) =
                (swapper.clone(), stop.clone(), failed.clone(), calls.clone());
            std::thread::spawn(move || {
                let greeter = swapper.client::<dyn Greeter>().unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("u{t}-{}", n % 500);
                    if let Err(e) = with_key(key, || greeter.greet("load")) {
                        failed.lock().unwrap().push(e.to_string());
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let canary = || {
        swapper
            .canary(Fixture::GreeterV2.artifact(backend))
            .percent(10.0)
            .start()
            .unwrap()
    };
    let pause = || std::thread::sleep(Duration::from_millis(15));
    canary();
    pause();
    swapper.set_canary_percent(50.0).unwrap();
    pause();
    swapper.abort_canary().unwrap();
    assert!(versions_by_key(&swapper, 300).iter().all(|v| v == "1.0.0"));
    pause();
    canary();
    pause();
    swapper.set_canary_percent(90.0).unwrap();
    pause();
    let report = swapper.promote_canary().unwrap();
    assert!(
        report.loaded.is_empty(),
        "the canary's instance is carried over: {report:?}"
    );
    assert!(versions_by_key(&swapper, 300).iter().all(|v| v == "2.0.0"));
    pause();
    stop.store(true, Ordering::Relaxed);
    workers.into_iter().for_each(|w| w.join().unwrap());
    assert!(calls.load(Ordering::Relaxed) > 100);
    assert_eq!(*failed.lock().unwrap(), Vec::<String>::new());
    assert!(swapper.canary_status().is_none());
    assert!(swapper.last_canary().unwrap().contains("promoted"));
    // The selection before the promote is kept: a rollback returns to the stable version.
    swapper.rollback().unwrap();
    assert_eq!(
        swapper.client::<dyn Greeter>().unwrap().version().unwrap(),
        "1.0.0"
    );
    swapper.wait_drained(Duration::from_secs(30)).unwrap();
}

/// Live data goes to the canary at its start; an abort leaves the stable version's state as
/// it was, a promote keeps the canary's. Both versions share the Vault.
fn state_after_abort_and_after_promote(backend: Backend) {
    let logs = Logs::default();
    let swapper = start(backend, &logs, &[Fixture::StateV1]).unwrap();
    let counter = swapper.client::<dyn Counter>().unwrap();
    counter.remember("before").unwrap();
    let on_canary = |f: &dyn Fn()| with_key("canary-user", f);
    let canary = || {
        swapper
            .canary(Fixture::StateV2.artifact(backend))
            .route(|k| k.as_str() == "canary-user", Variant::Canary)
            .start()
            .unwrap()
    };
    canary();
    on_canary(&|| {
        assert_eq!(
            counter.describe().unwrap(),
            ("2.0.0".into(), 1),
            "migrated from schema 1"
        );
        assert_eq!(counter.notes().unwrap(), ["before"], "handed over at start");
        counter.remember("canary-only").unwrap();
        counter.bump("state/shared").unwrap();
    });
    counter.remember("stable-during").unwrap();
    assert_eq!(
        counter.bump("state/shared").unwrap(),
        2,
        "both versions share the Vault"
    );

    swapper.abort_canary().unwrap();
    on_canary(&|| {
        assert_eq!(counter.describe().unwrap().0, "1.0.0");
        assert_eq!(
            counter.notes().unwrap(),
            ["before", "stable-during"],
            "the stable state, untouched"
        );
    });

    canary();
    on_canary(&|| counter.remember("after-restart").unwrap());
    counter.remember("stable-only").unwrap();
    swapper.promote_canary().unwrap();
    assert_eq!(counter.describe().unwrap(), ("2.0.0".into(), 1));
    assert_eq!(
        counter.notes().unwrap(),
        ["before", "stable-during", "after-restart"],
        "the canary's state wins"
    );
    assert_eq!(counter.read("state/shared").unwrap(), Some(2));
}

/// Calls from plugin to plugin choose the same version as the host's call did: `front`
/// (stable, no canary) calls `logic`, which has one.
fn dependency_calls_follow_the_key(backend: Backend) {
    let (store, v1, v2, front) = (
        Fixture::TrineStore,
        Fixture::TrineLogicV1,
        Fixture::TrineLogicV2,
        Fixture::TrineFront,
    );
    let swapper = start(backend, &Logs::default(), &[front, v1, store]).unwrap();
    swapper
        .canary(v2.artifact(backend))
        .route(|k| k.as_str() == "beta", Variant::Canary)
        .start()
        .unwrap();
    let client = swapper.client::<dyn trine_api::Front>().unwrap();
    assert!(with_key("beta", || client.quote("tea").unwrap()).ends_with("(logic v2)"));
    assert!(with_key("other", || client.quote("tea").unwrap()).ends_with("(logic v1)"));
    // A pin chooses once, for the calls its plugins make too.
    let pin = swapper.pin();
    let pinned = pin.client::<dyn trine_api::Front>();
    assert!(with_key("beta", || pinned.quote("tea").unwrap()).ends_with("(logic v2)"));
    assert!(with_key("other", || pinned.quote("tea").unwrap()).ends_with("(logic v2)"));
    assert_eq!(pin.variant(), Some(Variant::Canary));
}

/// A reload while a canary runs keeps it beside the new stable version; a reload whose
/// selection has the canary's code makes it the stable version and ends the canary.
fn reloads_carry_the_canary(backend: Backend) {
    let dir = common::tempdir();
    let ext = |f: Fixture| f.artifact(backend).extension().unwrap().to_owned();
    let path = dir
        .path()
        .join("greeter")
        .with_extension(ext(Fixture::GreeterV1));
    std::fs::copy(Fixture::GreeterV1.artifact(backend), &path).unwrap();
    let swapper = common::Logs::default()
        .builder()
        .interface::<dyn Greeter>()
        .build()
        .unwrap();
    swapper.load_dir(dir.path()).unwrap();
    swapper
        .canary(Fixture::GreeterV2.artifact(backend))
        .percent(100.0)
        .start()
        .unwrap();
    swapper.reload().unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    assert_eq!(with_key("k", || greeter.version().unwrap()), "2.0.0");
    assert!(
        swapper.canary_status().is_some(),
        "an unchanged reload keeps the canary"
    );
    std::fs::copy(Fixture::GreeterV2.artifact(backend), &path).unwrap();
    swapper.reload().unwrap();
    assert!(swapper.canary_status().is_none());
    assert!(swapper.last_canary().unwrap().contains("stable version"));
    assert_eq!(greeter.version().unwrap(), "2.0.0");
}

/// A faulty canary at 5% is caught by its gate and aborted; no call outside its share fails.
fn the_gate_aborts_a_faulty_canary(backend: Backend) {
    let swapper = Arc::new(start(backend, &Logs::default(), &[Fixture::GreeterV1]).unwrap());
    let stable_failures = Arc::new(AtomicU64::new(0));
    let counted = stable_failures.clone();
    let (stop, worker) = traffic(&swapper, move |result| match result {
        Err(CallError::Panic { site, .. }) if &*site.version == "2.1.0" => {}
        Err(_) => drop(counted.fetch_add(1, Ordering::Relaxed)),
        Ok(_) => {}
    });
    let gate = Probation::new(Duration::from_millis(200))
        .min_calls(10)
        .failed_checks(2)
        .steps([5.0, 50.0]);
    swapper
        .canary(Fixture::GreeterFaulty.artifact(backend))
        .percent(5.0)
        .gate(gate)
        .start()
        .unwrap();
    eventually("the gate to abort", || swapper.canary_status().is_none());
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    let last = swapper.last_canary().unwrap();
    assert!(
        last.contains("aborted") && last.contains("failed"),
        "{last}"
    );
    assert_eq!(stable_failures.load(Ordering::Relaxed), 0);
    assert!(versions_by_key(&swapper, 200).iter().all(|v| v == "1.0.0"));
}

/// A good canary moves through its steps and is promoted by its gate.
fn the_gate_steps_and_promotes_a_good_canary(backend: Backend) {
    let swapper = Arc::new(start(backend, &Logs::default(), &[Fixture::GreeterV1]).unwrap());
    let (stop, worker) = traffic(&swapper, |result| drop(result.unwrap()));
    let gate = Probation::new(Duration::from_millis(100))
        .min_calls(5)
        // Scheduling noise on a shared machine must not fail a good canary here.
        .latency_slack(Duration::from_secs(1))
        .steps([10.0, 50.0]);
    // Starting between steps: the next step is the first above, never one below.
    swapper
        .canary(Fixture::GreeterV2.artifact(backend))
        .percent(20.0)
        .gate(gate)
        .start()
        .unwrap();
    let mut steps_seen = vec![];
    eventually("the gate to promote", || {
        if let Some(s) = swapper.canary_status() {
            if steps_seen.last() != Some(&s.percent) {
                steps_seen.push(s.percent);
            }
        }
        swapper.last_canary().is_some()
    });
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    assert!(
        swapper.last_canary().unwrap().contains("promoted"),
        "{:?}",
        swapper.last_canary()
    );
    assert!(steps_seen.windows(2).all(|w| w[0] < w[1]), "{steps_seen:?}");
    assert!(!steps_seen.contains(&10.0), "{steps_seen:?}");
    assert_eq!(
        swapper.client::<dyn Greeter>().unwrap().version().unwrap(),
        "2.0.0"
    );
}

/// An operator's abort ends a gated canary; the old gate never touches the next canary.
fn a_gate_acts_only_on_its_own_canary(backend: Backend) {
    let swapper = Arc::new(start(backend, &Logs::default(), &[Fixture::GreeterV1]).unwrap());
    let (stop, worker) = traffic(&swapper, drop);
    // A gate that would promote within a few windows, and abort the faulty release at once.
    let gate = Probation::new(Duration::from_millis(20))
        .min_calls(1)
        .failed_checks(1)
        .latency_slack(Duration::from_secs(1))
        .steps([50.0]);
    swapper
        .canary(Fixture::GreeterV2.artifact(backend))
        .percent(50.0)
        .gate(gate)
        .start()
        .unwrap();
    swapper.abort_canary().unwrap();
    swapper
        .canary(Fixture::GreeterFaulty.artifact(backend))
        .percent(50.0)
        .start()
        .unwrap();
    // Ten of the first gate's windows: it neither promotes nor aborts the manual canary.
    std::thread::sleep(Duration::from_millis(200));
    let status = swapper
        .canary_status()
        .expect("the manual canary still runs");
    assert_eq!(status.canary.version, "2.1.0");
    assert!(status.gate.is_none());
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
}

/// The host's check before publish can call the candidate; its error vetoes the reload, the
/// canary's start included, and the current generation keeps serving.
fn before_publish_vetoes_a_reload_and_a_canary(backend: Backend) {
    let logs = Logs::default();
    let checked = Arc::new(Mutex::new(vec![]));
    let seen = checked.clone();
    let swapper = logs
        .builder()
        .interface::<dyn Greeter>()
        .before_publish(move |candidate| {
            let greeter = candidate.client::<dyn Greeter>();
            seen.lock().unwrap().push(greeter.version()?);
            greeter.greet("smoke")?;
            Ok(())
        })
        .build()
        .unwrap();
    swapper
        .load_files([Fixture::GreeterV1.artifact(backend)])
        .unwrap();
    let generation = swapper.generation();
    let err = swapper
        .load_files([Fixture::GreeterFaulty.artifact(backend)])
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::Vetoed { trigger: "load", reason, .. } if reason.contains("faulty release")),
        "{err}"
    );
    assert_eq!(swapper.generation(), generation, "nothing was published");
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    assert_eq!(greeter.version().unwrap(), "1.0.0");
    // The candidate's smoke calls went to the canary.
    let err = swapper
        .canary(Fixture::GreeterFaulty.artifact(backend))
        .percent(50.0)
        .start()
        .unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::Vetoed {
                trigger: "canary-start",
                ..
            }
        ),
        "{err}"
    );
    assert!(swapper.canary_status().is_none());
    assert_eq!(*checked.lock().unwrap(), ["1.0.0", "2.1.0", "2.1.0"]);
    // The refused instances were freed (a wasm instance that trapped is thrown away whole,
    // with no on_free).
    swapper.wait_drained(Duration::from_secs(30)).unwrap();
    assert_eq!(logs.count("greeter", "2.1.0", "on_load"), 2);
    let freed = if backend == Backend::Wasm { 0 } else { 2 };
    assert_eq!(logs.count("greeter", "2.1.0", "on_free"), freed);
    // A good canary passes the same check.
    swapper
        .canary(Fixture::GreeterV2.artifact(backend))
        .start()
        .unwrap();
}

/// Every way to ask for a canary that cannot be: a clear error, and nothing changes.
fn refused_canaries_change_nothing(backend: Backend) {
    let swapper = start(backend, &Logs::default(), &[Fixture::GreeterV1]).unwrap();
    let generation = swapper.generation();
    for op in [
        swapper.set_canary_percent(5.0).map(drop),
        swapper.abort_canary().map(drop),
        swapper.promote_canary().map(drop),
    ] {
        assert!(matches!(op, Err(LoadError::NoCanary)), "{op:?}");
    }
    let err = swapper
        .canary(Fixture::GreeterV1.artifact(backend))
        .start()
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::Canary { reason, .. } if reason.contains("own artifact")),
        "{err}"
    );
    let err = swapper
        .canary(Fixture::StateV1.artifact(backend))
        .start()
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::Canary { reason, .. } if reason.contains("no plugin `state`")),
        "{err}"
    );
    let err = swapper
        .canary("/nonexistent/greeter.so")
        .start()
        .unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }), "{err}");
    assert_eq!(swapper.generation(), generation);
    assert!(swapper.canary_status().is_none());

    swapper
        .canary(Fixture::GreeterV2.artifact(backend))
        .start()
        .unwrap();
    let err = swapper
        .canary(Fixture::GreeterFaulty.artifact(backend))
        .start()
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::CanaryRunning { version, .. } if version == "2.0.0"),
        "{err}"
    );
}

/// A canary whose `migrate` refuses the stable version's state never starts; the stable
/// version keeps serving with its state.
fn a_canary_that_cannot_migrate_never_starts(backend: Backend) {
    let logs = Logs::default();
    let swapper = start(backend, &logs, &[Fixture::StateV1]).unwrap();
    let counter = swapper.client::<dyn Counter>().unwrap();
    counter.remember("poison").unwrap();
    let err = swapper
        .canary(Fixture::StateV2.artifact(backend))
        .percent(100.0)
        .start()
        .unwrap_err();
    assert_eq!(err.hook(), Some("migrate"), "{err}");
    assert!(swapper.canary_status().is_none());
    assert_eq!(with_key("k", || counter.notes().unwrap()), ["poison"]);
    assert_eq!(with_key("k", || counter.describe().unwrap()).0, "1.0.0");
}

on_swappable_backends!(
    shares_are_sticky_as_the_percentage_grows,
    rules_and_the_default_pick_a_version,
    pinned_work_never_mixes_versions,
    abort_and_promote_under_load_fail_no_call,
    state_after_abort_and_after_promote,
    dependency_calls_follow_the_key,
    reloads_carry_the_canary,
    the_gate_aborts_a_faulty_canary,
    the_gate_steps_and_promotes_a_good_canary,
    a_gate_acts_only_on_its_own_canary,
    before_publish_vetoes_a_reload_and_a_canary,
    refused_canaries_change_nothing,
    a_canary_that_cannot_migrate_never_starts,
);

#[test]
fn static_plugins_have_no_canary() {
    let swapper = start(Backend::Static, &Logs::default(), &[Fixture::GreeterV1]).unwrap();
    let err = swapper
        .canary(Fixture::GreeterV2.path())
        .start()
        .unwrap_err();
    assert!(matches!(err, LoadError::StaticMode), "{err}");
}

/// A canary whose manifest says `reloadable: false` held every reload back while it ran:
/// each reload carries the canary, and would have "replaced" a plugin that may never be
/// replaced. It is now refused when it starts, and reloads go on.
#[test]
#[cfg(feature = "wasm")]
fn a_canary_that_may_never_be_replaced_is_refused_at_the_start() {
    use common::wat::Wat;
    let dir = common::tempdir();
    // Both are `fx.wasm` as written: the canary is moved aside first.
    // A body of their own, so that they answer the lifecycle calls (no state to hand over).
    let plugin = || Wat::plugin("fx").body("swapkit_call", "(nop) (i32.const 0)");
    let fixed = plugin().version("0.0.2").fixed().write_to(dir.path());
    let fixed_path = dir.path().join("fx-fixed.wasm");
    std::fs::rename(&fixed, &fixed_path).unwrap();
    let stable = plugin().write_to(dir.path());
    let swapper = Swapper::builder()
        .wasm_cache_dir(common::wasm_cache())
        .build()
        .unwrap();
    swapper.load_files([&stable]).unwrap();
    let refused = swapper.canary(&fixed_path).start().unwrap_err();
    let message = refused.to_string();
    assert!(
        matches!(refused, LoadError::Canary { .. }) && message.contains("not reloadable"),
        "{message}"
    );
    assert!(swapper.canary_status().is_none(), "no canary runs");
    swapper.reload().expect("reloads go on");
}
