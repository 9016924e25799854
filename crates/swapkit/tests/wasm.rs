//! The wasm backend's own promises: limits, traps, a bounded instance pool, the compile cache,
//! module checks, and generations that mix native and wasm plugins. The shared behaviour
//! (swaps, pins, hooks, dependencies) runs on wasm too, in `behaviour.rs`.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::wat::{relay, Wat};
use common::{tempdir, wasm_cache, Fixture, Logs};
use fixture_api::Greeter;

use swapkit::{BackendKind, CallError, Exhausted, LoadError, Swapper, WasmLimits};

fn swapper_with(limits: WasmLimits) -> Swapper {
    Swapper::builder()
        .wasm_cache_dir(wasm_cache())
        .wasm_limits(limits)
        .build()
        .expect("swapper")
}

fn hostile(limits: WasmLimits) -> (Swapper, fixture_api::GreeterClient<swapkit::Binding>) {
    let swapper = swapper_with(limits);
    swapper
        .load_files([Fixture::Hostile.wasm_path()])
        .expect("load hostile");
    let client = swapper.client::<dyn Greeter>().expect("client");
    (swapper, client)
}

/// The error names the plugin, its version and the method.
fn names_the_call(err: &CallError) {
    let site = err
        .site()
        .expect("a failure inside the plugin has a call site");
    assert_eq!((&*site.plugin, &*site.version), ("hostile", "6.6.6"));
    let text = err.to_string();
    for part in ["hostile", "6.6.6", "Greeter::fail"] {
        assert!(text.contains(part), "`{text}` does not name {part}");
    }
}

#[test]
fn an_infinite_loop_times_out_and_the_next_call_works() {
    let limit = Duration::from_millis(100);
    let (_swapper, greeter) = hostile(WasmLimits {
        call_timeout: limit,
        ..Default::default()
    });
    let start = Instant::now();
    let err = greeter.fail("loop").expect_err("a runaway loop");
    let took = start.elapsed();
    assert!(matches!(err, CallError::Timeout { .. }), "{err:?}");
    names_the_call(&err);
    println!("interrupted after {took:?} (limit {limit:?})");
    assert_eq!(greeter.greet("again").unwrap(), "hostile again");
    // A slot sets its deadline again only when the epoch moved since it last did: after many
    // quick calls on one slot, a runaway still gets its whole budget (less the tick of
    // slack), and no more.
    for i in 0..1_000 {
        assert_eq!(
            greeter.greet(&i.to_string()).unwrap(),
            format!("hostile {i}")
        );
    }
    let start = Instant::now();
    let err = greeter.fail("loop").expect_err("a runaway loop");
    let took = start.elapsed();
    assert!(matches!(err, CallError::Timeout { .. }), "{err:?}");
    assert!(
        took >= limit - Duration::from_millis(5),
        "cut short: {took:?}"
    );
    assert_eq!(greeter.greet("again").unwrap(), "hostile again");
}

#[test]
fn a_memory_bomb_hits_the_cap_and_the_next_call_works() {
    let (_swapper, greeter) = hostile(WasmLimits {
        max_memory: 16 << 20,
        ..Default::default()
    });
    let err = greeter.fail("bomb").expect_err("memory bomb");
    match &err {
        CallError::ResourceLimit { message, .. } => {
            assert!(message.contains("past the limit"), "{message}")
        }
        other => panic!("expected ResourceLimit, got {other:?}"),
    }
    names_the_call(&err);
    assert_eq!(greeter.fail("fine").unwrap(), 4);
}

#[test]
fn every_trap_kind_is_an_error_and_the_host_keeps_serving() {
    let (_swapper, greeter) = hostile(WasmLimits::default());
    for (what, expect) in [
        ("unreachable", "unreachable"),
        ("oob", "out of bounds"),
        ("overflow", "call stack exhausted"),
    ] {
        let err = greeter.fail(what).expect_err(what);
        match &err {
            CallError::Trap { message, .. } => {
                assert!(message.contains(expect), "{what}: {message}")
            }
            other => panic!("{what}: expected a trap, got {other:?}"),
        }
        names_the_call(&err);
        assert_eq!(greeter.greet("after").unwrap(), "hostile after", "{what}");
    }
    // Rust checks integer division, so a division by zero in Rust is a panic (reported with
    // its message); the raw wasm instruction trapping is tested with a hand-written module.
    let err = greeter.fail("div:0").expect_err("divide by zero");
    match &err {
        CallError::Panic { message, .. } => {
            assert!(message.contains("divide by zero"), "{message}")
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_eq!(greeter.fail("div:5").unwrap(), 20);
}

#[test]
fn a_wasm_division_by_zero_traps() {
    let dir = tempdir();
    let swapper = load_handmade(&dir, "", &[("swapkit_call", Some(DIV_BY_LEN))]);
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    // `version` takes no arguments, so the module divides by a length of 0.
    let err = greeter.version().expect_err("trap");
    match &err {
        CallError::Trap { message, site } => {
            assert!(message.contains("divide by zero"), "{message}");
            assert_eq!(&*site.plugin, "handmade-wasm");
            assert_eq!(site.method(), "Greeter::version");
            assert!(err.is_trap());
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

/// Loads a handmade module (see [`handmade_with`]) as the only plugin.
fn load_handmade(
    dir: &tempfile::TempDir,
    imports: &str,
    edits: &[(&str, Option<&str>)],
) -> Swapper {
    let path = dir.path().join("handmade.wasm");
    std::fs::write(&path, handmade_with(imports, edits)).unwrap();
    let swapper = swapper_with(WasmLimits::default());
    swapper
        .load_files([&path])
        .expect("a hand-made module loads");
    swapper
}

#[test]
fn large_arguments_and_results_grow_linear_memory_and_round_trip() {
    let swapper = swapper_with(WasmLimits::default());
    swapper
        .load_files([Fixture::GreeterV1.wasm_path()])
        .unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    assert_eq!(greeter.score(1, "ab").unwrap(), 3);
    // Megabytes each way: the guest grows its memory for the arguments, then for the result,
    // so both lie past the memory the instance started with.
    for size in [3 << 20, 5 << 20] {
        let name = "x".repeat(size);
        let greeting = greeter.greet(&name).unwrap();
        assert_eq!(greeting, format!("hello, {name} (v1)"));
        assert_eq!(greeter.score(size as u64, "ab").unwrap(), size as u64 + 2);
    }
}

#[test]
fn a_result_written_to_memory_the_call_grew_is_read() {
    let dir = tempdir();
    // Grows memory by one page, then puts the result (the varint 42) at the start of it.
    let grow = "(drop (memory.grow (i32.const 1))) \
                (i32.store8 (i32.const 65536) (i32.const 42)) \
                (i32.store (i32.const 16) (i32.const 65536)) \
                (i32.store (i32.const 20) (i32.const 1)) (i32.const 0)";
    let swapper = load_handmade(&dir, "", &[("swapkit_call", Some(grow))]);
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    for _ in 0..3 {
        assert_eq!(greeter.score(1, "ab").unwrap(), 42);
    }
}

#[test]
fn a_result_or_input_buffer_outside_linear_memory_is_a_trap_not_a_read() {
    let dir = tempdir();
    // One page of memory: 65,536 bytes.
    let cases = [
        (
            "swapkit_call",
            "(i32.store (i32.const 16) (i32.const 65532)) \
             (i32.store (i32.const 20) (i32.const 8)) (i32.const 0)",
            "the result lies outside linear memory",
        ),
        (
            "swapkit_call",
            "(i32.store (i32.const 16) (i32.const -16)) \
             (i32.store (i32.const 20) (i32.const 64)) (i32.const 0)",
            "the result lies outside linear memory",
        ),
        (
            "swapkit_input",
            "(i32.const 65534)",
            "the input buffer lies outside linear memory",
        ),
    ];
    for (export, body, expect) in cases {
        let swapper = load_handmade(&dir, "", &[(export, Some(body))]);
        let greeter = swapper.client::<dyn Greeter>().unwrap();
        for _ in 0..2 {
            // The instance is thrown away each time; a new one fails the same way.
            match greeter.score(7, "abc") {
                Err(CallError::Trap { message, .. }) => assert_eq!(message, expect),
                other => panic!("{export}: expected a trap, got {other:?}"),
            }
        }
        let counts = swapper.status().current.plugins[0].counts;
        assert_eq!((counts.calls, counts.traps), (2, 2), "{export}");
    }
}

#[test]
fn bad_service_requests_fail_the_call_and_the_host_keeps_serving() {
    let dir = tempdir();
    let imports = r#"(import "swapkit" "service" (func $service (param i32 i32 i32) (result i64)))
        (import "swapkit" "reply" (func $reply (param i32)))"#;
    let get = swapkit::abi::service::VAULT_GET;
    // The host writes the arguments, `score(7, "abc")`, to the input buffer at 4096.
    let cases = [
        (relay(999, 4096, 0, 2048), "unknown host service 999"),
        (
            relay(get, 70_000, 4, 2048),
            "the request lies outside linear memory",
        ),
        (
            relay(get, 4096, 5, 2048),
            "the service request did not decode",
        ),
        (
            relay(999, 4096, 0, 65_530),
            "the reply buffer lies outside linear memory",
        ),
    ];
    for (body, expect) in cases {
        let swapper = load_handmade(&dir, imports, &[("swapkit_call", Some(&body))]);
        let greeter = swapper.client::<dyn Greeter>().unwrap();
        for _ in 0..2 {
            let err = greeter.score(7, "abc").expect_err(expect);
            assert!(err.to_string().contains(expect), "{expect}: {err}");
        }
        assert_eq!(swapper.status().current.plugins[0].counts.calls, 2);
    }
}

#[test]
fn a_saved_state_that_does_not_decode_fails_the_reload_and_the_old_version_keeps_serving() {
    let dir = tempdir();
    // Every call, `save` included, answers the single byte 7: the varint 7 to `score`, and an
    // `Option` tag that does not exist to the host decoding the saved state.
    let seven = "(i32.store8 (i32.const 3000) (i32.const 7)) \
                 (i32.store (i32.const 16) (i32.const 3000)) \
                 (i32.store (i32.const 20) (i32.const 1)) (i32.const 0)";
    let swapper = load_handmade(&dir, "", &[("swapkit_call", Some(seven))]);
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    assert_eq!(greeter.score(1, "a").unwrap(), 7);

    let next = dir.path().join("next.wasm");
    std::fs::write(&next, handmade("(i32.const 0)", "")).unwrap();
    let err = swapper
        .load_files([&next])
        .expect_err("an undecodable saved state");
    let text = err.to_string();
    assert!(text.contains("the saved state did not decode"), "{text}");
    assert!(text.contains("save"), "{text}");
    assert_eq!(swapper.generation(), 1);
    assert_eq!(greeter.score(1, "a").unwrap(), 7);
}

#[test]
fn a_result_slot_outside_linear_memory_is_refused_at_load() {
    let dir = tempdir();
    let path = dir.path().join("slot.wasm");
    let edit = [("swapkit_out_slot", Some("(i32.const 65532)"))];
    std::fs::write(&path, handmade_with("", &edit)).unwrap();
    let swapper = swapper_with(WasmLimits::default());
    let err = swapper.load_files([&path]).expect_err("a slot past memory");
    assert!(
        err.to_string()
            .contains("the result slot lies outside linear memory"),
        "{err}"
    );
    assert_eq!(swapper.generation(), 0);
}

#[test]
fn two_threads_share_one_plugin_through_the_pool() {
    let swapper = swapper_with(WasmLimits {
        pool_size: 2,
        ..Default::default()
    });
    swapper
        .load_files([Fixture::GreeterV1.wasm_path()])
        .unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    let start = Arc::new(Barrier::new(3));
    let workers: Vec<_> = (0..3)
        .map(|t| {
            let (greeter, start) = (greeter.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for i in 0..2_000u64 {
                    assert_eq!(greeter.score(i, "ab").unwrap(), i + 2, "thread {t}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("no failed call");
    }
}

#[test]
fn an_exhausted_pool_fails_or_waits_as_configured() {
    for policy in [Exhausted::Fail, Exhausted::Wait(Duration::from_secs(10))] {
        let (_swapper, greeter) = hostile(WasmLimits {
            pool_size: 1,
            when_exhausted: policy,
            call_timeout: Duration::from_secs(60),
            ..Default::default()
        });
        let busy = Arc::new(Barrier::new(2));
        let holder = {
            let (greeter, busy) = (greeter.clone(), busy.clone());
            std::thread::spawn(move || {
                busy.wait();
                greeter.fail("spin:5000")
            })
        };
        busy.wait();
        std::thread::sleep(Duration::from_millis(50));
        let second = greeter.greet("second");
        match policy {
            Exhausted::Fail => {
                let err = second.expect_err("the only instance is busy");
                assert!(matches!(err, CallError::PoolExhausted { .. }), "{err:?}");
                assert!(err.to_string().contains("pool_size"), "{err}");
            }
            Exhausted::Wait(_) => assert_eq!(second.unwrap(), "hostile second"),
        }
        holder.join().unwrap().expect("the long call finishes");
    }
}

/// A thread keeps its wasm instance between calls, so its next call finds it with no atomic
/// read-modify-write; the instance still belongs to the pool. With one instance and the `Fail`
/// policy, another thread's call takes it back from a thread that is alive but not calling,
/// or that exited, instead of failing as exhausted; the first thread then shares it.
#[test]
fn a_kept_instance_serves_other_threads_when_its_thread_is_idle_or_gone() {
    let swapper = swapper_with(WasmLimits {
        pool_size: 1,
        when_exhausted: Exhausted::Fail,
        ..Default::default()
    });
    swapper
        .load_files([Fixture::GreeterV1.wasm_path()])
        .unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    let (kept, taken) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let keeper = {
        let (greeter, kept, taken) = (greeter.clone(), kept.clone(), taken.clone());
        std::thread::spawn(move || {
            for i in 0..10u64 {
                assert_eq!(greeter.score(i, "a").unwrap(), i + 1);
            }
            kept.wait();
            taken.wait();
            // Its instance was taken back: it finds it again through the pool.
            (0..10u64).all(|i| greeter.score(i, "a").unwrap() == i + 1)
        })
    };
    kept.wait();
    for i in 0..100u64 {
        assert_eq!(greeter.score(i, "ab").unwrap(), i + 2, "call {i}");
    }
    taken.wait();
    assert!(keeper.join().unwrap());
    // A thread that keeps the instance and exits: the next caller gets it back.
    let greeter2 = greeter.clone();
    std::thread::spawn(move || greeter2.score(5, "abc").unwrap())
        .join()
        .unwrap();
    assert_eq!(greeter.score(5, "abc").unwrap(), 8);
}

#[test]
fn the_compile_cache_survives_a_restart_and_a_corrupt_entry_recompiles() {
    let cache = tempdir();
    let module = Fixture::GreeterV2.wasm_path();
    let start = |expect_compiles: usize, why: &str| {
        let swapper = Swapper::builder()
            .wasm_cache_dir(cache.path())
            .build()
            .unwrap();
        swapper.load_files([&module]).expect(why);
        let greeter = swapper.client::<dyn Greeter>().unwrap();
        assert!(greeter.greet("c").unwrap().contains("v2"), "{why}");
        assert_eq!(swapper.wasm_compiles(), expect_compiles, "{why}");
    };
    start(1, "cold: compiled and cached");
    start(0, "a restart reads the cache");

    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    // Flip bytes in the compiled code: the checksum no longer matches.
    let mut bytes = std::fs::read(entry).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xA5;
    }
    std::fs::write(entry, &bytes).unwrap();
    start(1, "a corrupt entry is recompiled");
    start(0, "and rewritten");

    // Truncated to nothing but garbage.
    std::fs::write(entry, b"garbage").unwrap();
    start(1, "a garbage entry is recompiled");
}

#[test]
fn a_corrupt_module_is_refused_and_the_current_generation_keeps_serving() {
    let dir = tempdir();
    let good = Fixture::GreeterV1.wasm_path();
    let swapper = swapper_with(WasmLimits::default());
    swapper.load_files([&good]).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();

    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.wasm");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = swapper.load_files([&truncated]).expect_err("truncated");
    assert!(matches!(err, LoadError::WasmCompile { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated.wasm"), "{err}");

    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x01\0\0\0garbage").unwrap();
    let err = swapper.load_files([&garbage]).expect_err("garbage");
    assert!(matches!(err, LoadError::WasmCompile { .. }), "{err:?}");

    assert_eq!(greeter.greet("still").unwrap(), "hello, still (v1)");
    assert_eq!(swapper.generation(), 1);
}

#[test]
fn a_module_that_is_not_a_plugin_is_refused_with_the_reason() {
    let dir = tempdir();
    let swapper = swapper_with(WasmLimits::default());
    let cases = [
        (
            "missing-export.wasm",
            handmade_without("swapkit_call"),
            "does not export `swapkit_call`",
        ),
        (
            "extra-import.wasm",
            handmade("(i32.const 0)", r#"(import "env" "abort" (func $abort))"#),
            "imports `env.abort`",
        ),
    ];
    for (name, bytes, expect) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = swapper.load_files([&path]).expect_err(name);
        assert!(
            matches!(err, LoadError::WasmShape { .. }),
            "{name}: {err:?}"
        );
        assert!(err.to_string().contains(expect), "{name}: {err}");
    }
}

#[test]
fn one_generation_mixes_backends_and_a_reload_moves_a_plugin_between_them() {
    let logs = Logs::default();
    let swapper = logs.builder().wasm_cache_dir(wasm_cache()).build().unwrap();
    // greeter natively, the probe chain in wasm.
    swapper
        .load_files([Fixture::GreeterV1.path(), Fixture::ChainBase.wasm_path()])
        .unwrap();
    let backends = |s: &Swapper| -> Vec<(String, BackendKind)> {
        let mut v: Vec<_> = s
            .status()
            .current
            .plugins
            .iter()
            .map(|p| (p.name.clone(), p.backend))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(
        backends(&swapper),
        [
            ("chain-base".to_owned(), BackendKind::Wasm),
            ("greeter".to_owned(), BackendKind::Native)
        ]
    );
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    let probe = swapper.client::<dyn fixture_api::Probe>().unwrap();
    assert_eq!(probe.name().unwrap(), "chain-base");
    assert_eq!(greeter.greet("n").unwrap(), "hello, n (v1)");

    // Move the greeter to wasm: the same source, another build target.
    swapper
        .load_files([
            Fixture::GreeterV1.wasm_path(),
            Fixture::ChainBase.wasm_path(),
        ])
        .unwrap();
    assert_eq!(
        backends(&swapper)[1],
        ("greeter".to_owned(), BackendKind::Wasm)
    );
    assert_eq!(greeter.greet("w").unwrap(), "hello, w (v1)");
    // And back.
    swapper.rollback().unwrap();
    assert_eq!(
        backends(&swapper)[1],
        ("greeter".to_owned(), BackendKind::Native)
    );
    assert_eq!(greeter.greet("n").unwrap(), "hello, n (v1)");
    assert_eq!(logs.count("greeter", "1.0.0", "on_load"), 3);
}

// ---- hand-written modules that follow (or break) the ABI ----

const DIV_BY_LEN: &str = "(drop (i32.div_u (i32.const 1) (local.get 2))) (i32.const 0)";

/// A module that speaks ABI v1 by hand: its manifest declares the Greeter interface, and
/// `swapkit_call` runs `call_body`.
fn handmade(call_body: &str, imports: &str) -> Vec<u8> {
    handmade_with(imports, &[("swapkit_call", Some(call_body))])
}

fn handmade_without(export: &str) -> Vec<u8> {
    handmade_with("", &[(export, None)])
}

/// The handmade module with some entry points' bodies replaced (`Some`) or left out (`None`).
fn handmade_with(imports: &str, edits: &[(&str, Option<&str>)]) -> Vec<u8> {
    edits
        .iter()
        .fold(
            Wat::plugin("handmade-wasm")
                .imports(imports)
                .raw_lifecycle(),
            |wat, (entry, body)| match body {
                Some(body) => wat.body(entry, *body),
                None => wat.without(entry),
            },
        )
        .bytes()
}
