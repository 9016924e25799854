//! Async plugin methods, end to end: the shop fixtures, built from their crates, loaded
//! through the real backends, awaiting the host's async services on a real tokio runtime.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{start_configured, Backend, Fixture, Logs};
use fixture_api::{Shop, Storefront};
use swapkit::{CallError, Grant, Sandbox, Swapper, Vault};
use swapkit_abi::Transport;
use tokio::sync::Semaphore;

/// A host whose `shop` awaits its services: `shop.wait` (a gate the test opens), `shop.get`
/// and `shop.put` (a table, each yielding to the runtime first), and `shop.dropped` (counts
/// the plugin futures dropped, by version).
struct Shop1 {
    swapper: Swapper,
    logs: Logs,
    gate: Arc<Semaphore>,
    dropped: Arc<Mutex<HashMap<String, usize>>>,
}

fn start(backend: Backend) -> Shop1 {
    start_limited(backend, |b| b)
}

/// [`start`], with the builder set up by `configure` too.
fn start_limited(
    backend: Backend,
    configure: impl FnOnce(swapkit::SwapperBuilder) -> swapkit::SwapperBuilder,
) -> Shop1 {
    start_set(backend, &[Fixture::ShopV1], configure)
}

/// [`start_limited`], loading `set`.
fn start_set(
    backend: Backend,
    set: &[Fixture],
    configure: impl FnOnce(swapkit::SwapperBuilder) -> swapkit::SwapperBuilder,
) -> Shop1 {
    let logs = Logs::default();
    let vault = Vault::new();
    let gate = Arc::new(Semaphore::new(0));
    let dropped: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let table: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    {
        let gate = gate.clone();
        vault.provide_async("shop.wait", move |(i,): (u32,)| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.expect("the gate stays open").forget();
                i
            }
        });
    }
    {
        let dropped = dropped.clone();
        vault.provide("shop.dropped", move |(version,): (String,)| {
            *dropped.lock().unwrap().entry(version).or_default() += 1;
        });
    }
    {
        let table = table.clone();
        vault.provide_async("shop.get", move |(user,): (u64,)| {
            let table = table.clone();
            async move {
                tokio::task::yield_now().await;
                table.lock().unwrap().get(&user).copied().unwrap_or(0)
            }
        });
    }
    vault.provide_async("shop.put", move |(user, value): (u64, u64)| {
        let table = table.clone();
        async move {
            tokio::task::yield_now().await;
            table.lock().unwrap().insert(user, value);
        }
    });
    let sandbox = Sandbox::default().grant("shop", Grant::AllHostFns);
    let swapper = start_configured(backend, &logs, set, |b| {
        configure(b.vault(vault).sandbox(sandbox))
    })
    .expect("start the shop");
    Shop1 {
        swapper,
        logs,
        gate,
        dropped,
    }
}

impl Shop1 {
    fn dropped(&self, version: &str) -> usize {
        self.dropped
            .lock()
            .unwrap()
            .get(version)
            .copied()
            .unwrap_or(0)
    }

    fn swap_to(&self, fixture: Fixture) {
        self.swapper.load_files([fixture.path()]).expect("swap");
    }

    fn freed(&self, version: &str) -> usize {
        self.logs.count("shop", version, "on_free")
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits until `n` async calls are pending in the plugin (each is named in the drain report
/// of its generation while it is).
async fn until_waiting(shop: &Shop1, n: usize) {
    for _ in 0..5000 {
        if pending(&shop.swapper) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{n} calls never reached the gate");
}

/// Async calls pending in the current and draining generations.
fn pending(swapper: &Swapper) -> usize {
    let status = swapper.status();
    std::iter::once(&status.current)
        .chain(&status.draining)
        .flat_map(|g| &g.pins)
        .filter(|p| p.label.starts_with("async call"))
        .count()
}

#[test]
fn a_suspended_v1_call_finishes_on_v1_after_a_swap_and_v1_is_freed_after_it() {
    let shop = start(Backend::Native);
    let rt = runtime();
    let client = shop.swapper.client::<dyn Shop>().unwrap();
    rt.block_on(async {
        let call = tokio::spawn({
            let client = client.clone();
            async move { client.wait(2).await }
        });
        until_waiting(&shop, 1).await;
        shop.swap_to(Fixture::ShopV2);
        assert_eq!(client.version().unwrap(), "2.0.0");
        // v1 waits on its call: not freed.
        assert_eq!(shop.freed("1.0.0"), 0);
        shop.gate.add_permits(2);
        assert_eq!(call.await.unwrap().unwrap(), "1.0.0");
        // New calls run on v2.
        shop.gate.add_permits(1);
        assert_eq!(client.wait(1).await.unwrap(), "2.0.0");
    });
    assert_eq!(
        shop.dropped("1.0.0"),
        1,
        "the v1 future was dropped once, in v1"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while shop.freed("1.0.0") == 0 {
        assert!(std::time::Instant::now() < deadline, "v1 was never freed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(shop.freed("1.0.0"), 1);
}

#[test]
fn a_call_dropped_at_any_await_drops_the_plugins_future_in_its_generation() {
    let shop = start(Backend::Native);
    let rt = runtime();
    let client = shop.swapper.client::<dyn Shop>().unwrap();
    rt.block_on(async {
        for opened in 0..3u32 {
            let call = tokio::spawn({
                let client = client.clone();
                async move { client.wait(3).await }
            });
            until_waiting(&shop, 1).await;
            // Let it past `opened` awaits, then drop it at the next.
            shop.gate.add_permits(opened as usize);
            tokio::time::sleep(Duration::from_millis(20)).await;
            call.abort();
            assert!(call.await.unwrap_err().is_cancelled());
            assert_eq!(
                shop.dropped("1.0.0"),
                opened as usize + 1,
                "after {opened} awaits"
            );
            assert_eq!(pending(&shop.swapper), 0, "nothing is left pending");
            // The host future it awaited went with it: the gate holds no waiter.
            assert_eq!(shop.gate.available_permits(), 0);
        }
    });
    // The generation it ran in goes once nothing holds it, and `on_free` runs once.
    shop.swap_to(Fixture::ShopV2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while shop.freed("1.0.0") == 0 {
        assert!(std::time::Instant::now() < deadline, "v1 was never freed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(shop.freed("1.0.0"), 1);
}

#[test]
fn a_panicking_future_fails_its_call_alone() {
    for backend in [Backend::Native, Backend::Static] {
        let shop = start(backend);
        let rt = runtime();
        let client = shop.swapper.client::<dyn Shop>().unwrap();
        rt.block_on(async {
            let before = client.explode(false).await.unwrap_err();
            assert!(
                matches!(&before, CallError::Panic { message, .. } if message.contains("exploded in 1.0.0")),
                "{backend:?}: {before}"
            );
            let waiting = tokio::spawn({
                let client = client.clone();
                async move { client.explode(true).await }
            });
            let other = tokio::spawn({
                let client = client.clone();
                async move { client.wait(1).await }
            });
            until_waiting(&shop, 2).await;
            shop.gate.add_permits(2);
            let after = waiting.await.unwrap().unwrap_err();
            assert!(matches!(after, CallError::Panic { .. }), "{backend:?}: {after}");
            // The other call, pending beside it, completes.
            assert_eq!(other.await.unwrap().unwrap(), "1.0.0");
            assert_eq!(client.quick(21).await.unwrap(), 21);
            assert_eq!(pending(&shop.swapper), 0);
        });
    }
}

#[test]
fn async_methods_run_on_every_backend_and_a_waker_the_plugin_wakes_resumes_it() {
    let backends: &[Backend] = if cfg!(feature = "wasm") {
        &[Backend::Native, Backend::Static, Backend::Wasm]
    } else {
        &[Backend::Native, Backend::Static]
    };
    for &backend in backends {
        let shop = start(backend);
        let rt = runtime();
        let client = shop.swapper.client::<dyn Shop>().unwrap();
        rt.block_on(async {
            assert_eq!(client.quick(7).await.unwrap(), 7, "{backend:?}");
            // Synchronous methods beside them keep their path.
            assert_eq!(client.version().unwrap(), "1.0.0");
            assert_eq!(client.yield_once("y").await.unwrap(), "y 1.0.0");
            let (first, before, second) = client.visit(9).await.unwrap();
            assert_eq!(
                (first.as_str(), before, second.as_str()),
                ("1.0.0", 0, "1.0.0")
            );
            assert_eq!(client.visit(9).await.unwrap().1, 1);
        });
    }
}

/// A plugin whose future clones its waker in its first poll, and has another thread wake the
/// clone before that poll returns pending (as a plugin awaiting a channel fed by its own
/// thread may), is polled again: the wake is not lost between the plugin's clone and the
/// host's record of the task. Before `ASYNC_REGISTER` it was lost, and the call hung.
#[test]
fn a_waker_cloned_and_woken_from_another_thread_within_the_first_poll_is_not_lost() {
    let backends: &[Backend] = if cfg!(feature = "wasm") {
        &[Backend::Native, Backend::Static, Backend::Wasm]
    } else {
        &[Backend::Native, Backend::Static]
    };
    for &backend in backends {
        let shop = Arc::new(start(backend));
        // One worker thread, so nothing else polls the task by chance; a call whose wake was
        // lost never completes, so the calls run on a thread of their own, watched from here.
        let (done, finished) = std::sync::mpsc::channel();
        let calls = {
            let shop = shop.clone();
            std::thread::spawn(move || {
                let client = shop.swapper.client::<dyn Shop>().unwrap();
                one_thread().block_on(async {
                    for x in 0..200u64 {
                        assert_eq!(client.woken_early(x).await.unwrap(), x, "{backend:?}");
                        done.send(x).unwrap();
                    }
                })
            })
        };
        for x in 0..200u64 {
            let answered = finished.recv_timeout(Duration::from_secs(30));
            assert_eq!(answered, Ok(x), "{backend:?}: call {x} was never woken");
        }
        calls.join().unwrap();
        assert_eq!(pending(&shop.swapper), 0, "{backend:?}");
    }
}

#[test]
fn a_synchronous_caller_reaches_an_async_method_that_does_not_await() {
    let shop = start(Backend::Native);
    let client = shop.swapper.client::<dyn Shop>().unwrap();
    // Through the transport's synchronous call, as a transport that cannot await would.
    let quick: u64 = client.transport().call(3, &(5u64,)).unwrap();
    assert_eq!(quick, 5);
    // One that stays pending fails, and its future is dropped.
    let e = client
        .transport()
        .call::<_, String>(5, &("y",))
        .unwrap_err();
    assert!(
        matches!(&e, CallError::Guest { message, .. } if message.contains("called synchronously")),
        "{e}"
    );
    // A host service cannot be awaited outside an async call: the plugin is told why.
    let said: String = client.transport().call(1, &(1u32,)).unwrap();
    assert!(said.contains("awaited only from an async method"), "{said}");
    assert_eq!(shop.dropped("1.0.0"), 1, "its future was dropped");
}

#[test]
fn a_pinned_async_call_stays_in_the_pinned_generation() {
    let shop = start(Backend::Native);
    let rt = runtime();
    let pin = shop.swapper.pin();
    shop.swap_to(Fixture::ShopV2);
    rt.block_on(async {
        let pinned = pin.client::<dyn Shop>();
        let (first, _, second) = pinned.visit(1).await.unwrap();
        assert_eq!((first.as_str(), second.as_str()), ("1.0.0", "1.0.0"));
        let current = shop.swapper.client::<dyn Shop>().unwrap();
        assert_eq!(current.visit(2).await.unwrap().0, "2.0.0");
    });
}

#[test]
fn ten_thousand_concurrent_calls_across_a_hundred_swaps_never_mix_versions() {
    let shop = start(Backend::Native);
    let rt = runtime();
    let client = shop.swapper.client::<dyn Shop>().unwrap();
    let versions = [Fixture::ShopV2, Fixture::ShopV1];
    rt.block_on(async {
        let calls: Vec<_> = (0..10_000u64)
            .map(|user| {
                let client = client.clone();
                tokio::spawn(async move { client.visit(user).await })
            })
            .collect();
        for i in 0..100 {
            shop.swap_to(versions[i % 2]);
            tokio::task::yield_now().await;
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        for call in calls {
            let (first, before, second) = call.await.unwrap().expect("no call fails");
            assert_eq!(first, second, "one call, one version");
            assert_eq!(before, 0, "each user is visited once");
            *seen.entry(first).or_default() += 1;
        }
        assert_eq!(seen.values().sum::<usize>(), 10_000);
        assert_eq!(seen.len(), 2, "calls started on both versions: {seen:?}");
    });
    assert_eq!(pending(&shop.swapper), 0);
}

#[test]
fn a_canarys_async_calls_keep_their_version_and_are_timed_whole() {
    use swapkit::patch::WithKey;
    let shop = start(Backend::Native);
    let rt = runtime();
    shop.swapper
        .canary(Fixture::ShopV2.path())
        .percent(50.0)
        .manual()
        .start()
        .unwrap();
    let client = shop.swapper.client::<dyn Shop>().unwrap();
    rt.block_on(async {
        let calls: Vec<_> = (0..200u64)
            .map(|user| {
                let client = client.clone();
                tokio::spawn(WithKey::new(format!("user-{user}"), async move {
                    client.wait(1).await
                }))
            })
            .collect();
        until_waiting(&shop, 200).await;
        // Every call waits at least this long: its latency is the whole call.
        tokio::time::sleep(Duration::from_millis(40)).await;
        shop.gate.add_permits(200);
        let mut seen = HashMap::<String, usize>::new();
        for (user, call) in calls.into_iter().enumerate() {
            let version = call.await.unwrap().unwrap();
            // The version its key goes to, asked synchronously now.
            let expected =
                swapkit::patch::with_key(format!("user-{user}"), || client.version().unwrap());
            assert_eq!(version, expected, "user-{user}");
            *seen.entry(version).or_default() += 1;
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
    });
    let canary = shop.swapper.canary_status().unwrap();
    assert!(canary.canary.counts.calls >= 1);
    // Its slowest timed calls are the async ones, timed from first poll to end (the
    // synchronous `version` calls above take microseconds).
    let p99 = canary.canary.p99.expect("timed canary calls");
    assert!(p99 >= Duration::from_millis(40), "{p99:?}");
}

/// Each pending wasm call holds one instance of its plugin's pool: a guest whose futures never
/// complete holds no more than the pool, a call past it fails by the pool's policy, and the
/// pool is whole again once they are dropped.
#[cfg(feature = "wasm")]
#[test]
fn pending_wasm_calls_hold_their_instances_and_no_more_than_the_pool() {
    use swapkit::{Exhausted, WasmLimits};
    let limits = WasmLimits {
        pool_size: 2,
        when_exhausted: Exhausted::Fail,
        ..WasmLimits::default()
    };
    let shop = start_limited(Backend::Wasm, |b| b.wasm_limits(limits));
    let rt = runtime();
    let client = shop.swapper.client::<dyn Shop>().unwrap();
    rt.block_on(async {
        let held: Vec<_> = (0..2)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.wait(1).await })
            })
            .collect();
        until_waiting(&shop, 2).await;
        // Both instances hold a pending call: a third call finds none.
        let e = client.quick(1).await.unwrap_err();
        assert!(matches!(e, CallError::PoolExhausted { .. }), "{e}");
        let e = client.version().unwrap_err();
        assert!(matches!(e, CallError::PoolExhausted { .. }), "{e}");
        // Each pending future resumes in the instance it lives in.
        shop.gate.add_permits(1);
        let mut held = held.into_iter();
        let first = held.next().unwrap();
        let second = held.next().unwrap();
        let done = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if first.is_finished() || second.is_finished() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(done.is_ok(), "one call completed");
        assert_eq!(client.quick(3).await.unwrap(), 3, "an instance came back");
        // The other is dropped while pending: its instance comes back too.
        let (finished, waiting) = if first.is_finished() {
            (first, second)
        } else {
            (second, first)
        };
        assert_eq!(finished.await.unwrap().unwrap(), "1.0.0");
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(pending(&shop.swapper), 0);
        let both = tokio::join!(client.wait(1), client.wait(1), async {
            until_waiting(&shop, 2).await;
            shop.gate.add_permits(2);
        });
        assert_eq!(
            (both.0.unwrap(), both.1.unwrap()),
            ("1.0.0".into(), "1.0.0".into())
        );
    });
    assert_eq!(
        shop.dropped("1.0.0"),
        4,
        "every future dropped once, in its instance"
    );
}

/// A plugin awaiting an async method of its dependency reaches the dependency of its own
/// generation, however the generations change while it waits.
#[test]
fn an_async_dependency_call_stays_in_the_callers_generation() {
    let backends: &[Backend] = if cfg!(feature = "wasm") {
        &[Backend::Native, Backend::Wasm]
    } else {
        &[Backend::Native]
    };
    for &backend in backends {
        let shop = start_set(backend, &[Fixture::ShopV1, Fixture::ShopFront], |b| b);
        let rt = runtime();
        let front = shop.swapper.client::<dyn Storefront>().unwrap();
        rt.block_on(async {
            let before = tokio::spawn({
                let front = front.clone();
                async move { front.relay_wait(1).await }
            });
            until_waiting(&shop, 2).await; // front's call, and shop's below it
            shop.swapper
                .load_files([
                    Fixture::ShopV2.artifact(backend),
                    Fixture::ShopFront.artifact(backend),
                ])
                .unwrap();
            let after = tokio::spawn({
                let front = front.clone();
                async move { front.relay_wait(1).await }
            });
            until_waiting(&shop, 4).await;
            shop.gate.add_permits(2);
            let before = before.await.unwrap().unwrap();
            let after = after.await.unwrap().unwrap();
            assert_eq!(before.1, "1.0.0", "{backend:?}: {before:?}");
            assert_eq!(after.1, "2.0.0", "{backend:?}: {after:?}");
        });
        assert_eq!(pending(&shop.swapper), 0);
    }
}

/// A dependency's async method that fails reaches its caller with the interface and method
/// it called named, before and after an await.
#[test]
fn a_failing_async_dependency_call_names_its_interface_and_method() {
    let backends: &[Backend] = if cfg!(feature = "wasm") {
        &[Backend::Native, Backend::Wasm]
    } else {
        &[Backend::Native]
    };
    for &backend in backends {
        let shop = start_set(backend, &[Fixture::ShopV1, Fixture::ShopFront], |b| b);
        let front = shop.swapper.client::<dyn Storefront>().unwrap();
        shop.gate.add_permits(1);
        runtime().block_on(async {
            for after_await in [false, true] {
                let said = front.relay_explode(after_await).await.unwrap();
                assert!(said.contains("exploded in 1.0.0"), "{backend:?}: {said}");
                assert!(said.contains("Shop::explode"), "{backend:?}: {said}");
                assert!(!said.contains("dependency's interface"), "{said}");
                assert!(!said.contains("unknown method"), "{said}");
                assert!(!said.contains("host service"), "{said}");
            }
        });
        assert_eq!(pending(&shop.swapper), 0);
    }
}

/// A call that awaits more host futures at once than the host allows is refused there, and
/// the futures it started go with it.
#[test]
fn a_call_awaiting_too_many_host_futures_at_once_is_refused() {
    let backends: &[Backend] = if cfg!(feature = "wasm") {
        &[Backend::Native, Backend::Wasm]
    } else {
        &[Backend::Native]
    };
    for &backend in backends {
        let shop = start(backend);
        let rt = runtime();
        let client = shop.swapper.client::<dyn Shop>().unwrap();
        rt.block_on(async {
            let e = client.fan_out(300).await.unwrap().unwrap_err();
            assert!(e.contains("at most 256 host futures"), "{backend:?}: {e}");
            assert_eq!(pending(&shop.swapper), 0);
            // Within the bound, every one is awaited.
            let call = tokio::spawn({
                let client = client.clone();
                async move { client.fan_out(200).await }
            });
            until_waiting(&shop, 1).await;
            shop.gate.add_permits(200);
            assert_eq!(call.await.unwrap().unwrap(), Ok(200));
        });
    }
}

/// A wasm guest whose pending call awaits a host service that calls back into the same plugin
/// gets a clear error at once, never a wait for the instance its own call holds.
#[cfg(feature = "wasm")]
#[test]
fn a_guest_awaiting_a_call_into_its_own_pool_gets_an_error_not_a_deadlock() {
    use std::sync::OnceLock;
    use swapkit::{Exhausted, WasmLimits};
    let client_cell: Arc<OnceLock<fixture_api::ShopClient<swapkit::Binding>>> = Arc::default();
    let seen: Arc<Mutex<Option<String>>> = Arc::default();
    let vault = Vault::new();
    {
        let (client_cell, seen) = (client_cell.clone(), seen.clone());
        vault.provide_async("shop.wait", move |(_,): (u32,)| {
            let (client, seen) = (client_cell.get().cloned(), seen.clone());
            async move {
                let again = client.expect("the client is set").quick(1).await;
                *seen.lock().unwrap() = Some(match again {
                    Ok(v) => format!("answered {v}"),
                    Err(e) => e.to_string(),
                });
                0u32
            }
        });
    }
    vault.provide("shop.dropped", |(_,): (String,)| {});
    let limits = WasmLimits {
        pool_size: 1,
        when_exhausted: Exhausted::Wait(Duration::from_secs(60)),
        ..WasmLimits::default()
    };
    let swapper = start_configured(Backend::Wasm, &Logs::default(), &[Fixture::ShopV1], |b| {
        b.vault(vault)
            .sandbox(Sandbox::default().grant("shop", Grant::AllHostFns))
            .wasm_limits(limits)
    })
    .unwrap();
    let client = swapper.client::<dyn Shop>().unwrap();
    let _ = client_cell.set(client.clone());
    let rt = runtime();
    let started = std::time::Instant::now();
    let answer =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), client.wait(1)).await });
    assert!(answer.is_ok(), "the call did not deadlock");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it did not wait out the pool's 60 s either"
    );
    let said = seen.lock().unwrap().clone().unwrap();
    assert!(said.contains("already running on this thread"), "{said}");
    // The pool is whole again.
    assert_eq!(rt.block_on(client.quick(4)).unwrap(), 4);
}

/// A runtime of one thread: a call that blocked it would stall every task, the one that
/// would free its instance included.
fn one_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[cfg(feature = "wasm")]
#[test]
fn a_call_that_finds_the_pool_busy_waits_for_an_instance_without_blocking_its_thread() {
    use swapkit::{Exhausted, WasmLimits};
    let limits = WasmLimits {
        pool_size: 2,
        when_exhausted: Exhausted::Wait(Duration::from_secs(20)),
        ..WasmLimits::default()
    };
    let shop = start_limited(Backend::Wasm, |b| b.wasm_limits(limits));
    let client = shop.swapper.client::<dyn Shop>().unwrap();
    let rt = one_thread();
    let started = std::time::Instant::now();
    rt.block_on(async {
        let held: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn({
                    let client = client.clone();
                    async move { client.wait(1).await }
                })
            })
            .collect();
        until_waiting(&shop, 2).await;
        // Both instances hold a pending call: these wait, on this one thread, with the task
        // that will free an instance.
        let waiting: Vec<_> = (1..=3)
            .map(|x| {
                tokio::spawn({
                    let client = client.clone();
                    async move { client.quick(x).await }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(waiting.iter().all(|w| !w.is_finished()), "they wait");
        // One pending call completes: its instance serves the waiting calls in turn.
        shop.gate.add_permits(1);
        let mut answers = vec![];
        for w in waiting {
            answers.push(w.await.unwrap().unwrap());
        }
        assert_eq!(answers, [1, 2, 3]);
        shop.gate.add_permits(1);
        for h in held {
            assert_eq!(h.await.unwrap().unwrap(), "1.0.0");
        }
    });
    // Not the pool's 20 s wait: woken when an instance came free.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(pending(&shop.swapper), 0);
}

#[cfg(feature = "wasm")]
#[test]
fn a_call_that_waits_for_the_pool_longer_than_its_policy_fails_exhausted() {
    use swapkit::{Exhausted, WasmLimits};
    let limits = WasmLimits {
        pool_size: 1,
        when_exhausted: Exhausted::Wait(Duration::from_millis(200)),
        ..WasmLimits::default()
    };
    let shop = start_limited(Backend::Wasm, |b| b.wasm_limits(limits));
    let client = shop.swapper.client::<dyn Shop>().unwrap();
    let rt = one_thread();
    rt.block_on(async {
        let held = tokio::spawn({
            let client = client.clone();
            async move { client.wait(1).await }
        });
        until_waiting(&shop, 1).await;
        // Nothing frees the instance: the alarm polls the waiting call when its wait is over.
        let started = std::time::Instant::now();
        let e = client.quick(1).await.unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(matches!(e, CallError::PoolExhausted { .. }), "{e}");
        assert!(e.to_string().contains("pool_size"), "{e}");
        // A call dropped while it waits leaves nothing behind: the pool serves the next.
        let dropped = tokio::time::timeout(Duration::from_millis(20), client.quick(2)).await;
        assert!(dropped.is_err(), "it waited");
        shop.gate.add_permits(1);
        assert_eq!(held.await.unwrap().unwrap(), "1.0.0");
        assert_eq!(client.quick(5).await.unwrap(), 5);
    });
}

#[cfg(feature = "wasm")]
#[test]
fn a_wasm_call_awaiting_past_its_timeout_fails_and_its_future_is_dropped_in_the_plugin() {
    use swapkit::WasmLimits;
    let limits = WasmLimits {
        call_timeout: Duration::from_millis(300),
        ..WasmLimits::default()
    };
    let shop = start_limited(Backend::Wasm, |b| b.wasm_limits(limits));
    let client = shop.swapper.client::<dyn Shop>().unwrap();
    let rt = runtime();
    rt.block_on(async {
        // The gate never opens: each poll is short, the whole call is not.
        let started = std::time::Instant::now();
        let e = client.wait(1).await.unwrap_err();
        assert!(matches!(e, CallError::Timeout { .. }), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the alarm woke it"
        );
    });
    assert_eq!(shop.dropped("1.0.0"), 1, "its future dropped in the plugin");
    assert_eq!(pending(&shop.swapper), 0);
    assert_eq!(
        rt.block_on(client.quick(2)).unwrap(),
        2,
        "its instance came back"
    );
}

#[cfg(feature = "wasm")]
#[test]
fn a_wasm_future_that_never_yields_hits_its_deadline_and_the_pool_recovers() {
    use swapkit::WasmLimits;
    let limits = WasmLimits {
        call_timeout: Duration::from_secs(2),
        ..WasmLimits::default()
    };
    let shop = start_limited(Backend::Wasm, |b| b.wasm_limits(limits));
    let client = shop.swapper.client::<dyn Shop>().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let e = client.spin(false).await.unwrap_err();
        assert!(matches!(e, CallError::Timeout { .. }), "{e}");
        // After an await: the poll that spins gets what is left of the call's time, not a
        // whole timeout of its own.
        let gate = shop.gate.clone();
        let opener = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            gate.add_permits(1);
        });
        let started = std::time::Instant::now();
        let e = client.spin(true).await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(e, CallError::Timeout { .. }), "{e}");
        // 1.5 s awaiting, then what is left of the 2 s: a poll with a whole timeout of its
        // own would end after 3.5 s.
        assert!(took < Duration::from_secs(3), "{took:?}");
        opener.await.unwrap();
        assert_eq!(client.quick(7).await.unwrap(), 7);
    });
}

/// Counts on a task of its own, every millisecond, until it is dropped: how far it got says
/// whether the runtime's thread was free meanwhile.
fn ticker() -> (
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let task = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    (ticks, task)
}

#[cfg(feature = "wasm")]
#[test]
fn a_wasm_guest_computing_in_a_poll_yields_its_thread_and_still_times_out() {
    use std::sync::atomic::Ordering;
    use swapkit::WasmLimits;
    let limits = WasmLimits {
        call_timeout: Duration::from_millis(600),
        ..WasmLimits::default()
    };
    let shop = start_limited(Backend::Wasm, |b| b.wasm_limits(limits));
    let client = shop.swapper.client::<dyn Shop>().unwrap();
    // One thread: while the guest held it, nothing else would run.
    let rt = one_thread();
    rt.block_on(async {
        for after_await in [false, true] {
            if after_await {
                shop.gate.add_permits(1);
            }
            let (ticks, task) = ticker();
            tokio::task::yield_now().await;
            let started = std::time::Instant::now();
            let e = client.spin(after_await).await.unwrap_err();
            let took = started.elapsed();
            let ticked = ticks.load(Ordering::Relaxed);
            task.abort();
            assert!(matches!(e, CallError::Timeout { .. }), "{e}");
            assert!(took >= Duration::from_millis(600), "{took:?}");
            assert!(took < Duration::from_secs(5), "{took:?}");
            // A millisecond timer on a thread the guest gives back every 2 to 4 ms (it read
            // 71 rounds in 600 ms, the runtime looking at its timers between other tasks'
            // polls); a guest that held the thread would leave it none.
            assert!(
                ticked >= 10,
                "the other task ran {ticked} times in {took:?}: the guest held the thread"
            );
        }
        // The instance that was interrupted was thrown away; the pool makes another.
        assert_eq!(client.quick(3).await.unwrap(), 3);
    });
    assert_eq!(pending(&shop.swapper), 0);
}

/// A guest that wakes itself and then computes past an epoch tick within the same poll: the
/// poll that goes on with the step after the yield is not the one its wake asked for, and
/// the call is polled once more when the step ends pending, on one thread and on two.
#[cfg(feature = "wasm")]
#[test]
fn a_wake_during_a_step_that_yields_still_brings_another_poll() {
    use swapkit::WasmLimits;
    let limits = WasmLimits {
        call_timeout: Duration::from_secs(20),
        ..WasmLimits::default()
    };
    let shop = start_limited(Backend::Wasm, |b| b.wasm_limits(limits));
    let client = shop.swapper.client::<dyn Shop>().unwrap();
    // Rounds enough for several 2 ms ticks.
    let rounds = 30_000_000u64;
    let sum = (0..rounds).fold(0u64, |s, i| s.wrapping_add(i));
    for runtime in [one_thread(), runtime()] {
        runtime.block_on(async {
            for _ in 0..3 {
                // A task of its own: a timer in the same task would poll it again.
                let call = tokio::spawn({
                    let client = client.clone();
                    async move { client.wake_then_compute(rounds).await }
                });
                let Ok(answer) = tokio::time::timeout(Duration::from_secs(10), call).await else {
                    panic!("the call was never polled again after its step ended pending");
                };
                assert_eq!(answer.unwrap().unwrap(), sum);
            }
        });
    }
    assert_eq!(pending(&shop.swapper), 0);
}

#[cfg(feature = "wasm")]
#[test]
fn a_call_dropped_while_its_guest_computes_throws_the_instance_away_and_frees_its_place() {
    use swapkit::{Exhausted, WasmLimits};
    let limits = WasmLimits {
        pool_size: 1,
        call_timeout: Duration::from_secs(30),
        when_exhausted: Exhausted::Fail,
        ..WasmLimits::default()
    };
    let shop = start_limited(Backend::Wasm, |b| b.wasm_limits(limits));
    let client = shop.swapper.client::<dyn Shop>().unwrap();
    for runtime in [one_thread(), runtime()] {
        runtime.block_on(async {
            for after_await in [false, true] {
                if after_await {
                    shop.gate.add_permits(1);
                }
                let call = tokio::spawn({
                    let client = client.clone();
                    async move { client.spin(after_await).await }
                });
                // It computes, yielding at each slice, holds the pool's one instance, and is
                // named in the drain report (before it ever turned pending, too).
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert_eq!(pending(&shop.swapper), 1, "named while it computes");
                let busy = client.quick(1).await.unwrap_err();
                assert!(matches!(busy, CallError::PoolExhausted { .. }), "{busy}");
                call.abort();
                assert!(call.await.unwrap_err().is_cancelled());
                // Its place is free again: a new instance serves the next call.
                assert_eq!(client.quick(5).await.unwrap(), 5);
                assert_eq!(pending(&shop.swapper), 0, "nothing is left pending");
            }
        });
    }
    // The guest could not run its future's drop halfway through a step: its instance went
    // instead, without `on_free`. The instance serving now runs it once, with its generation.
    assert_eq!(shop.dropped("1.0.0"), 0);
    shop.swap_to(Fixture::ShopV2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while shop.freed("1.0.0") == 0 {
        assert!(std::time::Instant::now() < deadline, "v1 was never freed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(shop.freed("1.0.0"), 1);
}

#[cfg(feature = "wasm")]
#[test]
fn a_call_that_waited_for_an_instance_still_times_out_as_a_whole() {
    use swapkit::{Exhausted, WasmLimits};
    let limits = WasmLimits {
        pool_size: 1,
        call_timeout: Duration::from_secs(1),
        when_exhausted: Exhausted::Wait(Duration::from_millis(300)),
        ..WasmLimits::default()
    };
    let shop = start_limited(Backend::Wasm, |b| b.wasm_limits(limits));
    let client = shop.swapper.client::<dyn Shop>().unwrap();
    let rt = one_thread();
    rt.block_on(async {
        let first = tokio::spawn({
            let client = client.clone();
            async move { client.wait(1).await }
        });
        until_waiting(&shop, 1).await;
        let second = tokio::spawn({
            let client = client.clone();
            async move { client.wait(1).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The first completes; the second gets its instance, then waits at a gate that never
        // opens, after the alarm of its wait for the pool has rung: only its deadline's alarm
        // can end it now.
        shop.gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap(), "1.0.0");
        let second = tokio::time::timeout(Duration::from_secs(20), second).await;
        let e = second
            .expect("the deadline's alarm woke it")
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, CallError::Timeout { .. }), "{e}");
        assert_eq!(client.quick(3).await.unwrap(), 3);
    });
}
