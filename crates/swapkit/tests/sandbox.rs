//! The sandbox's threat model, one attack per test: what a hostile wasm plugin tries against
//! its host, written as an attacker would (hand-made modules in the wasm text format, see
//! `common/wat.rs`), and what stops it. Every test checks that the host stays up, that the
//! host's other plugins and state are untouched, and that the error says what stopped it.
//!
//! A wasm plugin may: compute within its CPU-time, memory and stack limits; log within a rate;
//! read and write its own part of the Vault (`<plugin>/`) within a quota; call the host
//! functions and the Vault prefixes the host granted it; call the plugins it declared, with the
//! interfaces it declared, nested a few deep. It may not: crash or hang the host, grow the host
//! without bound, reach another plugin's or the host's state, call what it did not declare or
//! was not granted, or re-enter itself through the host. See the README's "Threat model".
//!
//! The limits of one call (time, memory, stack, traps) are tested in `wasm.rs`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::wat::{Wat, IS_LIVE, REPLY, REQUEST};
use common::{start, start_with, tempdir, wasm_cache, Backend, Fixture, Logs};
use fixture_api::{Counter, Greeter};
use swapkit::abi::service::{self, DependencyCall, Invoke, Key, Put};
use swapkit::abi::{wire, Interface, LiveData, Status};
use swapkit::{CallError, Grant, LoadError, Quota, Sandbox, Swapper, WasmLimits};

const GREETER: u64 = <dyn Greeter as Interface>::HASH;
/// `Greeter::version`, which takes no argument and returns a `String`.
const VERSION: u32 = 1;

fn swapper(sandbox: Sandbox, limits: WasmLimits) -> Swapper {
    Swapper::builder()
        .wasm_cache_dir(wasm_cache())
        .wasm_limits(limits)
        .sandbox(sandbox)
        .build()
        .expect("swapper")
}

/// A swapper serving the real greeter fixture, which every attack must leave answering.
fn bystander(sandbox: Sandbox, limits: WasmLimits) -> Swapper {
    let swapper = swapper(sandbox, limits);
    swapper
        .load_files([Fixture::GreeterV1.wasm_path()])
        .expect("the greeter loads");
    swapper
}

/// Loads `attack` beside the bystander greeter, and the greeter's client.
fn with_greeter(swapper: &Swapper, attack: &[std::path::PathBuf]) -> Result<(), LoadError> {
    let mut files = vec![Fixture::GreeterV1.wasm_path()];
    files.extend(attack.iter().cloned());
    swapper.load_files(files).map(drop)
}

/// The greeter still answers.
fn greeter_answers(swapper: &Swapper) {
    let greeter = swapper
        .client_of::<dyn Greeter>("greeter")
        .expect("the greeter is loaded");
    assert_eq!(greeter.greet("still").unwrap(), "hello, still (v1)");
}

/// Runs `f` on a thread with a 2 MiB stack: a tokio worker's, and Rust's default.
fn on_small_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn_scoped(s, f)
            .unwrap()
            .join()
            .expect("the host thread survives")
    })
}

/// The message of a call the plugin answered with a refusal from the host.
fn refusal<T: std::fmt::Debug>(result: Result<T, CallError>) -> String {
    match result {
        Err(CallError::Guest {
            status: Status::ServiceFailed,
            message,
            ..
        }) => message,
        other => panic!("expected the host to refuse the request, got {other:?}"),
    }
}

fn encode<T: serde::Serialize>(request: &T) -> Vec<u8> {
    wire::to_vec(request).unwrap()
}

fn dependency_call(plugin: &str, hash: u64) -> Vec<u8> {
    encode(&DependencyCall {
        plugin: plugin.into(),
        interface: <dyn Greeter as Interface>::NAME.into(),
        hash,
        method: VERSION,
        args: vec![],
    })
}

/// A plugin whose `version` answers `text` (the encoded `String` is kept at 3000).
fn answering(name: &str, text: &str) -> Wat {
    let answer = encode(&text.to_owned());
    Wat::plugin(name).data(3000, &answer).body(
        "swapkit_call",
        format!(
            "(i32.store (i32.const 16) (i32.const 3000)) \
             (i32.store (i32.const 20) (i32.const {})) (i32.const 0)",
            answer.len()
        ),
    )
}

// --- Crashing the host through nested calls --------------------------------------------------

/// The crash that was found: a guest recursed deep, then called its own live-type factory
/// through the host, which ran it in another instance of the pool on top of the same native
/// stack, which did the same... With a pool of 8 on a 2 MiB thread the process died of a stack
/// overflow. Now the host refuses to re-enter a running plugin.
#[test]
fn re_entering_itself_through_its_own_live_factory_is_refused() {
    let request = encode(&Invoke {
        name: "Loop".into(),
        args: vec![],
    });
    let dir = tempdir();
    // Recurse 4,000 frames, then ask the host for a `Loop`, whose factory does the same.
    let attack = Wat::plugin("recurser")
        .depends_on("greeter", GREETER)
        .live_type("Loop")
        .data(REQUEST, &request)
        .extra(&relay_fn())
        .extra(&format!(
            "(func $deep (param i32) (result i32) \
               (if (result i32) (i32.eqz (local.get 0)) \
                 (then {}) \
                 (else (i32.add (call $deep (i32.sub (local.get 0) (i32.const 1))) (i32.const 0)))))",
            relay_expr(service::LIVE_NEW, REQUEST, request.len() as u32)
        ))
        .body("swapkit_init", "(call $deep (i32.const 4000))")
        .body(
            "swapkit_call",
            format!("(if (result i32) {IS_LIVE} (then (call $deep (i32.const 4000))) (else (i32.const 0)))"),
        )
        .write_to(dir.path());
    let limits = WasmLimits {
        pool_size: 8,
        ..Default::default()
    };
    on_small_thread(|| {
        let swapper = bystander(Sandbox::new(), limits);
        let err = with_greeter(&swapper, &[attack]).expect_err("the re-entry is refused");
        let text = err.to_string();
        assert!(
            matches!(
                &err,
                LoadError::Hook {
                    hook: "on_init",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(text.contains("may not re-enter itself"), "{text}");
        assert_eq!(swapper.generation(), 1, "the reload was aborted");
        greeter_answers(&swapper);
    });
}

/// A host service call as an expression, through [`relay_fn`]: the service's status, with the
/// reply copied to [`REPLY`] as the call's result.
fn relay_expr(op: u32, at: u32, len: u32) -> String {
    format!("(call $relay (i32.const {op}) (i32.const {at}) (i32.const {len}))")
}

/// The `$relay` function [`relay_expr`] calls.
fn relay_fn() -> String {
    format!(
        "(func $relay (param i32 i32 i32) (result i32) (local $r i64) \
         (local.set $r (call $service (local.get 0) (local.get 1) (local.get 2))) \
         (call $reply (i32.const {REPLY})) \
         (i32.store (i32.const 16) (i32.const {REPLY})) \
         (i32.store (i32.const 20) (i32.wrap_i64 (local.get $r))) \
         (i32.wrap_i64 (i64.shr_u (local.get $r) (i64.const 32))))"
    )
}

/// Plugins `link0` .. `link{n-1}`, each calling the next's `version` after recursing `frames`
/// deep; the last answers "end".
fn chain(dir: &std::path::Path, n: usize, frames: u32) -> Vec<std::path::PathBuf> {
    (0..n)
        .map(|i| {
            let name = format!("link{i}");
            if i == n - 1 {
                return answering(&name, "end").write_to(dir);
            }
            link(&name, &format!("link{}", i + 1), frames).write_to(dir)
        })
        .collect()
}

/// Plugin `name`, which calls `next`'s `version` after recursing `frames` deep.
fn link(name: &str, next: &str, frames: u32) -> Wat {
    let request = dependency_call(next, GREETER);
    Wat::plugin(name)
        .depends_on(next, GREETER)
        .data(REQUEST, &request)
        .extra(&relay_fn())
        .extra(&deep(&relay_expr(
            service::DEPENDENCY,
            REQUEST,
            request.len() as u32,
        )))
        .body("swapkit_call", format!("(call $deep (i32.const {frames}))"))
}

/// `$deep(n)`: recurses `n` frames, then runs `then`.
fn deep(then: &str) -> String {
    format!(
        "(func $deep (param i32) (result i32) \
           (if (result i32) (i32.eqz (local.get 0)) \
             (then {then}) \
             (else (i32.add (call $deep (i32.sub (local.get 0) (i32.const 1))) (i32.const 0)))))"
    )
}

/// A chain of plugins calling each other is cut at `Sandbox::max_nesting`: every guest in it
/// traps, and the host's call fails naming the limit. The next call works.
#[test]
fn a_chain_of_calls_deeper_than_max_nesting_is_stopped() {
    let dir = tempdir();
    let links = chain(dir.path(), 6, 1);
    let swapper = bystander(Sandbox::new().max_nesting(3), WasmLimits::default());
    with_greeter(&swapper, &links).unwrap();
    let head = swapper.client_of::<dyn Greeter>("link0").unwrap();
    for _ in 0..2 {
        match head.version() {
            Err(CallError::Nesting { site, message }) => {
                assert_eq!(&*site.plugin, "link0");
                assert!(
                    message.contains("4 deep") && message.contains("past the limit of 3"),
                    "{message}"
                );
                assert!(message.contains("Sandbox::max_nesting"), "{message}");
            }
            other => panic!("expected the nesting limit, got {other:?}"),
        }
    }
    greeter_answers(&swapper);
    // Within the limit, the same chain answers from its far end.
    let swapper = bystander(Sandbox::new().max_nesting(5), WasmLimits::default());
    with_greeter(&swapper, &links).unwrap();
    let head = swapper.client_of::<dyn Greeter>("link0").unwrap();
    assert_eq!(head.version().unwrap(), "end");
}

/// How many frames of `$deep` fit in the wasm stack: the largest count that does not trap.
fn frames_that_fit(dir: &std::path::Path) -> u32 {
    let swapper = swapper(Sandbox::new(), WasmLimits::default());
    let (mut fits, mut traps) = (1u32, 1u32 << 22);
    while traps - fits > fits / 64 {
        let mid = fits + (traps - fits) / 2;
        let probe = Wat::plugin("probe")
            .extra(&deep("(i32.const 0)"))
            .body(
                "swapkit_call",
                format!("(drop (call $deep (i32.const {mid}))) (i32.const 0)"),
            )
            .write_to(dir);
        swapper.load_files([probe]).unwrap();
        match swapper.client::<dyn Greeter>().unwrap().fail("") {
            Err(CallError::Trap { message, .. }) if message.contains("call stack exhausted") => {
                traps = mid
            }
            _ => fits = mid,
        }
    }
    fits
}

/// Each guest may use `WasmLimits::max_stack` of stack, counted afresh each time the host
/// enters one, so a chain of guests that each use most of it would overflow the native stack,
/// whatever the nesting limit. The host checks what is left before it enters the next guest.
#[test]
fn a_chain_that_would_overflow_the_native_stack_is_stopped() {
    let dir = tempdir();
    let frames = frames_that_fit(dir.path()) * 85 / 100;
    println!("{frames} frames use 85% of the wasm stack");
    let links = chain(dir.path(), 8, frames);
    on_small_thread(|| {
        let limits = WasmLimits {
            pool_size: 8,
            ..Default::default()
        };
        let swapper = bystander(Sandbox::new().max_nesting(64), limits);
        with_greeter(&swapper, &links).unwrap();
        let head = swapper.client_of::<dyn Greeter>("link0").unwrap();
        match head.version() {
            Err(CallError::Nesting { message, .. }) => {
                assert!(message.contains("KiB of native stack left"), "{message}");
            }
            other => panic!("expected the stack check to stop the chain, got {other:?}"),
        }
        greeter_answers(&swapper);
    });
}

/// What the head of a chain exports when its call is async: its step runs on a fiber.
#[swapkit::interface]
trait AsyncHead {
    async fn version(&self) -> String;
}

/// The same chain, entered through an async method: the head's step runs on a fiber, not on
/// the thread's stack, and the host measures what is left of the fiber's stack before each
/// nested guest (the thread's stack bounds say nothing there) and stops the chain with a
/// message about the fiber.
#[test]
fn a_chain_that_would_overflow_an_async_steps_fiber_is_stopped() {
    let dir = tempdir();
    let frames = frames_that_fit(dir.path()) * 85 / 100;
    let mut links = chain(dir.path(), 9, frames);
    // The head again, exporting the async interface: its body is the same relay.
    links[0] = link("link0", "link1", frames)
        .exports(swapkit::abi::InterfaceDecl::of::<dyn AsyncHead>())
        .write_to(dir.path());
    let limits = WasmLimits {
        pool_size: 8,
        ..Default::default()
    };
    let swapper = bystander(Sandbox::new().max_nesting(64), limits);
    with_greeter(&swapper, &links).unwrap();
    let head = swapper.client_of::<dyn AsyncHead>("link0").unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    match runtime.block_on(head.version()) {
        Err(CallError::Nesting { message, .. }) => {
            assert!(
                message.contains("KiB of native stack left on the fiber"),
                "{message}"
            );
        }
        other => panic!("expected the stack check to stop the chain, got {other:?}"),
    }
    greeter_answers(&swapper);
}

// --- Reaching what it did not declare ---------------------------------------------------------

/// A dependency call carries the interface hash the caller was built with; the host checks it
/// against what the caller declared, not only the plugin's name.
#[test]
fn a_dependency_call_with_an_undeclared_interface_is_refused() {
    let dir = tempdir();
    let target = answering("target", "secret").write_to(dir.path());
    let request = dependency_call("target", GREETER ^ 1);
    let caller = Wat::plugin("caller")
        .depends_on("target", GREETER)
        .relays("swapkit_call", service::DEPENDENCY, &request)
        .write_to(dir.path());
    let swapper = bystander(Sandbox::new(), WasmLimits::default());
    with_greeter(&swapper, &[target, caller]).unwrap();
    let caller = swapper.client_of::<dyn Greeter>("caller").unwrap();
    let message = refusal(caller.version());
    assert!(
        message.contains("which its manifest does not declare"),
        "{message}"
    );
    greeter_answers(&swapper);
}

/// A plugin that declares no dependency reached another plugin's live type through the host in
/// its `on_init`. Live types are now reachable only in the plugins the caller declares.
#[test]
fn a_live_type_of_an_undeclared_plugin_is_out_of_reach() {
    let dir = tempdir();
    let owner = answering("owner", "owner")
        .live_type("Counter")
        .write_to(dir.path());
    let request = encode(&Invoke {
        name: "Counter".into(),
        args: vec![],
    });
    let thief = Wat::plugin("thief")
        .depends_on("greeter", GREETER)
        .relays("swapkit_init", service::LIVE_NEW, &request)
        .write_to(dir.path());
    let swapper = bystander(Sandbox::new(), WasmLimits::default());
    let err = with_greeter(&swapper, &[owner, thief]).expect_err("out of reach");
    let text = err.to_string();
    assert!(
        text.contains("no live type `Counter` in `thief` or the plugins it declares"),
        "{text}"
    );
    assert_eq!(swapper.generation(), 1);
    greeter_answers(&swapper);
}

// --- The Vault: namespaces, grants, quotas ------------------------------------------------------

/// A plugin named `snoop` asks for keys outside `snoop/`: the host's, another plugin's, a
/// listing of everything. Reads and writes are refused, listings show only its own keys.
#[test]
fn vault_keys_outside_its_namespace_are_refused() {
    let dir = tempdir();
    let swapper = bystander(Sandbox::new(), WasmLimits::default());
    let vault = swapper.vault();
    vault.put("host/secret", &"hunter2".to_owned()).unwrap();
    vault.put("victim/balance", &100u64).unwrap();
    vault.put("snoop/mine", &1u64).unwrap();
    let before = (
        vault.get_versioned("host/secret"),
        vault.get_versioned("victim/balance"),
    );
    let value = LiveData::of(&0u64).unwrap();
    let key = |k: &str| encode(&Key { key: k.into() });
    let put = |k: &str| {
        encode(&Put {
            key: k.into(),
            value: value.clone(),
        })
    };
    let cases = [
        (service::VAULT_GET, key("host/secret"), "may not read"),
        (service::VAULT_PUT, put("victim/balance"), "may not write"),
        (service::VAULT_DELETE, key("host/secret"), "may not write"),
        (service::VAULT_GET, key("snoopy/x"), "may not read"),
    ];
    for (op, request, expect) in cases {
        let snoop = Wat::plugin("snoop")
            .relays("swapkit_call", op, &request)
            .write_to(dir.path());
        with_greeter(&swapper, &[snoop]).unwrap();
        let snoop = swapper.client_of::<dyn Greeter>("snoop").unwrap();
        let message = refusal(snoop.version());
        assert!(message.contains(expect), "{message}");
        assert!(
            message.contains("`snoop/`"),
            "names its namespace: {message}"
        );
    }
    // A listing of everything shows only its own key.
    let snoop = Wat::plugin("snoop")
        .relays("swapkit_call", service::VAULT_LIST, &key(""))
        .write_to(dir.path());
    with_greeter(&swapper, &[snoop]).unwrap();
    let listed = swapper
        .client_of::<dyn Greeter>("snoop")
        .unwrap()
        .version()
        .expect_err("a key list does not decode as a String");
    let CallError::Decode { .. } = listed else {
        panic!("the listing was answered: {listed:?}")
    };
    assert_eq!(
        (
            vault.get_versioned("host/secret"),
            vault.get_versioned("victim/balance")
        ),
        before,
        "the host's state is untouched"
    );
    greeter_answers(&swapper);
}

/// What the host grants, a plugin reaches: a read-only prefix for reading only, a writable
/// prefix for writing too, and nothing more.
#[test]
fn granted_prefixes_are_reachable_and_no_more() {
    let dir = tempdir();
    let sandbox = Sandbox::new()
        .grant("reader", Grant::VaultRead("shared/".into()))
        .grant("reader", Grant::VaultWrite("outbox/".into()));
    let swapper = bystander(sandbox, WasmLimits::default());
    swapper.vault().put("shared/motd", &7u64).unwrap();
    let value = LiveData::of(&42u64).unwrap();
    let cases = [
        (
            service::VAULT_PUT,
            encode(&Put {
                key: "outbox/1".into(),
                value: value.clone(),
            }),
            None,
        ),
        (
            service::VAULT_PUT,
            encode(&Put {
                key: "shared/motd".into(),
                value: value.clone(),
            }),
            Some("may not write Vault key `shared/motd`"),
        ),
    ];
    for (op, request, refused) in cases {
        let reader = Wat::plugin("reader")
            .relays("swapkit_call", op, &request)
            .write_to(dir.path());
        with_greeter(&swapper, &[reader]).unwrap();
        let result = swapper
            .client_of::<dyn Greeter>("reader")
            .unwrap()
            .score(0, "");
        match refused {
            Some(expect) => assert!(refusal(result).contains(expect)),
            None => assert!(result.is_ok(), "{result:?}"),
        }
    }
    assert_eq!(swapper.vault().get::<u64>("outbox/1").unwrap(), Some(42));
    assert_eq!(swapper.vault().get::<u64>("shared/motd").unwrap(), Some(7));
}

/// The put request for a value of `len` zero bytes under `key`, split into what comes before
/// the value's bytes and their number: the module writes the first part, and the zeros are
/// fresh linear memory.
fn big_put(key: &str, len: usize) -> (Vec<u8>, usize) {
    let request = encode(&Put {
        key: key.into(),
        value: LiveData {
            type_name: "Blob".into(),
            schema: 1,
            bytes: vec![0; len],
        },
    });
    assert!(request[request.len() - len..].iter().all(|&b| b == 0));
    (request[..request.len() - len].to_vec(), request.len())
}

/// Four 32 MiB puts per call grew the host to 1.5 GiB in 12 calls, although the guest's own
/// memory was capped at 64 MiB. A value past `Quota::largest_value`, or a namespace past
/// `Quota::bytes`, is now refused before anything is stored.
#[test]
fn vault_quotas_refuse_big_values_and_too_many_bytes() {
    let dir = tempdir();
    let quota = Quota {
        keys: 1_000,
        bytes: 3 << 20,
        largest_value: 2 << 20,
    };
    let swapper = bystander(Sandbox::new().quota(quota), WasmLimits::default());
    let big = |key: &str, len: usize, pages: u32| {
        let (head, total) = big_put(key, len);
        Wat::plugin("hoarder")
            .data(REQUEST, &head)
            .extra(&relay_fn())
            .body(
                "swapkit_call",
                format!(
                    "(drop (memory.grow (i32.const {pages}))) {}",
                    relay_expr(service::VAULT_PUT, REQUEST, total as u32)
                ),
            )
            .write_to(dir.path())
    };
    let call = |path| {
        with_greeter(&swapper, &[path]).unwrap();
        swapper
            .client_of::<dyn Greeter>("hoarder")
            .unwrap()
            .score(0, "")
    };
    let message = refusal(call(big("hoarder/huge", 32 << 20, 520)));
    assert!(
        message.contains("Quota::largest_value") || message.contains("largest value"),
        "{message}"
    );
    assert!(swapper.vault().get_versioned("hoarder/huge").is_none());
    // 1.5 MiB values: the first fits, the second would pass 3 MiB.
    assert!(call(big("hoarder/a", 3 << 19, 30)).is_ok());
    let message = refusal(call(big("hoarder/b", 3 << 19, 30)));
    assert!(message.contains("Quota::bytes"), "{message}");
    assert!(swapper.vault().get_versioned("hoarder/b").is_none());
    greeter_answers(&swapper);
}

/// Two million keys took 3.8 s to insert and grew the host without bound. The number of keys
/// in a namespace is now capped by `Quota::keys`.
#[test]
fn vault_quotas_stop_a_flood_of_keys() {
    let dir = tempdir();
    let quota = Quota {
        keys: 1_000,
        ..Quota::default()
    };
    let swapper = bystander(Sandbox::new().quota(quota), WasmLimits::default());
    let request = encode(&Put {
        key: "flood/k...".into(),
        value: LiveData::of(&1u64).unwrap(),
    });
    let at = REQUEST + request.windows(3).position(|w| w == b"...").unwrap() as u32;
    // Puts keys `flood/k` + three base-128 digits of i, for i in 0..5,000, until refused.
    let flood = Wat::plugin("flood")
        .data(REQUEST, &request)
        .extra(&relay_fn())
        .body(
            "swapkit_call",
            format!(
                "(local $i i32) (local $s i32) \
                 (block $done (loop $next \
                   (br_if $done (i32.ge_u (local.get $i) (i32.const 5000))) \
                   (i32.store8 (i32.const {at}) (i32.and (local.get $i) (i32.const 127))) \
                   (i32.store8 (i32.const {}) (i32.and (i32.shr_u (local.get $i) (i32.const 7)) (i32.const 127))) \
                   (i32.store8 (i32.const {}) (i32.shr_u (local.get $i) (i32.const 14))) \
                   (local.set $s {}) \
                   (br_if $done (local.get $s)) \
                   (local.set $i (i32.add (local.get $i) (i32.const 1))) \
                   (br $next))) \
                 (local.get $s)",
                at + 1,
                at + 2,
                relay_expr(service::VAULT_PUT, REQUEST, request.len() as u32)
            ),
        )
        .write_to(dir.path());
    with_greeter(&swapper, &[flood]).unwrap();
    let message = refusal(
        swapper
            .client_of::<dyn Greeter>("flood")
            .unwrap()
            .score(0, ""),
    );
    assert!(
        message.contains("holds 1000 keys") && message.contains("Quota::keys"),
        "{message}"
    );
    assert_eq!(swapper.vault().list("flood/").len(), 1_000);
    greeter_answers(&swapper);
}

// --- Host functions ---------------------------------------------------------------------------

/// Any plugin could call every function the host provided. Each is now granted per plugin.
#[test]
fn host_functions_are_reachable_only_when_granted() {
    let dir = tempdir();
    let request = encode(&Invoke {
        name: "shutdown".into(),
        args: vec![],
    });
    let caller = |name: &str| {
        Wat::plugin(name)
            .relays("swapkit_call", service::HOST_FN, &request)
            .write_to(dir.path())
    };
    let swapper = bystander(
        Sandbox::new().grant("operator", Grant::HostFn("shutdown".into())),
        WasmLimits::default(),
    );
    let called = Arc::new(AtomicUsize::new(0));
    let count = called.clone();
    swapper.vault().provide("shutdown", move |(): ()| {
        count.fetch_add(1, Ordering::SeqCst) as u64
    });
    with_greeter(&swapper, &[caller("intruder"), caller("operator")]).unwrap();
    let intruder = swapper.client_of::<dyn Greeter>("intruder").unwrap();
    let message = refusal(intruder.score(0, ""));
    assert!(
        message.contains("may not call host function `shutdown`")
            && message.contains("Grant::HostFn"),
        "{message}"
    );
    assert_eq!(called.load(Ordering::SeqCst), 0);
    let operator = swapper.client_of::<dyn Greeter>("operator").unwrap();
    assert_eq!(operator.score(0, "").unwrap(), 0);
    assert_eq!(called.load(Ordering::SeqCst), 1);
}

// --- Memory ---------------------------------------------------------------------------------------

/// The memory cap was per instance, so one plugin could hold `max_memory` × the pool size.
/// Now the instances of one plugin's pool share `WasmLimits::max_pool_memory`. Two calls at
/// once each grow 12 MiB under a 20 MiB pool cap: the second is refused and its instance
/// dropped; the first, and later calls, carry on.
#[test]
fn one_plugins_memory_is_capped_across_its_pool() {
    let dir = tempdir();
    let request = encode(&Invoke {
        name: "hold".into(),
        args: vec![],
    });
    let hog = Wat::plugin("hog")
        .data(REQUEST, &request)
        .extra(&relay_fn())
        .body(
            "swapkit_call",
            format!(
                "(if (i32.lt_u (memory.size) (i32.const 100)) (then \
                   (if (i32.eq (memory.grow (i32.const 192)) (i32.const -1)) (then unreachable)))) \
                 {}",
                relay_expr(service::HOST_FN, REQUEST, request.len() as u32)
            ),
        )
        .write_to(dir.path());
    let limits = WasmLimits {
        max_memory: 16 << 20,
        max_pool_memory: Some(20 << 20),
        pool_size: 4,
        ..Default::default()
    };
    let swapper = bystander(
        Sandbox::new().grant("hog", Grant::HostFn("hold".into())),
        limits,
    );
    // `hold` signals that a call holds its memory, then waits until told to let go.
    let (holding, release) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (h, r) = (holding.clone(), release.clone());
    swapper.vault().provide("hold", move |(): ()| {
        h.store(true, Ordering::SeqCst);
        let start = Instant::now();
        while !r.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        7u64
    });
    with_greeter(&swapper, &[hog]).unwrap();
    let hog = swapper.client_of::<dyn Greeter>("hog").unwrap();
    std::thread::scope(|s| {
        let first = s.spawn(|| hog.score(0, ""));
        while !holding.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        match hog.score(0, "") {
            Err(CallError::ResourceLimit { message, .. }) => {
                assert!(message.contains("WasmLimits::max_pool_memory"), "{message}")
            }
            other => panic!("expected the pool's cap, got {other:?}"),
        }
        release.store(true, Ordering::SeqCst);
        assert_eq!(first.join().unwrap().unwrap(), 7);
    });
    for _ in 0..3 {
        assert_eq!(hog.score(0, "").unwrap(), 7);
    }
    greeter_answers(&swapper);
}

/// A refused `memory.grow` that the guest survives (it returns -1) used to leave a flag set,
/// and a later, unrelated trap was reported as a memory limit. Now the flag lasts one call, and
/// only explains an `unreachable` (how a Rust guest aborts when allocation fails).
#[test]
fn a_refused_growth_does_not_mislabel_a_later_trap() {
    let dir = tempdir();
    let grow_then = |then: &str| format!("(drop (memory.grow (i32.const 2000))) {then}");
    let divide = "(i32.div_u (i32.const 1) (i32.sub (local.get 1) (local.get 1)))";
    // `score` (method 2) survives a refused growth; `fail` (3) divides by zero; `version` (1)
    // does both.
    let body = format!(
        "(if (result i32) (i32.eq (local.get 1) (i32.const 2)) \
           (then {} (i32.store8 (i32.const 3000) (i32.const 7)) \
                 (i32.store (i32.const 16) (i32.const 3000)) \
                 (i32.store (i32.const 20) (i32.const 1)) (i32.const 0)) \
           (else (if (result i32) (i32.eq (local.get 1) (i32.const 3)) \
             (then {divide}) \
             (else {}))))",
        grow_then(""),
        grow_then(divide)
    );
    let path = Wat::plugin("grower")
        .body("swapkit_call", body)
        .write_to(dir.path());
    let swapper = bystander(Sandbox::new(), WasmLimits::default());
    with_greeter(&swapper, &[path]).unwrap();
    let grower = swapper.client_of::<dyn Greeter>("grower").unwrap();
    assert_eq!(
        grower.score(0, "").unwrap(),
        7,
        "the guest survives the refusal"
    );
    match grower.fail("") {
        Err(CallError::Trap { message, .. }) => {
            assert!(message.contains("divide by zero"), "{message}");
            assert!(!message.contains("earlier"), "{message}");
        }
        other => panic!("a division by zero is a trap, got {other:?}"),
    }
    match grower.version() {
        Err(CallError::Trap { message, .. }) => {
            assert!(message.contains("divide by zero"), "{message}");
            assert!(message.contains("earlier in this call"), "{message}");
        }
        other => panic!("a division by zero is a trap, got {other:?}"),
    }
}

// --- Logs -------------------------------------------------------------------------------------

/// One 60 MiB log line went through to tracing and the sink. A line is now cut at 4 KiB before
/// it leaves the guest's memory, and lines are rate-limited per instance, the dropped ones
/// counted.
#[test]
fn a_log_flood_is_cut_and_counted() {
    let dir = tempdir();
    let flood = "(drop (memory.grow (i32.const 40))) \
         (call $log (i32.const 2) (i32.const 0) (i32.const 2097152)) \
         (local.set 0 (i32.const 0)) \
         (block (loop (br_if 1 (i32.ge_u (local.get 0) (i32.const 1000))) \
           (call $log (i32.const 2) (i32.const 1024) (i32.const 1)) \
           (local.set 0 (i32.add (local.get 0) (i32.const 1))) (br 0))) \
         (i32.const 0)";
    let path = Wat::plugin("chatty")
        .body("swapkit_call", flood)
        .write_to(dir.path());
    let logs = Logs::default();
    let swapper = logs.builder().wasm_cache_dir(wasm_cache()).build().unwrap();
    swapper.load_files([&path]).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    let lines = |logs: &Logs| -> Vec<String> {
        logs.all()
            .into_iter()
            .filter(|(plugin, ..)| plugin == "chatty")
            .map(|(_, _, message)| message)
            .collect()
    };
    let _ = greeter.version(); // the module returns no result; only its log matters here
    let first = lines(&logs);
    let long = &first[0];
    assert!(
        long.ends_with("… [2093056 more bytes cut]"),
        "{}",
        &long[4000..]
    );
    assert!(long.len() < 4096 + 64, "{} bytes", long.len());
    // 200 at once, and 100 a second after that: a slow machine may see a few more.
    assert!(
        (100..=600).contains(&first.len()),
        "{} of 1,001 lines went through at once",
        first.len()
    );
    // A second later the budget has refilled: the next line comes after the count.
    std::thread::sleep(Duration::from_millis(1100));
    let _ = greeter.version();
    let after = lines(&logs);
    let notices: Vec<&String> = after
        .iter()
        .filter(|l| l.contains("log lines of this plugin were dropped"))
        .collect();
    assert!(
        after.len() > first.len() && !notices.is_empty(),
        "a warning that counts the dropped lines"
    );
    let dropped: usize = notices
        .iter()
        .map(|n| {
            let count = n.trim_start_matches("[swapkit] ").split(' ').next();
            count.unwrap().parse::<usize>().unwrap()
        })
        .sum();
    // Each call logs 1,001 lines. Every line the first call dropped is counted by now (the
    // second call's first line came after the refill); on a slow machine the second call
    // outlasts the refill too, and some of its own drops may be counted as well.
    let passed = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| !l.contains("log lines of this plugin were dropped"))
            .count()
    };
    assert!(
        dropped >= 1001 - passed(&first) && dropped <= 2002 - passed(&after),
        "{notices:?}, {} then {} lines through",
        passed(&first),
        passed(&after)
    );
}

// --- The same rules on both backends ---------------------------------------------------------

/// The rules are the host's, not the backend's: a native plugin meets the same namespace, the
/// same grants and the same reach, so a plugin behaves alike on both.
#[test]
fn native_and_wasm_plugins_meet_the_same_rules() {
    for backend in [Backend::Native, Backend::Wasm] {
        let logs = Logs::default();
        let swapper = start(backend, &logs, &[Fixture::StateV1]).unwrap();
        let counter = swapper.client::<dyn Counter>().unwrap();
        assert_eq!(counter.bump("state/own").unwrap(), 1);
        match counter.bump("elsewhere") {
            // `update` reads first.
            Err(CallError::Panic { message, .. }) => {
                assert!(
                    message.contains("may not read Vault key `elsewhere`"),
                    "{message}"
                )
            }
            other => panic!("{backend:?}: expected the write to be refused, got {other:?}"),
        }
        assert!(swapper.vault().get_versioned("elsewhere").is_none());
        // Its own live type, asked of the host: out of reach, as it declares no dependency.
        match counter.make("Ticket", 1) {
            Ok(Err(message)) => assert!(message.contains("declares no dependencies"), "{message}"),
            other => panic!("{backend:?}: expected a refusal, got {other:?}"),
        }
        // A grant opens a prefix on both backends alike.
        let granted = Sandbox::new().grant("state", Grant::VaultWrite("shared/".into()));
        let swapper = start_with(backend, &logs, &[Fixture::StateV1], granted).unwrap();
        let counter = swapper.client::<dyn Counter>().unwrap();
        assert_eq!(counter.bump("shared/hits").unwrap(), 1);
        assert_eq!(swapper.vault().get::<u64>("shared/hits").unwrap(), Some(1));
    }
}

// --- What one call leaves for the next --------------------------------------------------------

/// A swapper serving the plugin at `path` from a pool of one instance, so that every call
/// runs in the instance the last call left.
fn with_one_instance(path: &std::path::Path) -> Swapper {
    let swapper = swapper(
        Sandbox::new(),
        WasmLimits {
            pool_size: 1,
            ..WasmLimits::default()
        },
    );
    swapper.load_files([path]).unwrap();
    swapper
}

/// A `tracing` subscriber that panics on every line a plugin logs.
struct PanicsOnGuestLines;

impl tracing::Subscriber for PanicsOnGuestLines {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if event.metadata().target() == "swapkit::guest" {
            panic!("the subscriber panics on a guest line");
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A plugin whose `swapkit_call` raises a flag in its memory, logs a line, lowers the flag and
/// answers "clean"; a call that finds the flag raised answers "reused": it runs in an
/// instance whose last call stopped halfway.
fn flagged_logger(name: &str) -> Wat {
    let (clean, reused) = (encode(&"clean".to_owned()), encode(&"reused".to_owned()));
    let answer = |at: u32, len: usize| {
        format!("(i32.store (i32.const 16) (i32.const {at})) (i32.store (i32.const 20) (i32.const {len}))")
    };
    Wat::plugin(name)
        .data(3000, b"a line")
        .data(3400, &reused)
        .data(3500, &clean)
        .body(
            "swapkit_call",
            format!(
                "(if (i32.load8_u (i32.const 3300)) (then {} (return (i32.const 0)))) \
                 (i32.store8 (i32.const 3300) (i32.const 1)) \
                 (call $log (i32.const 3) (i32.const 3000) (i32.const 6)) \
                 (i32.store8 (i32.const 3300) (i32.const 0)) \
                 {} (i32.const 0)",
                answer(3400, reused.len()),
                answer(3500, clean.len())
            ),
        )
}

/// The wasm `log` host function emitted its event outside any `catch_unwind`, so a panicking
/// subscriber unwound through wasmtime, the guest stopped between raising and lowering its
/// flag, and the pool handed that instance to the next call. Now the panic is contained where
/// it happens, as the native `log` contains it, and the call completes.
#[test]
fn a_panicking_subscriber_never_leaves_a_half_run_instance_for_the_next_call() {
    let dir = tempdir();
    let path = flagged_logger("flagged").write_to(dir.path());
    let swapper = with_one_instance(&path);
    let plugin = swapper.client_of::<dyn Greeter>("flagged").unwrap();
    let first = tracing::subscriber::with_default(PanicsOnGuestLines, || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plugin.version()))
    });
    let first = first.expect("the subscriber's panic does not reach the caller");
    assert_eq!(first.unwrap(), "clean");
    assert_eq!(
        plugin.version().unwrap(),
        "clean",
        "the next call runs in a whole instance"
    );
}

/// The host staged each call's arguments in the instance's input buffer and never cleared
/// them, so a later caller's call into the same instance could read an earlier caller's
/// bytes (another tenant's API key) past the end of its own. Now the host zeroes what it
/// staged once the call is done. The plugin answers `greet` with the first 32 bytes of its
/// input buffer, whatever it was given.
#[test]
fn one_callers_arguments_are_not_left_in_the_instance_for_the_next() {
    let dir = tempdir();
    let path = Wat::plugin("peeker")
        .body(
            "swapkit_call",
            "(i32.store8 (i32.const 3000) (i32.const 32)) \
             (memory.copy (i32.const 3001) (i32.const 4096) (i32.const 32)) \
             (i32.store (i32.const 16) (i32.const 3000)) \
             (i32.store (i32.const 20) (i32.const 33)) (i32.const 0)",
        )
        .write_to(dir.path());
    let swapper = with_one_instance(&path);
    let plugin = swapper.client_of::<dyn Greeter>("peeker").unwrap();
    let secret = "sk-live-0123456789abcdef";
    // One tenant's call, from one thread...
    std::thread::scope(|s| {
        s.spawn(|| {
            let seen = plugin.greet(secret).unwrap();
            assert!(
                seen.contains(secret),
                "the plugin sees its own caller's bytes"
            );
        });
    });
    // ...and the next caller, on another thread, in the same (only) instance.
    let seen = plugin.greet("me").unwrap();
    assert!(
        !seen.contains("0123456789"),
        "another caller's bytes: {seen:?}"
    );
    assert!(seen.bytes().skip(4).all(|b| b == 0), "{seen:?}");
}

/// A host function that calls back into the plugin that called it re-entered the plugin's
/// pool on the same thread with no check (dependency and live-type calls had one): with one
/// instance it waited a second for itself and failed as `PoolExhausted`, with two it nested a
/// second instance on top of the first. Now the call is refused as re-entrant at once, with a
/// message that says what happened, and the plugin keeps serving.
#[test]
fn a_host_function_calling_back_into_its_own_plugin_is_refused_as_reentrant() {
    for pool_size in [1, 2] {
        let dir = tempdir();
        let request = encode(&Invoke {
            name: "again".into(),
            args: vec![],
        });
        let path = Wat::plugin("looper")
            .relays("swapkit_call", service::HOST_FN, &request)
            .write_to(dir.path());
        let swapper = Arc::new(swapper(
            Sandbox::new().grant("looper", Grant::HostFn("again".into())),
            WasmLimits {
                pool_size,
                ..WasmLimits::default()
            },
        ));
        let inner = Arc::new(std::sync::Mutex::new(
            Vec::<Result<String, CallError>>::new(),
        ));
        let (weak, seen) = (Arc::downgrade(&swapper), inner.clone());
        swapper.vault().provide("again", move |(): ()| {
            let swapper = weak.upgrade().expect("the swapper is alive while it calls");
            let looper = swapper.client_of::<dyn Greeter>("looper").unwrap();
            seen.lock().unwrap().push(looper.version());
            7u64
        });
        swapper.load_files([&path]).unwrap();
        let looper = swapper.client_of::<dyn Greeter>("looper").unwrap();
        assert_eq!(looper.score(0, "").unwrap(), 7, "pool of {pool_size}");
        let inner = std::mem::take(&mut *inner.lock().unwrap());
        assert_eq!(
            inner.len(),
            1,
            "pool of {pool_size}: one call back, no nesting"
        );
        match &inner[0] {
            Err(CallError::Reentrant { message, .. }) => assert!(
                message.contains("already running on this thread")
                    && message.contains("host function"),
                "{message}"
            ),
            other => panic!("pool of {pool_size}: expected a re-entry refusal, got {other:?}"),
        }
        // From another thread the plugin is not re-entered: the host function's call goes
        // through (and its own call back is refused in turn).
        let outer = std::thread::scope(|s| s.spawn(|| looper.score(0, "")).join().unwrap());
        assert_eq!(outer.unwrap(), 7);
    }
}

// --- Whose namespace a plugin gets ------------------------------------------------------------

/// A wasm patch artifact ran its hooks under whatever name its manifest claimed: named
/// `victim`, its `on_init` drained `victim/balance`. A patch set now gets a namespace of its
/// own, `patch:<name>/`, which no plugin can claim, and never the plugin's it names.
#[test]
fn a_patch_artifact_never_gets_the_namespace_of_the_plugin_it_names() {
    let dir = tempdir();
    let swapper = bystander(Sandbox::new(), WasmLimits::default());
    let vault = swapper.vault();
    vault.put("victim/balance", &100u64).unwrap();
    let put = |key: &str| {
        encode(&Put {
            key: key.into(),
            value: LiveData::of(&0u64).unwrap(),
        })
    };
    let thief = Wat::plugin("victim")
        .patches("sandbox::nothing")
        .relays("swapkit_init", service::VAULT_PUT, &put("victim/balance"))
        .write_to(dir.path());
    let refused = swapper
        .patches_from(&thief)
        .expect_err("its on_init fails: the write is refused");
    let message = refused.to_string();
    assert!(
        message.contains("may not write Vault key `victim/balance`")
            && message.contains("`patch:victim/`")
            && message.contains("Sandbox::grant(\"patch:victim\""),
        "{message}"
    );
    assert_eq!(vault.get::<u64>("victim/balance").unwrap(), Some(100));
    // Its own namespace is its to use.
    let own = Wat::plugin("victim")
        .patches("sandbox::nothing")
        .relays(
            "swapkit_init",
            service::VAULT_PUT,
            &put("patch:victim/note"),
        )
        .write_to(dir.path());
    assert!(swapper.patches_from(&own).is_ok());
    assert_eq!(vault.get::<u64>("patch:victim/note").unwrap(), Some(0));
    greeter_answers(&swapper);
}

/// A plugin's name is its namespace: one named `victim/sub` wrote under `victim/`, and one
/// named `patch:x` would take a patch set's. Such names are refused at load, with the rule.
#[test]
fn a_plugin_name_that_reaches_into_another_namespace_is_refused() {
    let dir = tempdir();
    let swapper = bystander(Sandbox::new(), WasmLimits::default());
    for name in [
        "victim/sub",
        "patch:victim",
        "",
        ".hidden",
        "new\nline",
        &"x".repeat(65),
    ] {
        let path = Wat::plugin("placeholder").named(name).write_to(dir.path());
        let error = with_greeter(&swapper, &[path]).expect_err(name);
        let message = error.to_string();
        assert!(
            message.contains("is not allowed") && message.contains("ASCII letters"),
            "{name:?}: {message}"
        );
    }
    greeter_answers(&swapper);
}

// --- What loading a module may cost -----------------------------------------------------------

/// A manifest could declare any number of methods, and each was compared with each of up to
/// 65,536 listed lanes before any other check, under the reload lock: a 1 MB guest stalled
/// reloads for 9 s. A manifest past its bounds is now refused as soon as it is read, naming
/// the bound, and the lane table is looked up by hash.
#[test]
fn a_manifest_past_its_bounds_is_refused_before_any_other_check() {
    let dir = tempdir();
    let swapper = bystander(Sandbox::new(), WasmLimits::default());
    let path = Wat::plugin("bloated").methods(5000).write_to(dir.path());
    let message = with_greeter(&swapper, &[path]).unwrap_err().to_string();
    assert!(
        message.contains("declares 5004 methods, more than the 4096"),
        "{message}"
    );
    greeter_answers(&swapper);
}

/// A module written to make the compiler work hard (within the size bounds: 200 KiB of
/// values all alive at once, about half a second of cranelift) is refused once it overruns
/// `WasmLimits::max_compile_time`, and the greeter keeps serving. The compile cannot be
/// stopped: it runs on and the next compile waits for it, so a second hostile module right
/// after is refused too, and a plain plugin loads once the overrun compile has ended.
#[test]
fn a_compile_past_max_compile_time_is_refused_and_the_next_waits_for_it() {
    // The greeter is compiled into the shared cache first, so the limited swapper reads it.
    drop(bystander(Sandbox::new(), WasmLimits::default()));
    let swapper = bystander(
        Sandbox::new(),
        WasmLimits {
            max_compile_time: Duration::from_millis(100),
            ..WasmLimits::default()
        },
    );
    let dir = tempdir();
    let hostile = |n: u64| hard_to_compile(dir.path(), n, 200 << 10);
    let err = swapper.load_files([hostile(1)]).unwrap_err();
    assert!(matches!(err, LoadError::WasmTooCostly { .. }), "{err:?}");
    assert!(
        err.to_string().contains("WasmLimits::max_compile_time"),
        "{err}"
    );
    assert_eq!(swapper.generation(), 1, "nothing was published");
    greeter_answers(&swapper);

    // Right after: the first compile still runs (or this one overruns as well).
    let err = swapper.load_files([hostile(2)]).unwrap_err();
    assert!(matches!(err, LoadError::WasmTooCostly { .. }), "{err:?}");
    assert!(err.to_string().contains("max_compile_time"), "{err}");
    greeter_answers(&swapper);

    // A plain plugin, never compiled before, loads once the overrun compiles have ended.
    let plain = Wat::plugin("plain").write_to(dir.path());
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match with_greeter(&swapper, std::slice::from_ref(&plain)) {
            Ok(()) => break,
            Err(LoadError::WasmTooCostly { reason, .. }) if Instant::now() < until => {
                assert!(reason.contains("max_compile_time"), "{reason}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("the plain plugin did not load: {e}"),
        }
    }
    greeter_answers(&swapper);
}

/// A module of one function of about `bytes` bytes of code that keeps every value it makes
/// alive at once (`examples/compile_cost.rs`' `live`), which makes cranelift's register
/// allocator work hardest: about half a second for 200 KiB. `n` makes its content unique,
/// so no compile cache holds it.
fn hard_to_compile(dir: &std::path::Path, n: u64, bytes: usize) -> std::path::PathBuf {
    let values = bytes / 3;
    let body = format!(
        "(func (result i64) {} {} )",
        format!("(i64.const {}) ", n % 64).repeat(values),
        "i64.add ".repeat(values - 1)
    );
    let unique = std::process::id() as u64 * 1_000_003 + n;
    let module = format!("(module (global i64 (i64.const {unique})) {body})");
    let path = dir.join(format!("hostile{n}.wasm"));
    std::fs::write(&path, wat::parse_str(module).unwrap()).unwrap();
    path
}

/// Tells a channel when a `compile` span opens: a load has started compiling.
struct OnCompile(std::sync::mpsc::Sender<()>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for OnCompile {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == "compile" {
            let _ = self.0.send(());
        }
    }
}

/// Compiling is the long part of a load, and the part a hostile module makes long. A load
/// (`load_files`) compiles before it takes the reload lock, so `history`, which takes the
/// lock, answers while the load compiles; it waited for the whole compile before.
#[test]
fn a_load_compiling_a_hostile_module_does_not_hold_up_the_reload_lock() {
    use tracing_subscriber::layer::SubscriberExt;
    let swapper = bystander(
        Sandbox::new(),
        WasmLimits {
            max_function_bytes: 1 << 20,
            max_compile_time: Duration::from_secs(120),
            ..WasmLimits::default()
        },
    );
    let dir = tempdir();
    // About 2.5 s of compiling at 1 MiB.
    let hostile = hard_to_compile(dir.path(), 3, (1 << 20) - 4096);
    let kept = swapper.history().len();
    let (compiling, started) = std::sync::mpsc::channel();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let loading = s.spawn(|| {
            let subscriber = tracing_subscriber::registry().with(OnCompile(compiling));
            let result = tracing::subscriber::with_default(subscriber, || {
                // Another test's thread may have met the `compile` span first, while no
                // subscriber that wants it existed, and tracing cached "never" for it: ask
                // again now that this thread's subscriber does.
                tracing::callsite::rebuild_interest_cache();
                with_greeter(&swapper, std::slice::from_ref(&hostile))
            });
            done.store(true, Ordering::SeqCst);
            result
        });
        started
            .recv_timeout(Duration::from_secs(120))
            .expect("the load starts compiling");
        let history = swapper.history();
        assert!(
            !done.load(Ordering::SeqCst),
            "history waited for the compile to end"
        );
        assert_eq!(history.len(), kept, "nothing was published");
        let err = loading.join().unwrap().unwrap_err();
        assert!(matches!(err, LoadError::WasmShape { .. }), "{err:?}");
    });
    greeter_answers(&swapper);
}

/// The compiler's time and memory grow with a module, and faster than linearly with one
/// function (a 29 MiB guest took the host to a 930 MiB peak). A module over
/// `WasmLimits::max_module_bytes`, or with a function over `max_function_bytes`, is refused
/// before it is compiled, with the bound named.
#[test]
fn a_module_or_a_function_past_its_size_bound_is_refused_before_it_is_compiled() {
    let dir = tempdir();
    let big_function = format!(
        "(func $big (result i32) (i32.const 0) {} )",
        "(i32.add (i32.const 1)) ".repeat(40_000)
    );
    let path = Wat::plugin("bulky")
        .extra(&big_function)
        .write_to(dir.path());
    let size = std::fs::metadata(&path).unwrap().len() as usize;
    let cases = [
        (
            WasmLimits {
                max_function_bytes: 64 << 10,
                ..WasmLimits::default()
            },
            "WasmLimits::max_function_bytes",
        ),
        (
            WasmLimits {
                max_module_bytes: size - 1,
                ..WasmLimits::default()
            },
            "WasmLimits::max_module_bytes",
        ),
    ];
    for (limits, bound) in cases {
        // A fresh cache: a module compiled before would be read from it, not compiled.
        let cache = tempdir();
        let swapper = Swapper::builder()
            .wasm_cache_dir(cache.path())
            .wasm_limits(limits)
            .build()
            .unwrap();
        let message = swapper.load_files([&path]).unwrap_err().to_string();
        assert!(message.contains(bound), "{message}");
        assert_eq!(swapper.generation(), 0, "nothing was published");
    }
    // Within the default bounds it loads.
    let swapper = bystander(Sandbox::new(), WasmLimits::default());
    with_greeter(&swapper, &[path]).unwrap();
}
