//! The cost of a canary on the call path, and how fast an abort takes effect.
//!
//! - `canary/*`: a keyed call (each iteration sets one of 1,024 request keys, then calls)
//!   into a native plugin with no canary, against the same call with a canary at 10% and at
//!   50%, and a call with no key. The route reads the key's hash and buckets it; one call in
//!   about 32 is timed for the latency comparison.
//! - `abort drill` (printed): with two threads calling under rotating keys into a canary at
//!   50%, the time `abort_canary` takes to return, and the time from the start of the abort to
//!   the end of the last call the canary answered (calls in flight finish where they started).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use fixture_api::Greeter;
use swapkit::patch::{set_key, Key};
use swapkit::Swapper;

#[path = "support.rs"]
mod support;

fn keys() -> Vec<Key> {
    (0..1024).map(|i| Key::new(format!("user-{i}"))).collect()
}

fn swapper(v1: &std::path::Path) -> Swapper {
    let swapper = Swapper::new().unwrap();
    swapper.load_files([v1]).unwrap();
    swapper
}

fn calls(c: &mut Criterion) {
    let built = support::release_artifacts(&["fixture-greeter-v1", "fixture-greeter-v2"]);
    let (v1, v2) = (&built[0], &built[1]);
    let plain = swapper(v1);
    let at10 = swapper(v1);
    at10.canary(v2).percent(10.0).start().unwrap();
    let at50 = swapper(v1);
    at50.canary(v2).percent(50.0).start().unwrap();
    let keys = keys();
    let mut group = c.benchmark_group("canary");
    for (name, s) in [
        ("keyed_plain", &plain),
        ("keyed_canary_10", &at10),
        ("keyed_canary_50", &at50),
    ] {
        let client = s.client::<dyn Greeter>().unwrap();
        let mut i = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let _key = set_key(keys[i & 1023].clone());
                client.score(black_box(7), black_box("abc")).unwrap()
            })
        });
    }
    for (name, s) in [("unkeyed_plain", &plain), ("unkeyed_canary_10", &at10)] {
        let client = s.client::<dyn Greeter>().unwrap();
        group.bench_function(name, |b| {
            b.iter(|| client.score(black_box(7), black_box("abc")).unwrap())
        });
    }
    group.finish();
    abort_drill(v1, v2);
}

/// Times aborts under load; prints the median and the worst of 40.
fn abort_drill(v1: &std::path::Path, v2: &std::path::Path) {
    let swapper = Arc::new(swapper(v1));
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let last_canary = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..2)
        .map(|t| {
            let (swapper, stop, last) = (swapper.clone(), stop.clone(), last_canary.clone());
            std::thread::spawn(move || {
                let client = swapper.client::<dyn Greeter>().unwrap();
                let keys = keys();
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    i += 2;
                    let _key = set_key(keys[i & 1023].clone());
                    if client.version().unwrap() == "2.0.0" {
                        last.fetch_max(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let (mut returned, mut last_call) = (vec![], vec![]);
    for _ in 0..40 {
        swapper.canary(v2).percent(50.0).start().unwrap();
        std::thread::sleep(Duration::from_millis(10));
        let begun = epoch.elapsed();
        swapper.abort_canary().unwrap();
        returned.push(epoch.elapsed() - begun);
        std::thread::sleep(Duration::from_millis(10));
        let last = Duration::from_nanos(last_canary.load(Ordering::Relaxed));
        last_call.push(last.saturating_sub(begun));
    }
    stop.store(true, Ordering::Relaxed);
    workers.into_iter().for_each(|w| w.join().unwrap());
    for v in [&mut returned, &mut last_call] {
        v.sort();
    }
    println!(
        "abort drill (40 aborts, 2 threads calling): abort returned in {:?} median, {:?} worst; \
         the last canary call ended {:?} median, {:?} worst, after the abort began",
        returned[20], returned[39], last_call[20], last_call[39]
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = calls
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
