//! Patch a live pricing service: while worker threads serve quotes for 1,000 users, a new
//! pricing rule is applied to 10% of users, raised to 50%, a third price for beta testers is
//! stacked above it, and both are restored one at a time. No restart, no failed request, and a
//! user who got the new price at 10% keeps it at 50%.
//!
//! Run it with `cargo run --release -p patch-example`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use swapkit::patch::{self, Rollout};

/// The service's pricing: 100 cents a unit, 5% off from 10 units.
#[swapkit::patchable]
fn quote(units: u64) -> u64 {
    let cents = units * 100;
    if units >= 10 {
        cents * 95 / 100
    } else {
        cents
    }
}

/// The new rule under test: 10% off from 5 units. It calls the original for the base price.
fn new_quote(units: u64) -> u64 {
    let base = patch::call_original(swapkit::target!(quote), || quote(units));
    if units >= 5 {
        units * 100 * 90 / 100
    } else {
        base
    }
}

/// The beta testers' price: 20% off. Stacked above the 10% rule for users 0 to 49.
fn beta_quote(units: u64) -> u64 {
    units * 100 * 80 / 100
}

/// What the workers saw in one phase: requests, failures, and the users that got new prices.
#[derive(Default)]
struct Phase {
    requests: AtomicU64,
    new_price: AtomicU64,
    beta_price: AtomicU64,
    users_with_new_price: Mutex<HashSet<u64>>,
}

const USERS: u64 = 1_000;

fn serve(phase: &Phase, stop: &AtomicBool, worker: u64) {
    let mut user = worker;
    while !stop.load(Ordering::Relaxed) {
        user = (user + 7) % USERS;
        // Each request runs with its user as the rollout key.
        let price = patch::with_key(user, || quote(5));
        phase.requests.fetch_add(1, Ordering::Relaxed);
        if price == 450 {
            phase.new_price.fetch_add(1, Ordering::Relaxed);
            phase.users_with_new_price.lock().unwrap().insert(user);
        } else if price == 400 {
            assert!(user < 50, "user {user} got the beta price");
            phase.beta_price.fetch_add(1, Ordering::Relaxed);
        } else {
            assert_eq!(price, 500, "a quote was neither the old nor a new price");
        }
    }
}

fn run_phase(label: &str) -> HashSet<u64> {
    let phase = Phase::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for w in 0..2 {
            let (phase, stop) = (&phase, &stop);
            s.spawn(move || serve(phase, stop, w));
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
    });
    let users = phase.users_with_new_price.into_inner().unwrap();
    let requests = phase.requests.load(Ordering::Relaxed);
    let new = phase.new_price.load(Ordering::Relaxed);
    let beta = phase.beta_price.load(Ordering::Relaxed);
    println!(
        "{label:<28} {requests:>10} requests, {:>5.1}% at the new price, {:>4} of {USERS} users, \
         {:>4.1}% at the beta price",
        100.0 * new as f64 / requests.max(1) as f64,
        users.len(),
        100.0 * beta as f64 / requests.max(1) as f64,
    );
    users
}

fn main() {
    println!(
        "quote(5) = {} cents, quote(10) = {} cents\n",
        quote(5),
        quote(10)
    );
    run_phase("unpatched");

    let guard = swapkit::patch!(quote, new_quote)
        .id("volume-discount-v2")
        .rollout(Rollout::percent(10.0))
        .apply()
        .expect("quote is not patched yet");
    let at10 = run_phase("patched, rolled out to 10%");

    guard.set_percent(50.0).expect("a percentage rollout");
    let at50 = run_phase("raised to 50%");
    let kept = at10.iter().filter(|u| at50.contains(u)).count();
    println!(
        "{:<28} {kept} of the {} users who had it at 10% still have it",
        "stickiness",
        at10.len()
    );

    // A second version beside the first: patches on one target stack, and a call runs the
    // first (newest) whose rollout admits its key.
    let beta = swapkit::patch!(quote, beta_quote)
        .id("beta-testers")
        .rollout(Rollout::matching(|user| {
            user.as_str().parse::<u64>().is_ok_and(|u| u < 50)
        }))
        .apply()
        .expect("a second patch with its own id stacks");
    let stacked = run_phase("beta testers stacked above");

    println!("\nregistry while patched:");
    for t in patch::registry() {
        println!("  {} {}", t.name, t.signature);
        for p in &t.patches {
            println!(
                "    `{}` ({}), rollout {}, {} hits, healthy: {}",
                p.id, p.source, p.rollout, p.hits, p.healthy
            );
        }
    }

    beta.restore().expect("still applied");
    let after_beta = run_phase("beta restored, 50% stays");
    assert!(
        stacked.iter().all(|u| *u >= 50) && after_beta.len() >= stacked.len(),
        "restoring the beta patch changed the other one"
    );
    guard.restore().expect("still applied");
    println!();
    run_phase("restored");
    assert!(!swapkit::target!(quote).is_patched());
    assert_eq!(
        kept,
        at10.len(),
        "a user lost the new price when the rollout grew"
    );
}
