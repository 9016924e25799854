//! A pricing service tries two new releases of its pricing plugin as in-process canaries,
//! under load from two threads, each request on its own user's key:
//!
//! 1. release 1.2.0 is faulty (it panics on one item in seven). It starts at 1% of users with
//!    a gate (steps 1% → 10% → 50% → promote); the gate compares it with 1.0.0, fails it and
//!    aborts it. Only calls in its 1% ever fail.
//! 2. a drill: 1.1.0 at 50%, aborted by hand under load, to time the abort.
//! 3. release 1.1.0 is good: the gate moves it through its steps and promotes it.
//!
//! Every new generation passes a `before_publish` smoke test first. The process exits
//! non-zero if a call outside a canary's share failed, if the faulty release was not aborted,
//! or if the good one was not promoted.
//!
//! Run it with `cargo run -p canary`; it builds the plugins itself. Pass `--wasm` to run the
//! same plugins on the wasm backend.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canary_api::Pricing;
use swapkit::patch::with_key;
use swapkit::{CallError, Probation, Swapper};

/// What the request threads saw.
#[derive(Default)]
struct Tally {
    /// The canary's version, while one runs (its calls are the canary's share).
    canary: std::sync::Mutex<Option<String>>,
    calls: AtomicU64,
    canary_calls: AtomicU64,
    canary_failed: AtomicU64,
    /// Calls outside the canary's share that failed: must stay 0.
    failed_outside: AtomicU64,
    /// When the last call the canary answered ended, in ns since `epoch`.
    last_canary_ns: AtomicU64,
}

fn serve(swapper: Arc<Swapper>, tally: Arc<Tally>, stop: Arc<AtomicBool>, epoch: Instant, t: u64) {
    let pricing = swapper.client::<dyn Pricing>().expect("the pricing client");
    let mut canary = None;
    let mut n = t;
    while !stop.load(Ordering::Relaxed) {
        n += 2;
        if n % 1024 < 2 {
            canary = tally.canary.lock().unwrap().clone();
        }
        let user = format!("user-{}", n % 10_000);
        let result = with_key(user, || pricing.price(n % 1000, (n % 20) as u32));
        tally.calls.fetch_add(1, Ordering::Relaxed);
        let by = match &result {
            Ok((_, by)) => by.as_str(),
            Err(CallError::Panic { site, .. } | CallError::Trap { site, .. }) => &*site.version,
            Err(_) => "",
        };
        let in_canary = canary.as_deref() == Some(by);
        if in_canary {
            tally.canary_calls.fetch_add(1, Ordering::Relaxed);
            let now = epoch.elapsed().as_nanos() as u64;
            tally.last_canary_ns.fetch_max(now, Ordering::Relaxed);
        }
        match result {
            Ok(_) => {}
            Err(_) if in_canary => drop(tally.canary_failed.fetch_add(1, Ordering::Relaxed)),
            Err(e) => {
                eprintln!("FAILED outside the canary's share: {e}");
                tally.failed_outside.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Waits for the running canary to end, printing each step it takes; `None` on timeout.
fn follow(swapper: &Swapper, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let mut last_percent = None;
    while Instant::now() < deadline {
        let Some(s) = swapper.canary_status() else {
            return swapper.last_canary();
        };
        if last_percent != Some(s.percent) {
            last_percent = Some(s.percent);
            println!(
                "   at {:>6.2}% of users after {:.2?}",
                s.percent, s.running_for
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn print_versions(swapper: &Swapper) {
    if let Some(s) = swapper.canary_status() {
        for (name, v) in [("stable", &s.stable), ("canary", &s.canary)] {
            println!(
                "   {name} {}: {} calls, {} failed, p50 {:?}, p99 {:?} ({} timed)",
                v.version,
                v.counts.calls,
                v.counts.errors + v.counts.panics + v.counts.traps,
                v.p50.unwrap_or_default(),
                v.p99.unwrap_or_default(),
                v.timed
            );
        }
    }
}

fn run(wasm: bool) -> Result<bool, Box<dyn std::error::Error>> {
    println!("== building pricing 1.0.0, 1.1.0 (good) and 1.2.0 (faulty) ==");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../Cargo.toml");
    let mut build = swapkit_build::PluginBuild::new(workspace).packages([
        "canary-pricing-v1",
        "canary-pricing-v2",
        "canary-pricing-bad",
    ]);
    if wasm {
        build = build.wasm().release(true);
    }
    let built = build.run()?;
    let (v1, good, bad) = (&built[0].path, &built[1].path, &built[2].path);

    let swapper = Arc::new(
        Swapper::builder()
            .interface::<dyn Pricing>()
            // Every new generation must price a sample order before it may serve.
            .before_publish(|candidate| {
                let (cents, by) = candidate.client::<dyn Pricing>().price(1, 1)?;
                if cents == 0 {
                    return Err(format!("{by} priced a sample order at 0").into());
                }
                Ok(())
            })
            .build()?,
    );
    swapper.load_files([v1])?;
    let epoch = Instant::now();
    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let workers: Vec<_> = (0..2)
        .map(|t| {
            let (s, tally, stop) = (swapper.clone(), tally.clone(), stop.clone());
            std::thread::spawn(move || serve(s, tally, stop, epoch, t))
        })
        .collect();
    println!(
        "== serving pricing 1.0.0 on the {} backend, 2 request threads ==",
        if wasm { "wasm" } else { "native" }
    );
    std::thread::sleep(Duration::from_millis(200));

    let gate = Probation::new(Duration::from_millis(300))
        .min_calls(50)
        .failed_checks(2)
        // Calls here take microseconds, and on a shared CI machine a thread preempted in the
        // middle of a call makes it last milliseconds: judge latency only past 10 ms of
        // difference, so that scheduling noise never fails a good release.
        .latency_slack(Duration::from_millis(10))
        .steps([1.0, 10.0, 50.0]);

    println!("== canary 1.2.0 (faulty) at 1%, gated: 1% -> 10% -> 50% -> promote ==");
    *tally.canary.lock().unwrap() = Some("1.2.0".into());
    std::thread::sleep(Duration::from_millis(5));
    swapper
        .canary(bad)
        .percent(1.0)
        .gate(gate.clone())
        .start()?;
    let outcome = follow(&swapper, Duration::from_secs(60));
    let caught = outcome.as_deref().is_some_and(|o| o.contains("aborted"));
    println!(
        "   {}",
        outcome.as_deref().unwrap_or("still running after 60 s")
    );
    println!(
        "   its share: {} calls, {} failed; failed outside its share: {}",
        tally.canary_calls.swap(0, Ordering::Relaxed),
        tally.canary_failed.swap(0, Ordering::Relaxed),
        tally.failed_outside.load(Ordering::Relaxed)
    );

    println!("== drill: canary 1.1.0 at 50% by hand, then an abort under load ==");
    *tally.canary.lock().unwrap() = Some("1.1.0".into());
    std::thread::sleep(Duration::from_millis(5));
    swapper.canary(good).percent(50.0).manual().start()?;
    std::thread::sleep(Duration::from_millis(200));
    print_versions(&swapper);
    let aborting = epoch.elapsed().as_nanos() as u64;
    let started = Instant::now();
    swapper.abort_canary()?;
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    let last = tally.last_canary_ns.load(Ordering::Relaxed);
    let after = Duration::from_nanos(last.saturating_sub(aborting));
    println!(
        "   abort returned in {took:.2?}; the last call the canary answered ended {after:.2?} after the abort began"
    );
    tally.canary_calls.store(0, Ordering::Relaxed);

    println!("== canary 1.1.0 (good) at 1%, gated: 1% -> 10% -> 50% -> promote ==");
    swapper.canary(good).percent(1.0).gate(gate).start()?;
    let outcome = follow(&swapper, Duration::from_secs(60));
    let promoted = outcome.as_deref().is_some_and(|o| o.contains("promoted"));
    println!(
        "   {}",
        outcome.as_deref().unwrap_or("still running after 60 s")
    );
    *tally.canary.lock().unwrap() = None;
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().map_err(|_| "a request thread panicked")?;
    }
    let pricing = swapper.client::<dyn Pricing>()?;
    let serving = pricing.price(1, 10)?.1;
    let failed_outside = tally.failed_outside.load(Ordering::Relaxed);
    println!(
        "== done: {} calls; now serving {serving}; failed outside a canary's share: {failed_outside} ==",
        tally.calls.load(Ordering::Relaxed)
    );
    Ok(caught && promoted && serving == "1.1.0" && failed_outside == 0)
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // The faulty canary's panics are expected here: one log line each would drown the story.
                .unwrap_or_else(|_| "warn,swapkit::call=off".into()),
        )
        .init();
    let wasm = std::env::args().any(|a| a == "--wasm");
    match run(wasm) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("FAILED: see above");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
