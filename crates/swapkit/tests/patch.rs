//! Runtime function patching: targets of every kind, guards, the registry, sets, rollout,
//! panics and concurrency.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use swapkit::patch::{self, Key, PanicPolicy, PatchError, PatchPanic, PatchSet, Rollout};

// ---- targets of every kind ----

#[swapkit::patchable]
fn add_tax(cents: u64) -> u64 {
    cents + cents / 10
}

#[swapkit::patchable]
#[inline(always)]
fn inlined_double(x: u64) -> u64 {
    x * 2
}

#[derive(Debug, Clone, PartialEq)]
struct Cart {
    items: Vec<u64>,
}

#[swapkit::patchable]
impl Cart {
    fn total(&self) -> u64 {
        self.items.iter().sum()
    }

    fn add(&mut self, cents: u64) -> usize {
        self.items.push(cents);
        self.items.len()
    }

    fn with(cents: u64) -> Self {
        Cart { items: vec![cents] }
    }
}

trait Shipping {
    fn shipping(&self, km: u32) -> u64;
}

#[swapkit::patchable]
impl Shipping for Cart {
    fn shipping(&self, km: u32) -> u64 {
        km as u64 * 10
    }
}

#[test]
fn free_function_patch_and_restore() {
    assert_eq!(add_tax(100), 110);
    assert!(!patch::is_patched(swapkit::target!(add_tax)));
    let guard = swapkit::patch!(add_tax, |cents| cents + cents / 5)
        .apply()
        .unwrap();
    assert_eq!(guard.target(), "patch::add_tax");
    assert!(swapkit::target!(add_tax).is_patched());
    assert_eq!(add_tax(100), 120);
    guard.restore().unwrap();
    assert_eq!(add_tax(100), 110);
    assert!(!swapkit::target!(add_tax).is_patched());

    // Dropping the guard restores too; keep() does not.
    {
        let _g = swapkit::patch!(add_tax, |_| 0).apply().unwrap();
        assert_eq!(add_tax(100), 0);
    }
    assert_eq!(add_tax(100), 110);
    swapkit::patch!(add_tax, |_| 1).apply().unwrap().keep();
    assert_eq!(add_tax(100), 1);
    assert_eq!(
        patch::restore(swapkit::target!(add_tax)).unwrap(),
        ["patch::add_tax"]
    );
    assert_eq!(add_tax(100), 110);
}

#[test]
fn a_second_patch_with_the_same_id_is_refused_and_changes_nothing() {
    let first = swapkit::patch!(inlined_double, |x| x * 3)
        .id("triple")
        .apply()
        .unwrap();
    let err = swapkit::patch!(inlined_double, |x| x * 4)
        .id("triple")
        .apply()
        .unwrap_err();
    assert!(
        matches!(&err, PatchError::AlreadyPatched { target: "patch::inlined_double", patch } if patch == "triple"),
        "{err:?}"
    );
    assert!(err.to_string().contains("another id"), "{err}");
    assert_eq!(
        patch::registry()
            .into_iter()
            .find(|t| t.name == "patch::inlined_double")
            .unwrap()
            .patches
            .len(),
        1
    );
    // Inlining does not defeat the slot: the check is inside the inlined body.
    let mut sum = 0;
    for i in 0..1_000 {
        sum += inlined_double(i);
    }
    assert_eq!(sum, 3 * 499_500);
    first.restore().unwrap();
    assert_eq!(inlined_double(5), 10);
    let err = patch::restore(swapkit::target!(inlined_double)).unwrap_err();
    assert!(
        matches!(
            err,
            PatchError::NotPatched {
                target: "patch::inlined_double"
            }
        ),
        "{err:?}"
    );
}

#[test]
fn methods_and_trait_methods() {
    let mut cart = Cart::with(300);
    assert_eq!(cart.total(), 300);
    let g1 = swapkit::patch!(Cart::total, |cart: &Cart| cart.items.len() as u64)
        .apply()
        .unwrap();
    let g2 = swapkit::patch!(Cart::add, |cart: &mut Cart, cents| {
        cart.items.push(cents * 100);
        0
    })
    .apply()
    .unwrap();
    let g3 = swapkit::patch!(Cart::with, |cents| Cart {
        items: vec![cents, cents]
    })
    .apply()
    .unwrap();
    let g4 = swapkit::patch!(<Cart as Shipping>::shipping, |_, km| km as u64)
        .apply()
        .unwrap();
    assert_eq!(cart.total(), 1);
    assert_eq!(cart.add(2), 0);
    assert_eq!(cart.items, [300, 200]);
    assert_eq!(Cart::with(5), Cart { items: vec![5, 5] });
    assert_eq!(cart.shipping(7), 7);
    let dyn_ship: &dyn Shipping = &cart;
    assert_eq!(
        dyn_ship.shipping(7),
        7,
        "dynamic dispatch goes through the slot too"
    );
    for g in [g1, g2, g3, g4] {
        g.restore().unwrap();
    }
    assert_eq!(cart.total(), 500);
    assert_eq!(cart.shipping(7), 70);
    assert_eq!(
        swapkit::target!(<Cart as Shipping>::shipping).info().name,
        "patch::<Cart as Shipping>::shipping"
    );
    assert_eq!(
        swapkit::target!(Cart::add).info().signature,
        "(&mutCart,u64)->usize"
    );
}

#[swapkit::patchable]
fn greeting(name: &str) -> String {
    format!("hello {name}")
}

#[test]
fn a_replacement_can_call_the_original() {
    let g = swapkit::patch!(greeting, |name| {
        let original = patch::call_original(swapkit::target!(greeting), || greeting(name));
        original.to_uppercase()
    })
    .apply()
    .unwrap();
    assert_eq!(greeting("ann"), "HELLO ANN");
    g.restore().unwrap();
    assert_eq!(greeting("ann"), "hello ann");
}

// ---- registry ----

#[swapkit::patchable]
fn registered(x: u32) -> u32 {
    x
}

#[test]
fn the_registry_lists_targets_and_active_patches() {
    let all = patch::registry();
    let names: Vec<&str> = all.iter().map(|t| t.name).collect();
    for expected in [
        "patch::registered",
        "patch::Cart::total",
        "patch::<Cart as Shipping>::shipping",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let g = swapkit::patch!(registered, |x| x + 1)
        .id("plus-one")
        .rollout(Rollout::percent(25.0))
        .apply()
        .unwrap();
    for k in 0..100u64 {
        patch::with_key(k, || registered(1));
    }
    let status = patch::active()
        .into_iter()
        .find(|t| t.name == "patch::registered")
        .expect("active");
    let [p] = &status.patches[..] else {
        panic!("one patch: {:?}", status.patches)
    };
    assert_eq!(p.id, "plus-one");
    assert_eq!(p.rollout, "25.00% of keys");
    assert!(p.armed && p.healthy);
    assert!(p.hits > 5 && p.hits < 60, "hits {}", p.hits);
    assert!(
        matches!(p.source, patch::PatchSource::InProcess { file, .. } if file.ends_with("patch.rs"))
    );
    assert!(p.applied_at <= std::time::SystemTime::now());
    assert_eq!(status.signature, "(u32)->u32");
    g.restore().unwrap();
    assert!(patch::registry()
        .iter()
        .find(|t| t.name == "patch::registered")
        .unwrap()
        .patches
        .is_empty());
}

// ---- sets ----

#[swapkit::patchable]
fn set_a() -> u32 {
    1
}

#[swapkit::patchable]
fn set_b() -> u32 {
    2
}

#[test]
fn patch_sets_are_all_or_nothing() {
    let set = PatchSet::new()
        .with(swapkit::patch!(set_a, || 10))
        .with(swapkit::patch!(set_b, || 20))
        .apply()
        .unwrap();
    assert_eq!((set_a(), set_b()), (10, 20));
    assert_eq!(set.targets(), ["patch::set_a", "patch::set_b"]);
    set.restore();
    assert_eq!((set_a(), set_b()), (1, 2));

    // One target already patched: the set applies nothing.
    let b = swapkit::patch!(set_b, || 99).apply().unwrap();
    let err = PatchSet::new()
        .with(swapkit::patch!(set_a, || 10))
        .with(swapkit::patch!(set_b, || 20))
        .apply()
        .unwrap_err();
    assert!(
        matches!(&err, PatchError::SetFailed { source } if matches!(**source, PatchError::AlreadyPatched { .. })),
        "{err:?}"
    );
    assert_eq!((set_a(), set_b()), (1, 99));
    assert!(!swapkit::target!(set_a).is_patched());
    b.restore().unwrap();

    let err = PatchSet::new()
        .with(swapkit::patch!(set_a, || 10))
        .with(swapkit::patch!(set_a, || 11))
        .apply()
        .unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    assert!(!swapkit::target!(set_a).is_patched());
}

// ---- rollout ----

#[test]
fn ten_percent_of_100k_keys_is_within_one_percent_sticky_and_only_grows() {
    let r10 = Rollout::percent(10.0);
    let r50 = Rollout::percent(50.0);
    let seed = 0x5eed;
    let keys: Vec<Key> = (0..100_000u64)
        .map(|i| Key::new(format!("user-{i}")))
        .collect();
    let in10: HashSet<usize> = (0..keys.len())
        .filter(|&i| r10.admits_key(seed, Some(&keys[i])))
        .collect();
    let in50: HashSet<usize> = (0..keys.len())
        .filter(|&i| r50.admits_key(seed, Some(&keys[i])))
        .collect();
    assert!(
        (9_000..=11_000).contains(&in10.len()),
        "10% gave {}",
        in10.len()
    );
    assert!(
        (49_000..=51_000).contains(&in50.len()),
        "50% gave {}",
        in50.len()
    );
    assert!(
        in10.is_subset(&in50),
        "raising the percentage dropped a key"
    );
    for &i in in10.iter().take(1000) {
        assert!(
            r10.admits_key(seed, Some(&Key::new(format!("user-{i}")))),
            "not sticky"
        );
    }
    // Another patch id spreads keys differently.
    let other: HashSet<usize> = (0..keys.len())
        .filter(|&i| r10.admits_key(seed + 1, Some(&keys[i])))
        .collect();
    assert!(other != in10);
}

#[swapkit::patchable]
fn variant() -> &'static str {
    "old"
}

#[test]
fn live_rollout_follows_the_request_key() {
    let g = swapkit::patch!(variant, || "new")
        .rollout(Rollout::percent(10.0))
        .apply()
        .unwrap();
    let share = |g: &patch::PatchGuard, p: f64| {
        g.set_percent(p).unwrap();
        (0..10_000u64)
            .filter(|k| patch::with_key(*k, variant) == "new")
            .count()
    };
    let at10 = share(&g, 10.0);
    let at50 = share(&g, 50.0);
    assert!((850..=1150).contains(&at10), "{at10}");
    assert!((4700..=5300).contains(&at50), "{at50}");
    assert_eq!(variant(), "old", "no key: nobody");
    g.restore().unwrap();

    let g = swapkit::patch!(variant, || "beta")
        .rollout(Rollout::matching(|k| k.as_str().starts_with("beta-")).without_key(true))
        .apply()
        .unwrap();
    assert_eq!(patch::with_key("beta-3", variant), "beta");
    assert_eq!(patch::with_key("user-3", variant), "old");
    assert_eq!(variant(), "beta", "no key, configured to apply");
    assert!(matches!(
        g.set_percent(5.0).unwrap_err(),
        PatchError::NotAShare { .. }
    ));
    g.restore().unwrap();
    assert!(matches!(g_restore_twice(), PatchError::NotPatched { .. }));
}

fn g_restore_twice() -> PatchError {
    let g = swapkit::patch!(variant, || "x").apply().unwrap();
    patch::restore(swapkit::target!(variant)).unwrap();
    g.restore().unwrap_err()
}

// ---- panics ----

#[derive(Debug, PartialEq)]
enum QuoteError {
    Patch(String),
}

impl From<PatchPanic> for QuoteError {
    fn from(p: PatchPanic) -> Self {
        QuoteError::Patch(p.message)
    }
}

#[swapkit::patchable]
fn quote(cents: u64) -> Result<u64, QuoteError> {
    Ok(cents)
}

#[swapkit::patchable]
fn label(cents: u64, currency: &str) -> String {
    format!("{cents} {currency}")
}

#[swapkit::patchable]
fn consume(text: String) -> usize {
    text.len()
}

#[test]
fn a_panic_in_a_result_target_becomes_its_error() {
    let g = swapkit::patch!(quote, |_| panic!("quote service down"))
        .apply()
        .unwrap();
    assert_eq!(
        quote(5),
        Err(QuoteError::Patch("quote service down".into()))
    );
    let status = patch::active()
        .into_iter()
        .find(|t| t.name == "patch::quote")
        .unwrap()
        .patches
        .remove(0);
    assert!(!status.healthy);
    assert_eq!(status.panics, 1);
    g.restore().unwrap();
    assert_eq!(quote(5), Ok(5));
}

#[test]
fn a_panic_falls_back_to_the_original_or_propagates_as_configured() {
    let g = swapkit::patch!(label, |_, _| panic!("bad label"))
        .apply()
        .unwrap();
    assert_eq!(label(3, "EUR"), "3 EUR", "fell back to the original");
    g.restore().unwrap();

    let g = swapkit::patch!(label, |_, _| panic!("bad label"))
        .on_panic(PanicPolicy::Propagate)
        .apply()
        .unwrap();
    let caught = std::panic::catch_unwind(|| label(3, "EUR")).unwrap_err();
    assert_eq!(caught.downcast_ref::<&str>(), Some(&"bad label"));
    g.restore().unwrap();

    // An owned argument was consumed by the patch, so the call cannot be made again.
    let g = swapkit::patch!(consume, |_| panic!("consumed"))
        .apply()
        .unwrap();
    assert!(std::panic::catch_unwind(|| consume("abc".into())).is_err());
    g.restore().unwrap();
    assert_eq!(consume("abc".into()), 3);
}

// ---- concurrency ----

#[swapkit::patchable]
fn toggled(x: u64) -> u64 {
    x + 1
}

#[test]
fn ten_thousand_toggles_under_concurrent_calls_never_tear() {
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    let seen_new = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (stop, calls, seen_new) = (&stop, &calls, &seen_new);
            s.spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    // A pair of values that only one implementation produces in full.
                    let r = toggled(i);
                    assert!(
                        r == i + 1 || r == i * 3 + 7,
                        "torn call: toggled({i}) = {r}"
                    );
                    if r == i * 3 + 7 && i * 3 + 7 != i + 1 {
                        seen_new.fetch_add(1, Ordering::Relaxed);
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                    i += 3;
                }
            });
        }
        // Toggle among running calls: on a busy machine the callers may not have started
        // yet, or may sleep through thousands of toggles; go on until some call saw a patch.
        while calls.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        let mut toggles = 0;
        while toggles < 10_000 || seen_new.load(Ordering::Relaxed) == 0 {
            let g = swapkit::patch!(toggled, |x| x * 3 + 7).apply().unwrap();
            std::hint::spin_loop();
            if toggles >= 10_000 {
                std::thread::yield_now();
            }
            g.restore().unwrap();
            toggles += 1;
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(calls.load(Ordering::Relaxed) > 0);
    assert!(
        seen_new.load(Ordering::Relaxed) > 0,
        "no call ever ran the patch"
    );
    assert!(!swapkit::target!(toggled).is_patched());
    assert_eq!(toggled(1), 2);
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[swapkit::patchable]
fn slow(x: u32) -> u32 {
    x
}

#[test]
fn a_restored_patch_is_not_freed_while_a_call_is_inside_it() {
    let dropped = Arc::new(AtomicBool::new(false));
    let inside = Arc::new(Barrier::new(2));
    let release = Arc::new(Barrier::new(2));
    let flag = DropFlag(dropped.clone());
    let (i2, r2) = (inside.clone(), release.clone());
    let g = swapkit::patch!(slow, move |x| {
        let _keep = &flag;
        if x == 1 {
            i2.wait();
            r2.wait();
        }
        x + 100
    })
    .apply()
    .unwrap();
    let caller = std::thread::spawn(|| slow(1));
    inside.wait();
    g.restore().unwrap();
    assert_eq!(slow(1), 1, "new calls run the original at once");
    assert!(
        !dropped.load(Ordering::SeqCst),
        "freed while a call was inside it"
    );
    release.wait();
    assert_eq!(
        caller.join().unwrap(),
        101,
        "the call in flight finished in the patch"
    );
    assert!(
        dropped.load(Ordering::SeqCst),
        "freed when the last call left"
    );
}

#[swapkit::patchable]
fn stale_target(x: u32) -> u32 {
    x
}

#[test]
fn a_stale_guard_never_touches_the_next_patch_on_its_target() {
    for round in 0..50 {
        let stale = swapkit::patch!(stale_target, |x| x + 1).apply().unwrap();
        patch::restore(swapkit::target!(stale_target)).unwrap();
        // The next patch usually reuses the freed one's address; it must not matter.
        let next = swapkit::patch!(stale_target, |x| x + 2).apply().unwrap();
        let err = stale.set_percent(10.0).unwrap_err();
        assert!(
            matches!(err, PatchError::NotPatched { .. }),
            "round {round}: {err:?}"
        );
        drop(stale);
        assert_eq!(
            stale_target(1),
            3,
            "round {round}: the stale guard restored the next patch"
        );
        assert!(swapkit::target!(stale_target).is_patched());
        next.restore().unwrap();
    }
}

#[swapkit::patchable]
fn held_out_of_order(x: u32) -> u32 {
    x
}

#[test]
fn patch_calls_held_and_dropped_out_of_order_keep_their_patch() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let g = swapkit::patch!(held_out_of_order, move |x| {
        let _keep = &flag;
        x + 1
    })
    .apply()
    .unwrap();
    let target = swapkit::target!(held_out_of_order);
    let a = target.enter().expect("patched");
    let b = target.enter().expect("patched");
    drop(a);
    // Before the fix, C took B's hazard slot and overwrote it.
    let c = target.enter().expect("patched");
    g.restore().unwrap();
    drop(c);
    assert!(
        !dropped.load(Ordering::SeqCst),
        "the patch was freed under B"
    );
    let chosen = b.choose().expect("B's patch admits every call");
    assert_eq!(
        chosen.try_call(|f| f(1)).unwrap(),
        2,
        "B still runs its patch"
    );
    drop(b);
    assert!(dropped.load(Ordering::SeqCst), "freed once B left");
}

// ---- stacks: several patches on one target ----

#[swapkit::patchable]
fn stacked(x: u64) -> u64 {
    x
}

fn beta(key: &Key) -> bool {
    key.as_str().starts_with("beta-")
}

#[test]
fn patches_stack_and_the_first_that_admits_the_key_runs() {
    let target = swapkit::target!(stacked);
    let base = swapkit::patch!(stacked, |x| x + 100)
        .id("base")
        .apply()
        .unwrap();
    let top = swapkit::patch!(stacked, |x| x + 200)
        .id("beta")
        .rollout(Rollout::matching(beta))
        .apply()
        .unwrap();
    assert_eq!(patch::with_key("beta-1", || stacked(1)), 201);
    assert_eq!(patch::with_key("user-1", || stacked(1)), 101);
    assert_eq!(
        stacked(1),
        101,
        "no key: the predicate declines, the base runs"
    );

    // The registry shows the stack in the order a call checks it, each with its own counts.
    let status = patch::registry()
        .into_iter()
        .find(|t| t.name == "patch::stacked")
        .unwrap();
    let ids: Vec<&str> = status.patches.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["beta", "base"]);
    assert_eq!(
        status.patches.iter().map(|p| p.hits).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(status.patches[0].rollout, "keys matching a predicate");

    // Restoring the bottom one leaves the top one alone.
    base.restore().unwrap();
    assert_eq!(patch::with_key("beta-1", || stacked(1)), 201);
    assert_eq!(
        patch::with_key("user-1", || stacked(1)),
        1,
        "original again"
    );
    assert!(target.is_patched());
    top.restore().unwrap();
    assert_eq!(patch::with_key("beta-1", || stacked(1)), 1);
    assert!(!target.is_patched());
}

#[test]
fn one_patch_of_a_stack_is_restored_by_id_or_all_at_once() {
    swapkit::patch!(stacked_too, |x| x + 1)
        .id("one")
        .apply()
        .unwrap()
        .keep();
    swapkit::patch!(stacked_too, |x| x + 2)
        .id("two")
        .rollout(Rollout::percent(50.0))
        .apply()
        .unwrap()
        .keep();
    swapkit::patch!(stacked_too, |x| x + 3)
        .id("three")
        .rollout(Rollout::matching(beta))
        .apply()
        .unwrap()
        .keep();
    let target = swapkit::target!(stacked_too);
    let err = patch::restore_id(target, "four").unwrap_err();
    assert!(matches!(err, PatchError::NotPatched { .. }), "{err:?}");

    // Half the keys get "two" over "one"; taking "two" out sends all of them to "one".
    let seen = |k: u64| patch::with_key(k, || stacked_too(0));
    let before: HashSet<u64> = (0..200).map(seen).collect();
    assert_eq!(before, HashSet::from([1, 2]));
    patch::restore_id(target, "two").unwrap();
    assert!((0..200).all(|k| seen(k) == 1));
    assert_eq!(patch::with_key("beta-9", || stacked_too(0)), 3);

    assert_eq!(patch::restore(target).unwrap(), ["three", "one"]);
    assert_eq!(stacked_too(0), 0);
    let err = patch::restore(target).unwrap_err();
    assert!(matches!(err, PatchError::NotPatched { .. }), "{err:?}");
}

#[swapkit::patchable]
fn stacked_too(x: u64) -> u64 {
    x
}

#[swapkit::patchable]
fn stacked_share(x: u64) -> u64 {
    x
}

#[test]
fn a_lower_patch_keeps_its_own_rollout_and_guard() {
    let low = swapkit::patch!(stacked_share, |x| x + 1)
        .id("low")
        .rollout(Rollout::percent(0.0))
        .apply()
        .unwrap();
    let high = swapkit::patch!(stacked_share, |x| x + 2)
        .id("high")
        .rollout(Rollout::matching(beta))
        .apply()
        .unwrap();
    assert_eq!(patch::with_key("user-1", || stacked_share(0)), 0);
    // The guard of the lower patch still changes its share under the one above.
    low.set_percent(100.0).unwrap();
    assert_eq!(patch::with_key("user-1", || stacked_share(0)), 1);
    assert_eq!(patch::with_key("beta-1", || stacked_share(0)), 2);
    let err = high.set_percent(10.0).unwrap_err();
    assert!(
        matches!(&err, PatchError::NotAShare { patch, .. } if patch == "high"),
        "{err:?}"
    );
    drop(high);
    assert_eq!(patch::with_key("beta-1", || stacked_share(0)), 1);
    drop(low);
    assert_eq!(patch::with_key("beta-1", || stacked_share(0)), 0);
}

#[swapkit::patchable]
fn stacked_race(x: u64) -> u64 {
    x
}

/// The unlucky interleaving: calls keep running while the middle of a stack comes and goes.
/// Every call sees either the stack with it or the one without; the patch below never
/// disappears, and a removed patch is freed only after the last call inside it.
#[test]
fn patches_come_and_go_in_the_middle_of_a_stack_under_concurrent_calls() {
    let _base = swapkit::patch!(stacked_race, |x| x + 1)
        .id("base")
        .apply()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..2u64)
        .map(|w| {
            let (stop, calls) = (stop.clone(), calls.clone());
            std::thread::spawn(move || {
                let mut k = w;
                while !stop.load(Ordering::Relaxed) {
                    k += 2;
                    let key = if k % 4 == 0 {
                        format!("beta-{k}")
                    } else {
                        format!("user-{k}")
                    };
                    let got = patch::with_key(key.as_str(), || stacked_race(10));
                    if key.starts_with("beta-") {
                        assert!(got == 11 || got == 12, "beta key got {got}");
                    } else {
                        assert_eq!(got, 11, "a user key lost the base patch");
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let freed = Arc::new(AtomicU64::new(0));
    for _ in 0..2_000 {
        let flag = CountDrop(freed.clone());
        let g = swapkit::patch!(stacked_race, move |x| {
            let _keep = &flag;
            x + 2
        })
        .id("beta")
        .rollout(Rollout::matching(beta))
        .apply()
        .unwrap();
        std::thread::yield_now();
        g.restore().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(calls.load(Ordering::Relaxed) > 0);
    // One more change with no call running releases every stack a call held at the last one.
    swapkit::patch!(stacked_race, |x| x)
        .id("flush")
        .apply()
        .unwrap()
        .restore()
        .unwrap();
    assert_eq!(
        freed.load(Ordering::SeqCst),
        2_000,
        "every removed patch is freed"
    );
    let status = patch::registry()
        .into_iter()
        .find(|t| t.name == "patch::stacked_race")
        .unwrap();
    assert_eq!(status.patches.len(), 1);
}

struct CountDrop(Arc<AtomicU64>);

impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}
