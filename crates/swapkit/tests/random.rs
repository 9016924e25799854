//! Random sequences of calls, pins, reloads and rollbacks on more threads than cores, with real
//! native plugins. Every generation a swap supersedes must retire exactly once (each instance's
//! `on_free` runs once, never while a call or pin is in it) and promptly: once the last call
//! and pin are gone, nothing is left draining. `SWAPKIT_SEED` replays a sequence.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Fixture, Logs};
use fixture_api::Greeter;

/// A small generator (xorshift64*), so a failing sequence can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn version_of(greeting: &str) -> &'static str {
    if greeting.ends_with("(v1)") {
        "1.0.0"
    } else if greeting.ends_with("(v2)") {
        "2.0.0"
    } else {
        panic!("unexpected greeting {greeting:?}")
    }
}

#[test]
fn random_calls_pins_reloads_and_rollbacks_retire_every_generation_once() {
    let seed: u64 = std::env::var("SWAPKIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()));
    eprintln!("SWAPKIT_SEED={seed}");
    let logs = Logs::default();
    let swapper = logs.builder().build().unwrap();
    let (v1, v2) = (Fixture::GreeterV1.path(), Fixture::GreeterV2.path());
    swapper.load_files([&v1]).unwrap();
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (swapper, stop, calls) = (&swapper, &stop, &calls);
            s.spawn(move || {
                let mut rng =
                    Rng((seed.wrapping_add(t) | 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
                let greeter = swapper.client::<dyn Greeter>().unwrap();
                let mut pins = vec![];
                while !stop.load(Ordering::Relaxed) {
                    match rng.below(10) {
                        0..=5 => {
                            let answer = greeter.greet("r").expect("no call may fail");
                            version_of(&answer);
                        }
                        6 | 7 => {
                            // A unit of work: one version throughout.
                            let pin = swapper.pin();
                            let client = pin.client::<dyn Greeter>();
                            let first = version_of(&client.greet("p").unwrap());
                            assert_eq!(client.version().unwrap(), first);
                            if rng.below(2) == 0 {
                                pins.push(pin); // held across later operations
                            }
                        }
                        _ => {
                            if !pins.is_empty() {
                                let i = rng.below(pins.len() as u64) as usize;
                                drop(pins.swap_remove(i));
                            }
                        }
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
        for _ in 0..300 {
            match rng.below(4) {
                0 => drop(swapper.load_files([&v1]).unwrap()),
                1 => drop(swapper.load_files([&v2]).unwrap()),
                2 => drop(swapper.reload().unwrap()),
                // The history may be empty right after a start; that is a clear error.
                _ => drop(swapper.rollback()),
            }
            let seen = calls.load(Ordering::Relaxed);
            while calls.load(Ordering::Relaxed) < seen + 4 {
                std::thread::yield_now();
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    // No call and no pin is left: everything superseded has retired already, with no later
    // swap to help.
    swapper
        .wait_drained(Duration::ZERO)
        .expect("a superseded generation is still held with no call or pin inside");
    assert!(swapper.status().draining.is_empty());
    let current = swapper.status().current.plugins[0].version.clone();
    for version in ["1.0.0", "2.0.0"] {
        let loads = logs.count("greeter", version, "on_load");
        let frees = logs.count("greeter", version, "on_free");
        let live = usize::from(current == version);
        assert_eq!(
            loads,
            frees + live,
            "{version}: {loads} loads, {frees} frees, {live} live (seed {seed})"
        );
    }
}
