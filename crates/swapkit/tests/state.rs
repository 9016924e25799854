//! State that survives swaps: the Vault, live data and migration, live functions and types,
//! host functions, and calls between dependent plugins. Each test runs on native and wasm.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{start, start_configured, start_with, Backend, Fixture, Logs};
use fixture_api::{Counter, Greeter, Probe};
use swapkit::{CallError, Grant, LiveFn, LoadError, Sandbox, Swapper};

on_swappable_backends!(
    vault_state_survives_swap_and_rollback,
    no_increment_is_lost_across_100_swaps,
    migration_round_trip_upgrade_then_downgrade,
    failed_migration_aborts_and_keeps_state,
    panicking_migration_aborts_and_keeps_state,
    live_fn_stored_before_a_swap_runs_the_new_code,
    live_type_is_made_by_the_current_version,
    host_functions_are_called_by_name,
    dependency_calls_stay_in_the_callers_generation,
    a_plugin_that_is_not_reloadable_is_never_replaced,
);

/// What makes sense without a swap runs on the static backend too.
mod every_backend {
    use super::*;

    on_both_backends!(
        vault_entries_are_listed_and_deleted_by_a_plugin,
        wrong_dependency_interface_is_refused,
        undeclared_dependency_call_is_an_error,
        load_data_reaches_on_load,
        load_data_that_does_not_decode_fails_the_load,
        live_functions_and_types_are_reached_by_name,
    );
}

fn swap(swapper: &Swapper, backend: Backend, set: &[Fixture]) -> Result<u64, LoadError> {
    let report = swapper.load_files(set.iter().map(|f| f.artifact(backend)))?;
    Ok(report.generation)
}

fn vault_state_survives_swap_and_rollback(backend: Backend) {
    let logs = Logs::default();
    let swapper = start(backend, &logs, &[Fixture::StateV1]).unwrap();
    let counter = swapper.client::<dyn Counter>().unwrap();
    for expected in 1..=3 {
        assert_eq!(counter.bump("state/visits").unwrap(), expected);
    }
    swap(&swapper, backend, &[Fixture::StateV2]).unwrap();
    assert_eq!(counter.describe().unwrap().0, "2.0.0");
    assert_eq!(
        counter.read("state/visits").unwrap(),
        Some(3),
        "v2 reads what v1 wrote"
    );
    assert_eq!(counter.bump("state/visits").unwrap(), 4);
    swapper.rollback().unwrap();
    assert_eq!(counter.describe().unwrap().0, "1.0.0");
    assert_eq!(
        counter.read("state/visits").unwrap(),
        Some(4),
        "v1 reads what v2 wrote"
    );
    // The host sees the same state, typed.
    assert_eq!(swapper.vault().get::<u64>("state/visits").unwrap(), Some(4));
}

fn no_increment_is_lost_across_100_swaps(backend: Backend) {
    let logs = Logs::default();
    let swapper = start(backend, &logs, &[Fixture::StateV1]).unwrap();
    let counter = swapper.client::<dyn Counter>().unwrap();
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            let (counter, stop, calls) = (counter.clone(), &stop, &calls);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    counter
                        .bump("state/hits")
                        .expect("no call fails during swaps");
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        for i in 0..100 {
            let next = if i % 2 == 0 {
                Fixture::StateV2
            } else {
                Fixture::StateV1
            };
            swap(&swapper, backend, &[next]).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    let made = calls.load(Ordering::Relaxed);
    assert!(made > 0);
    assert_eq!(
        swapper.vault().get::<u64>("state/hits").unwrap(),
        Some(made)
    );
}

fn migration_round_trip_upgrade_then_downgrade(backend: Backend) {
    let logs = Logs::default();
    let swapper = start(backend, &logs, &[Fixture::StateV1]).unwrap();
    let counter = swapper.client::<dyn Counter>().unwrap();
    counter.remember("alpha").unwrap();
    counter.remember("beta").unwrap();
    swap(&swapper, backend, &[Fixture::StateV2]).unwrap();
    // v2 read v1's schema 1 state: its new field took its default, with no migration code.
    assert_eq!(counter.describe().unwrap(), ("2.0.0".into(), 1));
    assert_eq!(counter.notes().unwrap(), ["alpha", "beta"]);
    assert_eq!(
        logs.count("state", "2.0.0", "migrated 2 notes from schema 1"),
        1
    );
    counter.remember("gamma").unwrap();
    swapper.rollback().unwrap();
    // v1 read v2's schema 2 state, ignoring the field it does not know.
    assert_eq!(counter.describe().unwrap(), ("1.0.0".into(), 2));
    assert_eq!(counter.notes().unwrap(), ["alpha", "beta", "gamma"]);
}

fn failed_migration_aborts_and_keeps_state(backend: Backend) {
    migration_fault_keeps_state(
        backend,
        "poison",
        |e| matches!(e, LoadError::Hook { hook: "migrate", message, .. } if message.contains("poisoned")),
    );
}

fn panicking_migration_aborts_and_keeps_state(backend: Backend) {
    migration_fault_keeps_state(
        backend,
        "panic",
        |e| matches!(e, LoadError::HookPanic { hook: "migrate", message, .. } if message.contains("on purpose")),
    );
}

fn migration_fault_keeps_state(backend: Backend, note: &str, expected: fn(&LoadError) -> bool) {
    let logs = Logs::default();
    let swapper = start(backend, &logs, &[Fixture::StateV1]).unwrap();
    let counter = swapper.client::<dyn Counter>().unwrap();
    counter.bump("state/kept").unwrap();
    counter.remember("ok").unwrap();
    counter.remember(note).unwrap();
    let before = swapper.generation();
    let vault_before = swapper.vault().get_versioned("state/kept");
    let err = swap(&swapper, backend, &[Fixture::StateV2]).unwrap_err();
    assert!(expected(&err), "{err:?}");
    assert!(err.to_string().contains("reload was aborted"), "{err}");
    assert_eq!(swapper.generation(), before);
    assert_eq!(counter.describe().unwrap(), ("1.0.0".into(), 0));
    assert_eq!(counter.notes().unwrap(), ["ok", note]);
    assert_eq!(swapper.vault().get_versioned("state/kept"), vault_before);
    assert_eq!(counter.bump("state/kept").unwrap(), 2, "v1 keeps serving");
}

fn live_fn_stored_before_a_swap_runs_the_new_code(backend: Backend) {
    let logs = Logs::default();
    let swapper = start(backend, &logs, &[Fixture::StateV1]).unwrap();
    let job: LiveFn<(u64,), String> = LiveFn::new("state", "job");
    let stored = serde_json::to_string(&job).unwrap();
    assert_eq!(job.call(&swapper, &(7,)).unwrap(), "v1 ran job 7");
    let legacy: LiveFn<(), u32> = LiveFn::new("state", "legacy");
    assert_eq!(legacy.call(&swapper, &()).unwrap(), 1);

    swap(&swapper, backend, &[Fixture::StateV2]).unwrap();
    let job: LiveFn<(u64,), String> = serde_json::from_str(&stored).unwrap();
    assert_eq!(job.call(&swapper, &(7,)).unwrap(), "v2 ran job 7");
    let err = legacy.call(&swapper, &()).unwrap_err();
    assert!(
        matches!(&err, CallError::LiveNotFound { kind: "function", name, .. } if name == "legacy"),
        "{err:?}"
    );
    assert!(err.to_string().contains("plugin `state`"), "{err}");
    let nowhere: LiveFn<(), u32> = LiveFn::new("no-such-plugin", "job");
    assert!(matches!(
        nowhere.call(&swapper, &()),
        Err(CallError::LiveNotFound { .. })
    ));
}

fn live_type_is_made_by_the_current_version(backend: Backend) {
    #[derive(serde::Deserialize)]
    struct Ticket {
        id: u64,
        #[serde(default)]
        priority: u8,
    }
    let logs = Logs::default();
    let swapper = start(backend, &logs, &[Fixture::StateV1]).unwrap();
    let made = swapper.new_live("Ticket", &(9u64,)).unwrap();
    assert_eq!((made.type_name.as_str(), made.schema), ("Ticket", 1));
    let t: Ticket = made.decode().unwrap();
    assert_eq!((t.id, t.priority), (9, 0));
    swap(&swapper, backend, &[Fixture::StateV2]).unwrap();
    let made = swapper.new_live("Ticket", &(10u64,)).unwrap();
    assert_eq!(made.schema, 2);
    let t: Ticket = made.decode().unwrap();
    assert_eq!((t.id, t.priority), (10, 5));
    assert!(matches!(
        swapper.new_live("Nothing", &()),
        Err(CallError::LiveNotFound { kind: "type", .. })
    ));
}

fn host_functions_are_called_by_name(backend: Backend) {
    let logs = Logs::default();
    let swapper = start(backend, &logs, &[Fixture::StateV1]).unwrap();
    swapper.vault().provide("add", |(a, b): (u64, u64)| a + b);
    let counter = swapper.client::<dyn Counter>().unwrap();
    let err = counter.host_add(2, 3).unwrap().unwrap_err();
    assert!(
        err.contains("may not call host function `add`") && err.contains("Grant::HostFn"),
        "a host function is granted per plugin: {err}"
    );
    let granted = Sandbox::new().grant("state", Grant::HostFn("add".into()));
    let swapper = start_with(backend, &logs, &[Fixture::StateV1], granted).unwrap();
    let counter = swapper.client::<dyn Counter>().unwrap();
    let err = counter.host_add(2, 3).unwrap().unwrap_err();
    assert!(err.contains("no function `add`"), "{err}");
    swapper.vault().provide("add", |(a, b): (u64, u64)| a + b);
    assert_eq!(counter.host_add(2, 3).unwrap(), Ok(5));
    // The function belongs to the host: it survives a swap.
    swap(&swapper, backend, &[Fixture::StateV2]).unwrap();
    assert_eq!(counter.host_add(40, 2).unwrap(), Ok(42));
    // A function with other argument types fails to decode, with its name in the message.
    swapper
        .vault()
        .provide("add", |(a, b, c): (u64, u64, u64)| a + b + c);
    let err = counter.host_add(1, 1).unwrap().unwrap_err();
    assert!(err.contains("`add`"), "{err}");
}

fn dependency_calls_stay_in_the_callers_generation(backend: Backend) {
    let logs = Logs::default();
    let (store, v1, v2, front) = (
        Fixture::TrineStore,
        Fixture::TrineLogicV1,
        Fixture::TrineLogicV2,
        Fixture::TrineFront,
    );
    let swapper = start(backend, &logs, &[front, v1, store]).unwrap();
    let client = swapper.client::<dyn trine_api::Front>().unwrap();
    assert_eq!(client.quote("tea").unwrap(), "tea: 1.05 (logic v1)");
    let pin = swapper.pin();
    let report = swapper
        .load_files([front, v2, store].map(|f| f.artifact(backend)))
        .unwrap();
    assert_eq!(report.loaded, [("logic".to_owned(), "2.0.0".to_owned())]);
    assert_eq!(report.reused.len(), 2, "front and store are kept");
    assert_eq!(client.quote("tea").unwrap(), "tea: 1.20 (logic v2)");
    // The same `front` instance, called through the pin, reaches logic v1.
    let pinned = pin.client::<dyn trine_api::Front>();
    assert_eq!(pinned.quote("tea").unwrap(), "tea: 1.15 (logic v1)");
    drop(pinned);
    drop(pin);
    assert_eq!(
        swapper.vault().get::<u64>("store/count/tea").unwrap(),
        Some(3)
    );
}

fn wrong_dependency_interface_is_refused(backend: Backend) {
    let logs = Logs::default();
    let err = start(backend, &logs, &[Fixture::ChainBase, Fixture::DepWrong]).unwrap_err();
    match &err {
        LoadError::DependencyInterface {
            plugin,
            dependency,
            interface,
            ..
        } => assert_eq!(
            (plugin.as_str(), dependency.as_str(), interface.as_str()),
            ("dep-wrong", "chain-base", "Greeter")
        ),
        other => panic!("expected a dependency interface error, got {other:?}"),
    }
    assert!(err.to_string().contains("does not export it"), "{err}");
}

fn undeclared_dependency_call_is_an_error(backend: Backend) {
    let logs = Logs::default();
    let swapper = start(backend, &logs, &[Fixture::ChainBase, Fixture::DepStray]).unwrap();
    let stray = swapper.client_of::<dyn Probe>("dep-stray").unwrap();
    let answer = stray.name().unwrap();
    assert!(answer.contains("does not declare"), "{answer}");
}

/// Two plugins that export a live function of the same name are refused together (a lookup
/// by name would reach whichever came first); the current generation keeps serving.
#[test]
fn duplicate_live_names_across_plugins_are_refused() {
    let swapper = start(Backend::Native, &Logs::default(), &[Fixture::StateV1]).unwrap();
    let generation = swapper.generation();
    let err = swap(
        &swapper,
        Backend::Native,
        &[Fixture::StateV1, Fixture::LiveClash],
    )
    .unwrap_err();
    match &err {
        LoadError::DuplicateLive {
            kind: "live function",
            name,
            first,
            second,
        } => assert_eq!(
            (name.as_str(), first.as_str(), second.as_str()),
            ("job", "state", "clash")
        ),
        other => panic!("expected a duplicate live name, got {other}"),
    }
    assert!(err.to_string().contains("rename one"), "{err}");
    assert_eq!(swapper.generation(), generation);
    // Alone, it loads.
    swap(&swapper, Backend::Native, &[Fixture::LiveClash]).unwrap();
}

/// Every plugin that exports an interface, in dependency order and in reverse, all in one
/// generation.
#[test]
fn each_exporter_in_dependency_order() {
    let mut backends = vec![Backend::Native];
    if cfg!(feature = "wasm") {
        backends.push(Backend::Wasm);
    }
    for backend in backends {
        // Listed dependents first: the order comes from the dependencies, not the list.
        let set = [Fixture::ChainTop, Fixture::ChainBase, Fixture::StateV1];
        let swapper = start(backend, &Logs::default(), &set).unwrap();
        let each = swapper.each::<dyn Probe>().unwrap();
        let names: Vec<String> = each.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(each[0].1.name().unwrap(), "chain-base");
        assert_eq!(names, ["chain-base", "chain-top"]);
        let backward: Vec<String> = swapper
            .each::<dyn Probe>()
            .unwrap()
            .into_iter()
            .rev()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(backward, ["chain-top", "chain-base"]);
        // The clients stay on their generation across a swap.
        swap(&swapper, backend, &[Fixture::StateV1]).unwrap();
        assert_eq!(each[1].1.name().unwrap(), "chain-top>chain-base");
        assert!(swapper.each::<dyn Probe>().unwrap().is_empty());
    }
}

fn vault_entries_are_listed_and_deleted_by_a_plugin(backend: Backend) {
    let logs = Logs::default();
    let shared = Sandbox::new().grant("state", Grant::VaultRead("shared/".into()));
    let swapper = start_with(backend, &logs, &[Fixture::StateV1], shared).unwrap();
    let vault = swapper.vault();
    for key in [
        "state/a",
        "state/b",
        "state/c/1",
        "shared/x",
        "other/secret",
    ] {
        vault.put(key, &1u64).unwrap();
    }
    let counter = swapper.client::<dyn Counter>().unwrap();
    assert_eq!(
        counter.keys("state/").unwrap().unwrap(),
        ["state/a", "state/b", "state/c/1"]
    );
    // A listing shows only what the plugin may read: its own keys and the granted prefix.
    assert_eq!(
        counter.keys("").unwrap().unwrap(),
        ["shared/x", "state/a", "state/b", "state/c/1"]
    );
    assert_eq!(counter.forget("state/b").unwrap(), Ok(true));
    assert_eq!(
        counter.forget("state/b").unwrap(),
        Ok(false),
        "gone already"
    );
    assert_eq!(
        vault.get::<u64>("state/b").unwrap(),
        None,
        "the host sees it gone"
    );
    // Deleting outside its namespace is refused, and the entry stays.
    let refused = counter.forget("other/secret").unwrap().unwrap_err();
    assert!(refused.contains("other/secret"), "{refused}");
    let refused = counter.forget("shared/x").unwrap().unwrap_err();
    assert!(refused.contains("shared/x"), "read-only grant: {refused}");
    assert_eq!(vault.get::<u64>("other/secret").unwrap(), Some(1));
    assert_eq!(vault.get::<u64>("shared/x").unwrap(), Some(1));
}

/// The test host's settings for `fixed`, as the host encodes them.
#[derive(serde::Serialize)]
struct Settings {
    greeting: &'static str,
    region: &'static str,
}

const EU: Settings = Settings {
    greeting: "Bonjour",
    region: "eu-west",
};

fn load_data_reaches_on_load(backend: Backend) {
    let logs = Logs::default();
    let swapper =
        start_configured(backend, &logs, &[Fixture::FixedV1], |b| b.load_data(&EU)).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    assert_eq!(
        greeter.greet("Ada").unwrap(),
        "Bonjour, Ada (eu-west, v1.0.0)"
    );

    // One plugin's own value takes precedence; without any, the plugin sees none.
    let swapper = start_configured(backend, &logs, &[Fixture::FixedV1], |b| {
        b.load_data(&EU).load_data_for(
            "fixed",
            &Settings {
                greeting: "Hej",
                region: "eu-north",
            },
        )
    })
    .unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    assert_eq!(greeter.greet("Ada").unwrap(), "Hej, Ada (eu-north, v1.0.0)");
    let swapper = start(backend, &logs, &[Fixture::FixedV1]).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    assert_eq!(
        greeter.greet("Ada").unwrap(),
        "Hello, Ada (nowhere, v1.0.0)"
    );
}

fn load_data_that_does_not_decode_fails_the_load(backend: Backend) {
    let logs = Logs::default();
    let err =
        start_configured(backend, &logs, &[Fixture::FixedV1], |b| b.load_data(&7u8)).unwrap_err();
    assert!(
        matches!(&err, LoadError::Hook { plugin, hook: "on_load", .. } if plugin == "fixed"),
        "{err:?}"
    );
    assert!(err.to_string().contains("does not decode"), "{err}");
}

fn a_plugin_that_is_not_reloadable_is_never_replaced(backend: Backend) {
    let logs = Logs::default();
    let swapper = start_configured(backend, &logs, &[Fixture::FixedV1, Fixture::StateV1], |b| {
        b.load_data(&EU)
    })
    .unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    let counter = swapper.client::<dyn Counter>().unwrap();
    counter.bump("state/n").unwrap();
    let first = swapper.generation();

    // Another version of it: refused, and nothing changes.
    let err = swap(&swapper, backend, &[Fixture::FixedV2, Fixture::StateV1]).unwrap_err();
    assert!(
        matches!(&err, LoadError::NotReloadable { plugin, version, change }
            if plugin == "fixed" && version == "1.0.0" && change.contains("2.0.0")),
        "{err:?}"
    );
    assert!(err.to_string().contains("reloadable: false"), "{err}");
    assert_eq!(err.plugin(), Some("fixed"));
    assert_eq!(swapper.generation(), first);
    assert_eq!(
        greeter.greet("Ada").unwrap(),
        "Bonjour, Ada (eu-west, v1.0.0)"
    );

    // Leaving it out is refused too.
    let err = swap(&swapper, backend, &[Fixture::StateV1]).unwrap_err();
    assert!(
        matches!(&err, LoadError::NotReloadable { change, .. } if change.contains("remove")),
        "{err:?}"
    );

    // The other plugins still swap: its unchanged artifact keeps its instance.
    let report = swapper
        .load_files([Fixture::FixedV1, Fixture::StateV2].map(|f| f.artifact(backend)))
        .unwrap();
    assert_eq!(report.loaded, [("state".to_owned(), "2.0.0".to_owned())]);
    assert_eq!(report.reused, [("fixed".to_owned(), "1.0.0".to_owned())]);
    assert_eq!(counter.read("state/n").unwrap(), Some(1));
    swapper.rollback().unwrap();
    assert_eq!(counter.describe().unwrap().0, "1.0.0");

    // Nor can a canary run beside it.
    let err = swapper
        .canary(Fixture::FixedV2.artifact(backend))
        .percent(10.0)
        .start()
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::NotReloadable { change, .. } if change.contains("canary")),
        "{err:?}"
    );
    assert_eq!(
        greeter.greet("Ada").unwrap(),
        "Bonjour, Ada (eu-west, v1.0.0)"
    );
    assert_eq!(swapper.vault().get::<u64>("state/n").unwrap(), Some(1));
}

#[test]
fn load_data_that_does_not_encode_fails_the_build() {
    struct Unencodable;
    impl serde::Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("this type refuses"))
        }
    }
    let err = match Swapper::builder()
        .load_data_for("fixed", &Unencodable)
        .build()
    {
        Ok(_) => panic!("built"),
        Err(e) => e,
    };
    assert!(
        matches!(&err, LoadError::LoadData { plugin, .. } if plugin == "fixed"),
        "{err:?}"
    );
}

fn live_functions_and_types_are_reached_by_name(backend: Backend) {
    let logs = Logs::default();
    let swapper = start(backend, &logs, &[Fixture::StateV1]).unwrap();
    let job: LiveFn<(u64,), String> = LiveFn::new("state", "job");
    let stored = serde_json::to_string(&job).unwrap();
    let job: LiveFn<(u64,), String> = serde_json::from_str(&stored).unwrap();
    assert_eq!(job.call(&swapper, &(7,)).unwrap(), "v1 ran job 7");
    let missing: LiveFn<(), u32> = LiveFn::new("state", "no-such-job");
    assert!(matches!(
        missing.call(&swapper, &()),
        Err(CallError::LiveNotFound { .. })
    ));
    let made = swapper.new_live("Ticket", &(9u64,)).unwrap();
    assert_eq!((made.type_name.as_str(), made.schema), ("Ticket", 1));
}
