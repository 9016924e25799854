//! Patches from plugins: the fixture `fixtures/patches` replaces functions of this test
//! binary (crate `patch_plugin`), loaded natively and statically; the error fixtures try to
//! patch what they must not.

mod common;

use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{Fixture, Logs};
use serde::{Deserialize, Serialize};
use swapkit::patch::{
    self, PanicPolicy, PatchError, PatchPanic, PatchSource, PluginPatches, Rollout,
};

// ---- the targets ----

#[swapkit::patchable(plugin)]
pub fn price(cents: u64, qty: u32) -> u64 {
    cents * qty as u64
}

#[swapkit::patchable(plugin)]
pub fn label(name: &str) -> String {
    format!("item {name}")
}

#[derive(Serialize, Deserialize)]
pub struct Shop {
    fee: u64,
}

#[derive(Serialize, Deserialize)]
pub struct Cart {
    items: Vec<u64>,
}

#[swapkit::patchable(plugin)]
impl Shop {
    pub fn total(&self, cart: &Cart) -> u64 {
        cart.items.iter().sum::<u64>() + self.fee
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum ParseError {
    Bad(String),
    Patch(String),
}

impl From<PatchPanic> for ParseError {
    fn from(p: PatchPanic) -> Self {
        ParseError::Patch(p.message)
    }
}

#[swapkit::patchable(plugin)]
pub fn parse(text: &str) -> Result<u32, ParseError> {
    text.trim()
        .parse()
        .map_err(|e: std::num::ParseIntError| ParseError::Bad(e.to_string()))
}

#[swapkit::patchable(plugin)]
pub fn tally(n: u64) -> u64 {
    n
}

#[swapkit::patchable(plugin)]
pub fn slow(ms: u64) -> u64 {
    let _ = ms;
    1
}

#[swapkit::patchable(plugin)]
pub fn spare(n: u64) -> u64 {
    n
}

#[swapkit::patchable(plugin)]
pub fn mismatch(n: u64) -> u64 {
    n
}

#[swapkit::patchable]
pub fn closed(n: u64) -> u64 {
    n
}

/// Patches are process-wide, and the tests of this file patch the same targets: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn native(logs: &Logs, fixture: Fixture) -> Result<PluginPatches, PatchError> {
    let swapper = logs.builder().build().expect("swapper");
    swapper.patches_from(fixture.path())
}

fn assert_untouched() {
    assert_eq!(price(100, 2), 200);
    assert_eq!(label("a"), "item a");
    assert_eq!(spare(1), 1);
    assert!(patch::active().is_empty(), "{:?}", patch::active());
}

#[test]
fn native_plugin_patches_apply_and_restore() {
    let _serial = serial();
    let logs = Logs::default();
    let patches = native(&logs, Fixture::Patches).expect("load");
    assert_eq!(patches.plugin(), "pricing-fix");
    let targets: Vec<&str> = patches
        .exports()
        .iter()
        .map(|d| d.target.as_str())
        .collect();
    assert!(targets.contains(&"patch_plugin::price"), "{targets:?}");

    let set = patches.apply().expect("apply");
    assert_eq!(price(100, 2), 180);
    assert_eq!(label("a"), "fixed a");
    let shop = Shop { fee: 10 };
    assert_eq!(shop.total(&Cart { items: vec![1, 2] }), 3 + 5);
    assert_eq!(parse("4"), Ok(40));
    assert!(patch::is_patched(swapkit::target!(price)));

    let active = patch::active();
    assert_eq!(active.len(), 6, "{active:?}");
    let status = active
        .iter()
        .find(|t| t.name == "patch_plugin::price")
        .and_then(|t| t.patches.first().cloned())
        .expect("price is patched");
    assert_eq!(status.id, "pricing-fix");
    assert_eq!(status.hits, 1);
    assert!(
        matches!(&status.source, PatchSource::Plugin { plugin, version, .. } if plugin == "pricing-fix" && version == "1.0.0"),
        "{}",
        status.source
    );

    drop(set);
    assert_untouched();
    // The instance outlives no call, so it is freed as soon as the set is restored.
    assert_eq!(logs.count("pricing-fix", "1.0.0", "on_free"), 1);
}

#[test]
fn static_plugin_patches_apply() {
    let _serial = serial();
    let set = PluginPatches::from_static(Fixture::Patches.header())
        .expect("static")
        .apply()
        .expect("apply");
    assert_eq!(price(10, 1), 9);
    assert_eq!(label("b"), "fixed b");
    set.restore();
    assert_untouched();
}

#[test]
fn a_panic_in_a_plugin_patch_becomes_the_error_or_falls_back() {
    let _serial = serial();
    let logs = Logs::default();
    let set = native(&logs, Fixture::Patches)
        .expect("load")
        .apply()
        .expect("apply");

    // The target returns Result: the panic inside the plugin becomes its error.
    match parse("boom") {
        Err(ParseError::Patch(message)) => {
            assert!(message.contains("pricing-fix"), "{message}");
            assert!(message.contains("cannot parse boom"), "{message}");
        }
        other => panic!("expected the patch's error, got {other:?}"),
    }
    // A plain return value: the original runs instead.
    assert_eq!(tally(13), 13);
    assert_eq!(tally(2), 200);

    let unhealthy: Vec<&str> = patch::active()
        .iter()
        .filter(|t| t.patches.iter().any(|p| !p.healthy))
        .map(|t| t.name)
        .collect();
    assert_eq!(unhealthy, ["patch_plugin::parse", "patch_plugin::tally"]);
    drop(set);
}

#[test]
fn propagate_policy_lets_the_plugin_failure_reach_the_caller() {
    let _serial = serial();
    let logs = Logs::default();
    let set = native(&logs, Fixture::Patches)
        .expect("load")
        .on_panic(PanicPolicy::Propagate)
        .apply()
        .expect("apply");
    let caught = std::panic::catch_unwind(|| tally(13)).expect_err("the panic propagates");
    let message = caught.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("unlucky"), "{message}");
    assert_eq!(tally(3), 300, "the patch keeps serving after a panic");
    drop(set);
}

#[test]
fn percent_rollout_of_a_plugin_admits_the_same_keys_for_every_patch() {
    let _serial = serial();
    let logs = Logs::default();
    let set = native(&logs, Fixture::Patches)
        .expect("load")
        .rollout(Rollout::percent(10.0))
        .apply()
        .expect("apply");
    let in_both = |user: u64| {
        patch::with_key(user, || {
            let p = price(100, 1) == 90;
            let l = label("x") == "fixed x";
            assert_eq!(
                p, l,
                "user {user} got one patch of the set but not the other"
            );
            p
        })
    };
    let at_10: Vec<u64> = (0..5000).filter(|u| in_both(*u)).collect();
    assert!((350..650).contains(&at_10.len()), "{}", at_10.len());
    set.set_percent(50.0).expect("widen");
    let at_50: Vec<u64> = (0..5000).filter(|u| in_both(*u)).collect();
    assert!(
        at_10.iter().all(|u| at_50.contains(u)),
        "widening dropped a key"
    );
    assert!((2250..2750).contains(&at_50.len()), "{}", at_50.len());
    // No key: nobody.
    assert_eq!(price(100, 1), 100);
    drop(set);
}

#[test]
fn a_restored_plugin_patch_is_not_freed_while_a_call_is_inside_it() {
    let _serial = serial();
    let logs = Logs::default();
    let set = native(&logs, Fixture::Patches)
        .expect("load")
        .apply()
        .expect("apply");
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let ready = Arc::new(Barrier::new(2));
    let caller = {
        let (events, ready) = (events.clone(), ready.clone());
        std::thread::spawn(move || {
            ready.wait();
            let r = slow(400);
            events.lock().unwrap().push(format!("call returned {r}"));
        })
    };
    ready.wait();
    std::thread::sleep(Duration::from_millis(100));
    set.restore();
    events.lock().unwrap().push("restored".into());
    assert_eq!(slow(0), 1, "new calls run the original at once");
    assert_eq!(
        logs.count("pricing-fix", "1.0.0", "on_free"),
        0,
        "freed while a call was inside"
    );
    caller.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while logs.count("pricing-fix", "1.0.0", "on_free") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        *events.lock().unwrap(),
        ["restored", "call returned 2"],
        "the call in flight finished in the plugin's code"
    );
    assert_eq!(logs.count("pricing-fix", "1.0.0", "on_free"), 1);
}

#[test]
fn concurrent_calls_while_a_plugin_patch_toggles() {
    let _serial = serial();
    let swapper = swapkit::Swapper::new().expect("swapper");
    let path = Fixture::Patches.path();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut calls = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let p = price(100, 3);
                    assert!(p == 300 || p == 270, "torn call: {p}");
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    for _ in 0..200 {
        let set = swapper
            .patches_from(&path)
            .expect("load")
            .apply()
            .expect("apply");
        drop(set);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let calls: u64 = callers.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(calls > 0);
    assert_untouched();
}

// ---- every error path: nothing is applied ----

#[test]
fn a_signature_mismatch_applies_nothing() {
    let _serial = serial();
    let logs = Logs::default();
    let err = native(&logs, Fixture::PatchesBad)
        .expect("load")
        .apply()
        .expect_err("mismatch");
    match &err {
        PatchError::SignatureMismatch {
            target,
            expected,
            found,
            plugin,
        } => {
            assert_eq!(*target, "patch_plugin::mismatch");
            assert_eq!(*expected, "(u64)->u64");
            assert_eq!(found, "(u32)->u64");
            assert_eq!(plugin, "bad-fix");
        }
        other => panic!("expected SignatureMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("(u32)->u64"), "{err}");
    assert_untouched();
}

#[test]
fn a_target_not_open_to_plugins_applies_nothing() {
    let _serial = serial();
    let logs = Logs::default();
    let err = native(&logs, Fixture::PatchesClosed)
        .expect("load")
        .apply()
        .expect_err("closed");
    assert!(
        matches!(
            err,
            PatchError::NotOpenToPlugins {
                target: "patch_plugin::closed"
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("#[patchable(plugin)]"), "{err}");
    assert_eq!(closed(3), 3);
    assert_untouched();
}

#[test]
fn a_target_holding_a_patch_of_the_same_id_fails_the_whole_plugin() {
    let _serial = serial();
    let guard = swapkit::patch!(label, |_name| "in-process".to_owned())
        .id("pricing-fix")
        .apply()
        .expect("in-process patch");
    let logs = Logs::default();
    let err = native(&logs, Fixture::Patches)
        .expect("load")
        .apply()
        .expect_err("label has a patch with the plugin's id");
    assert!(
        matches!(&err, PatchError::SetFailed { source } if matches!(**source, PatchError::AlreadyPatched { target: "patch_plugin::label", .. })),
        "{err:?}"
    );
    assert_eq!(
        price(100, 2),
        200,
        "the plugin's other patches were not applied"
    );
    assert_eq!(label("z"), "in-process");

    // Under another id, the plugin's patches stack above the in-process one.
    let set = native(&logs, Fixture::Patches)
        .expect("load")
        .id("pricing-fix-2")
        .apply()
        .expect("stacks");
    let ids: Vec<String> = patch::registry()
        .into_iter()
        .find(|t| t.name == "patch_plugin::label")
        .unwrap()
        .patches
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, ["pricing-fix-2", "pricing-fix"]);
    assert_ne!(label("z"), "in-process", "the plugin's patch runs first");
    drop(set);
    assert_eq!(label("z"), "in-process", "and the one below stays");
    drop(guard);
    assert_untouched();
}

#[test]
fn a_plugin_without_patches_is_refused() {
    let logs = Logs::default();
    let err = native(&logs, Fixture::GreeterV1).expect_err("no patches");
    assert!(matches!(err, PatchError::NoPatches { .. }), "{err:?}");
    assert!(err.to_string().contains("exports no patches"), "{err}");
}

#[test]
fn a_broken_artifact_is_a_load_error() {
    let dir = common::tempdir();
    let path = dir.path().join("garbage.so");
    std::fs::write(&path, b"not a library").unwrap();
    let swapper = swapkit::Swapper::new().unwrap();
    let err = swapper.patches_from(&path).expect_err("garbage");
    assert!(matches!(err, PatchError::Load { .. }), "{err:?}");
    let missing = swapper
        .patches_from(dir.path().join("missing.so"))
        .expect_err("missing");
    assert!(matches!(missing, PatchError::Load { .. }), "{missing:?}");
}

#[test]
fn a_static_swapper_cannot_load_patch_artifacts() {
    let swapper = swapkit::Swapper::builder()
        .static_plugin(Fixture::GreeterV1.header())
        .build()
        .unwrap();
    let err = swapper
        .patches_from(Fixture::Patches.path())
        .expect_err("static mode");
    assert!(matches!(err, PatchError::Load { .. }), "{err:?}");
}

#[cfg(feature = "wasm")]
#[test]
fn wasm_plugin_patches_apply_and_contain_panics() {
    let _serial = serial();
    let logs = Logs::default();
    let swapper = logs
        .builder()
        .wasm_cache_dir(common::wasm_cache())
        .build()
        .unwrap();
    let set = swapper
        .patches_from(Fixture::Patches.wasm_path())
        .expect("load the wasm build")
        .apply()
        .expect("apply");
    assert_eq!(price(100, 2), 180);
    assert_eq!(label("w"), "fixed w");
    assert_eq!(Shop { fee: 4 }.total(&Cart { items: vec![1] }), 3);
    // A panic in wasm traps; the host reports the panic message and drops that instance.
    match parse("boom") {
        Err(ParseError::Patch(message)) => {
            assert!(message.contains("cannot parse boom"), "{message}")
        }
        other => panic!("expected the patch's error, got {other:?}"),
    }
    assert_eq!(parse("5"), Ok(50), "the next call gets a fresh instance");
    let source = patch::active()
        .into_iter()
        .find_map(|t| t.patches.into_iter().next())
        .map(|p| p.source.to_string())
        .unwrap();
    assert!(source.contains(".wasm"), "{source}");
    drop(set);
    assert_untouched();
    assert_eq!(logs.count("pricing-fix", "1.0.0", "on_free"), 1);
}
