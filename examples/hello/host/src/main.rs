//! The swapkit demo: a service calls its `Greeter` plugin from several threads without pause,
//! while the main thread swaps the plugin between v1 and v2 many times, publishing each new
//! artifact by atomic rename and reloading, then rolls back. At the end it prints what happened:
//! calls made, calls failed (always 0), which versions answered, and when each old generation
//! drained.
//!
//! Run it with `cargo run --release -p hello`; it builds the two plugin versions itself.
//! Options: `--threads N` (default 4), `--swaps N` (default 40), `--interval-ms N` (default 25).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hello_api::Greeter;
use swapkit::Swapper;

struct Options {
    threads: usize,
    swaps: usize,
    interval: Duration,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        threads: 4,
        swaps: 40,
        interval: Duration::from_millis(25),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || -> Result<u64, String> {
            let v = args.next().ok_or(format!("{flag} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{flag}: `{v}` is not a number"))
        };
        match flag.as_str() {
            "--threads" => o.threads = value()?.max(1) as usize,
            "--swaps" => o.swaps = value()? as usize,
            "--interval-ms" => o.interval = Duration::from_millis(value()?),
            "-h" | "--help" => {
                return Err("usage: hello [--threads N] [--swaps N] [--interval-ms N]".into())
            }
            other => return Err(format!("unknown option `{other}`; try --help")),
        }
    }
    Ok(o)
}

/// Publishes `artifact` into `dir` as `greeter.so` the safe way: write a hidden temporary
/// file, then rename it over the old one, so a reload never sees half a file.
fn publish(artifact: &Path, dir: &Path) -> std::io::Result<()> {
    let tmp = dir.join(".greeter.tmp");
    std::fs::copy(artifact, &tmp)?;
    std::fs::rename(
        tmp,
        dir.join(format!("greeter.{}", std::env::consts::DLL_EXTENSION)),
    )
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match run(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(o: &Options) -> Result<bool, Box<dyn std::error::Error>> {
    println!("== building greeter v1 and v2 ==");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../Cargo.toml");
    let built = swapkit_build::PluginBuild::new(workspace)
        .packages(["hello-greeter-v1", "hello-greeter-v2"])
        .release(!cfg!(debug_assertions))
        .run()?;
    let (v1, v2): (PathBuf, PathBuf) = (built[0].path.clone(), built[1].path.clone());
    println!("   v1: {}\n   v2: {}", v1.display(), v2.display());

    let plugins = tempfile::tempdir()?;
    publish(&v1, plugins.path())?;
    let retire_log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink_log = retire_log.clone();
    let swapper = Swapper::builder()
        .interface::<dyn Greeter>()
        .log_sink(move |line| sink_log.lock().unwrap().push(line.message.to_owned()))
        .build()?;
    swapper.load_dir(plugins.path())?;
    let greeter = swapper.client::<dyn Greeter>()?;
    println!(
        "== serving v{} from {} with {} threads ==",
        greeter.version()?,
        plugins.path().display(),
        o.threads
    );

    let stop = AtomicBool::new(false);
    let failed = AtomicU64::new(0);
    let mixed = AtomicU64::new(0);
    let started = Instant::now();
    let mut first_call_after_reload = vec![];

    let per_thread: Vec<(HashMap<String, u64>, u64)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..o.threads)
            .map(|t| {
                let (greeter, swapper, stop, failed, mixed) =
                    (&greeter, &swapper, &stop, &failed, &mixed);
                s.spawn(move || {
                    let mut answers: HashMap<String, u64> = HashMap::new();
                    let mut requests = 0u64;
                    let name = format!("client-{t}");
                    while !stop.load(Ordering::Relaxed) {
                        match greeter.greet(&name) {
                            Ok(text) => {
                                *answers.entry(text.replace(&name, "{name}")).or_default() += 1
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                eprintln!("call failed: {e}");
                            }
                        }
                        // Every 100th call is a pinned "request" of two calls: one version.
                        if answers.values().sum::<u64>() % 100 == 0 {
                            let pin = swapper.pin();
                            let client = pin.client::<dyn Greeter>();
                            match (client.version(), client.version()) {
                                (Ok(a), Ok(b)) if a == b => requests += 1,
                                (Ok(_), Ok(_)) => {
                                    mixed.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    (answers, requests)
                })
            })
            .collect();

        for i in 1..=o.swaps {
            std::thread::sleep(o.interval);
            let (artifact, label) = if i % 2 == 1 { (&v2, "v2") } else { (&v1, "v1") };
            let mut t = Instant::now();
            let outcome = publish(artifact, plugins.path())
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    t = Instant::now();
                    swapper.reload().map_err(|e| e.to_string())
                });
            match outcome {
                Ok(report) => {
                    let version = greeter.version().unwrap_or_default();
                    let to_first_call = t.elapsed();
                    first_call_after_reload.push(to_first_call);
                    println!(
                        "swap {i:>3}: -> {label} as generation {:>3}, reload {:>7.1?}, first call served by v{version} after {to_first_call:.1?}",
                        report.generation, report.took
                    );
                }
                Err(e) => println!("swap {i:>3}: refused: {e}"),
            }
        }
        std::thread::sleep(o.interval);
        match swapper.rollback() {
            Ok(report) => println!(
                "rollback : -> generation {}, serving v{} again",
                report.generation,
                greeter.version().unwrap_or_default()
            ),
            Err(e) => println!("rollback : refused: {e}"),
        }
        std::thread::sleep(o.interval);
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .collect()
    });
    let elapsed = started.elapsed();

    let drained = swapper.wait_drained(Duration::from_secs(10));
    let status = swapper.status();
    let mut answers: HashMap<String, u64> = HashMap::new();
    let mut requests = 0;
    for (a, r) in per_thread {
        requests += r;
        for (k, v) in a {
            *answers.entry(k).or_default() += v;
        }
    }
    let calls: u64 = answers.values().sum::<u64>() + failed.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    let mixed = mixed.load(Ordering::Relaxed);

    println!("\n== report ==");
    println!(
        "calls made       : {calls} in {elapsed:.2?} ({:.0} calls/s)",
        calls as f64 / elapsed.as_secs_f64()
    );
    println!("calls failed     : {failed}");
    println!("pinned requests  : {requests}, of which saw two versions: {mixed}");
    println!("answers by version:");
    let mut answers: Vec<_> = answers.into_iter().collect();
    answers.sort();
    for (text, n) in &answers {
        println!("  {n:>10}  {text}");
    }
    first_call_after_reload.sort();
    if let (Some(min), Some(max)) = (
        first_call_after_reload.first(),
        first_call_after_reload.last(),
    ) {
        let median = first_call_after_reload[first_call_after_reload.len() / 2];
        println!(
            "reload to first call on new code: median {median:.1?}, min {min:.1?}, max {max:.1?}"
        );
    }
    println!("generations drained: {}", status.drained.len());
    for d in status.drained.iter().rev().take(5).rev() {
        let plugins: Vec<String> = d.plugins.iter().map(|(n, v)| format!("{n} {v}")).collect();
        match d.drained_after {
            Some(t) => println!(
                "  generation {:>3} [{}] drained {t:.1?} after it was superseded",
                d.id,
                plugins.join(", ")
            ),
            None => println!("  generation {:>3} [{}] drained", d.id, plugins.join(", ")),
        }
    }
    if status.drained.len() > 5 {
        println!("  ... (the last 5 shown)");
    }
    let retire_lines = retire_log.lock().unwrap();
    if let Some(last) = retire_lines.iter().rev().find(|l| l.contains("retiring")) {
        println!("last plugin farewell: {last}");
    }
    match drained {
        Ok(()) => println!(
            "every old generation drained; current: generation {}",
            status.current.id
        ),
        Err(e) => println!("still draining: {e}"),
    }
    Ok(failed == 0 && mixed == 0)
}
