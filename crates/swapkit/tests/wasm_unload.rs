//! True unload: 1,000 swaps alternating two wasm versions while calls run, and resident memory
//! comes back to within 10% of where it was after the first 10 swaps. Alone in its binary, so
//! no other test moves the process's memory while it measures.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{wasm_cache, Fixture};
use fixture_api::Greeter;
use swapkit::Swapper;

/// Resident set size in bytes, from `/proc/self/statm`.
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn a_thousand_wasm_swaps_under_load_give_their_memory_back() {
    let Some(_) = rss() else {
        println!("skipped: no /proc/self/statm on this platform to read RSS from");
        return;
    };
    let swapper = Swapper::builder()
        .wasm_cache_dir(wasm_cache())
        .history(2)
        .build()
        .unwrap();
    let versions = [
        Fixture::GreeterV1.wasm_path(),
        Fixture::GreeterV2.wasm_path(),
    ];
    swapper.load_files([&versions[0]]).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (greeter, stop, calls) = (greeter.clone(), stop.clone(), calls.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let answer = greeter.greet("load").expect("no failed call");
                    assert!(
                        answer.ends_with("(v1)") || answer.ends_with("(v2)"),
                        "{answer}"
                    );
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let swap = |i: usize| {
        swapper.load_files([&versions[i % 2]]).expect("swap");
    };
    for i in 1..=10 {
        swap(i);
    }
    swapper.wait_drained(Duration::from_secs(10)).unwrap();
    let after_10 = rss().unwrap();
    for i in 11..=1000 {
        swap(i);
    }
    swapper.wait_drained(Duration::from_secs(10)).unwrap();
    let after_1000 = rss().unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.join().expect("callers saw no failure");
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "RSS after 10 swaps {:.1} MiB, after 1000 swaps {:.1} MiB ({:+.2}%), {} calls served",
        mib(after_10),
        mib(after_1000),
        (after_1000 as f64 / after_10 as f64 - 1.0) * 100.0,
        calls.load(Ordering::Relaxed)
    );
    assert_eq!(
        swapper.generation(),
        1001,
        "the first load, then 1,000 swaps"
    );
    assert!(
        after_1000 as f64 <= after_10 as f64 * 1.10,
        "RSS grew from {after_10} to {after_1000} bytes over 990 swaps"
    );
}
