//! Behaviour that holds on every backend: calls from threads, pins, hooks, retirement, and
//! every load failure that applies to both. Each test runs once per backend.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::{start, Backend, Fixture, Logs};
use fixture_api::{Greeter, Probe};
use swapkit::{CallError, LoadError};

on_both_backends!(
    calls_from_many_threads,
    pinned_work_sees_one_generation,
    plugin_panic_is_an_error_and_the_next_call_works,
    hooks_run_in_dependency_order_and_free_in_reverse,
    pinned_generation_is_freed_exactly_once_after_release,
    on_load_error_aborts_and_frees_what_was_built,
    on_init_panic_aborts_and_frees_what_was_built,
    duplicate_names_are_refused,
    unknown_dependency_is_refused,
    dependency_cycle_is_refused_and_named,
    interface_hash_mismatch_is_refused,
    missing_interface_is_a_call_error,
);

fn calls_from_many_threads(backend: Backend) {
    let logs = Logs::default();
    let swapper = start(backend, &logs, &[Fixture::GreeterV1]).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    let total = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (greeter, total) = (greeter.clone(), &total);
            s.spawn(move || {
                for i in 0..2_000u64 {
                    assert_eq!(greeter.score(i, "abc").unwrap(), i + 3);
                    total.fetch_add(1, Ordering::Relaxed);
                }
                assert_eq!(
                    greeter.greet(&format!("t{t}")).unwrap(),
                    format!("hello, t{t} (v1)")
                );
            });
        }
    });
    assert_eq!(total.load(Ordering::Relaxed), 8_000);
}

fn pinned_work_sees_one_generation(backend: Backend) {
    let logs = Logs::default();
    let swapper = start(backend, &logs, &[Fixture::GreeterV1]).unwrap();
    let pin = swapper.pin();
    assert_eq!(pin.generation(), swapper.generation());
    assert_eq!(
        pin.plugins(),
        vec![("greeter".to_owned(), "1.0.0".to_owned())]
    );
    let greeter = pin.client::<dyn Greeter>();
    for _ in 0..10 {
        assert_eq!(greeter.version().unwrap(), "1.0.0");
    }
    assert_eq!(swapper.status().current.pin_count, 1);
    drop(pin);
    assert_eq!(swapper.status().current.pin_count, 0);
    // A client made from a pin keeps working after the pin itself is dropped: it holds the
    // generation on its own.
    assert_eq!(greeter.version().unwrap(), "1.0.0");
}

fn plugin_panic_is_an_error_and_the_next_call_works(backend: Backend) {
    let logs = Logs::default();
    let swapper = start(backend, &logs, &[Fixture::GreeterV1]).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    for round in 0..3 {
        match greeter.fail(&format!("boom {round}")) {
            Err(CallError::Panic { site, message }) => {
                assert_eq!(
                    (&*site.plugin, &*site.version, site.interface, site.method),
                    ("greeter", "1.0.0", "Greeter", "fail")
                );
                assert_eq!(message, format!("boom {round}"));
            }
            other => panic!("expected a panic error, got {other:?}"),
        }
        assert_eq!(greeter.greet("after").unwrap(), "hello, after (v1)");
    }
    let err = greeter.fail("shown").unwrap_err().to_string();
    assert!(
        err.contains("greeter")
            && err.contains("1.0.0")
            && err.contains("fail")
            && err.contains("shown"),
        "{err}"
    );
}

fn hooks_run_in_dependency_order_and_free_in_reverse(backend: Backend) {
    let logs = Logs::default();
    // Given top first: the dependency order must still load and init the base first.
    let swapper = start(backend, &logs, &[Fixture::ChainTop, Fixture::ChainBase]).unwrap();
    let names: Vec<String> = swapper
        .status()
        .current
        .plugins
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(names, ["chain-base", "chain-top"]);
    let top = swapper.client_of::<dyn Probe>("chain-top").unwrap();
    // chain-top calls chain-base through its dependency client.
    assert_eq!(top.name().unwrap(), "chain-top>chain-base");
    drop(top);
    drop(swapper);
    assert_eq!(
        logs.lines(),
        [
            "chain-base on_load",
            "chain-top on_load",
            "chain-base on_init",
            "chain-top on_init",
            "chain-top on_free",
            "chain-base on_free",
        ]
    );
}

fn pinned_generation_is_freed_exactly_once_after_release(backend: Backend) {
    let logs = Logs::default();
    let swapper = start(backend, &logs, &[Fixture::GreeterV1]).unwrap();
    let pin = swapper.pin();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    assert_eq!(greeter.version().unwrap(), "1.0.0");
    // Dropping the swapper and the client releases everything but the pin.
    drop(greeter);
    drop(swapper);
    assert_eq!(
        logs.count("greeter", "1.0.0", "on_free"),
        0,
        "freed while pinned"
    );
    assert_eq!(
        pin.client::<dyn Greeter>().greet("still").unwrap(),
        "hello, still (v1)"
    );
    drop(pin);
    assert_eq!(logs.count("greeter", "1.0.0", "on_free"), 1);
    assert_eq!(logs.count("greeter", "1.0.0", "on_load"), 1);
}

fn on_load_error_aborts_and_frees_what_was_built(backend: Backend) {
    let logs = Logs::default();
    let err = start(backend, &logs, &[Fixture::GreeterV1, Fixture::BadLoad]).unwrap_err();
    match &err {
        LoadError::Hook {
            plugin,
            hook,
            message,
            ..
        } => {
            assert_eq!((plugin.as_str(), *hook), ("bad-load", "on_load"));
            assert!(message.contains("config file"), "{message}");
        }
        other => panic!("expected an on_load error, got {other:?}"),
    }
    assert_eq!(
        (err.plugin(), err.hook(), err.path()),
        (Some("bad-load"), Some("on_load"), None)
    );
    // greeter loaded first, so the abort freed it, and nothing was initialised.
    assert_eq!(logs.lines(), ["greeter on_load", "greeter on_free"]);
}

fn on_init_panic_aborts_and_frees_what_was_built(backend: Backend) {
    let logs = Logs::default();
    let err = start(backend, &logs, &[Fixture::GreeterV1, Fixture::BadInit]).unwrap_err();
    match &err {
        LoadError::HookPanic {
            plugin,
            hook,
            message,
            ..
        } => {
            assert_eq!(
                (plugin.as_str(), *hook, message.as_str()),
                ("bad-init", "on_init", "init exploded")
            );
        }
        other => panic!("expected an on_init panic, got {other:?}"),
    }
    // A wasm panic traps, and a trapped instance is thrown away whole (its memory with it):
    // no code runs in it again, so it gets no on_free.
    let freed = if backend == Backend::Wasm { 0 } else { 1 };
    assert_eq!(logs.count("bad-init", "0.1.0", "on_free"), freed);
    assert_eq!(logs.count("greeter", "1.0.0", "on_free"), 1);
}

fn duplicate_names_are_refused(backend: Backend) {
    let logs = Logs::default();
    let err = start(backend, &logs, &[Fixture::GreeterV1, Fixture::GreeterV2]).unwrap_err();
    assert!(
        matches!(&err, LoadError::DuplicatePlugin { name, .. } if name == "greeter"),
        "{err:?}"
    );
    assert!(logs.all().is_empty(), "no hook may run for a refused set");
}

fn unknown_dependency_is_refused(backend: Backend) {
    let logs = Logs::default();
    let err = start(backend, &logs, &[Fixture::ChainTop]).unwrap_err();
    assert!(
        matches!(&err, LoadError::UnknownDependency { plugin, dependency } if plugin == "chain-top" && dependency == "chain-base"),
        "{err:?}"
    );
}

fn dependency_cycle_is_refused_and_named(backend: Backend) {
    let logs = Logs::default();
    let err = start(backend, &logs, &[Fixture::CycleA, Fixture::CycleB]).unwrap_err();
    match &err {
        LoadError::DependencyCycle { cycle } => {
            assert_eq!(cycle, &["cycle-a", "cycle-b", "cycle-a"])
        }
        other => panic!("expected a cycle, got {other:?}"),
    }
    assert!(
        err.to_string().contains("cycle-a -> cycle-b -> cycle-a"),
        "{err}"
    );
}

fn interface_hash_mismatch_is_refused(backend: Backend) {
    let logs = Logs::default();
    let err = start(backend, &logs, &[Fixture::Drift]).unwrap_err();
    match &err {
        LoadError::InterfaceHash(m) => {
            assert_eq!(
                (m.plugin.as_str(), m.interface.as_str()),
                ("greeter", "Greeter")
            );
            assert_eq!(m.expected, <dyn Greeter as swapkit::Interface>::HASH);
            assert_ne!(m.found, m.expected);
        }
        other => panic!("expected an interface hash mismatch, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("greet(&str,u32)->String") && text.contains("greet(&str)->String"),
        "{text}"
    );
}

fn missing_interface_is_a_call_error(backend: Backend) {
    let logs = Logs::default();
    let swapper = start(backend, &logs, &[Fixture::ChainBase]).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    let err = greeter.greet("x").unwrap_err();
    assert!(
        matches!(
            err,
            CallError::NotExported {
                interface: "Greeter",
                ..
            }
        ),
        "{err:?}"
    );
}

/// Shared by the backends' swap tests: keeps two threads calling until `stop`.
pub fn hammer(greeter: impl Fn() -> Result<String, CallError> + Sync, stop: &AtomicBool) -> u64 {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        greeter().unwrap();
        n += 1;
    }
    n
}

#[test]
fn interfaces_hash_signature_text() {
    use swapkit::Interface;
    assert_eq!(
        <dyn Greeter as Interface>::SIGNATURE,
        "greet(&str)->String;version()->String;score(u64,&str)->u64;fail(&str)->u32"
    );
    assert_eq!(
        <dyn Greeter as Interface>::METHODS,
        ["greet", "version", "score", "fail"]
    );
    assert_ne!(
        <dyn Greeter as Interface>::HASH,
        <dyn Probe as Interface>::HASH
    );
    let _ = Arc::new(());
}

#[test]
fn handles_cross_threads() {
    fn check<T: Send + Sync>() {}
    check::<swapkit::Swapper>();
    check::<swapkit::Pin>();
    check::<swapkit::Binding>();
    check::<swapkit::Pinned>();
    check::<fixture_api::GreeterClient<swapkit::Binding>>();
    check::<swapkit::LoadError>();
    check::<swapkit::CallError>();
}
