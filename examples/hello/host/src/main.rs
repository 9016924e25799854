//! The swapkit demo: a service calls its `Greeter` plugin from several threads without pause,
//! while the main thread swaps the plugin between v1 and v2 many times, publishing each new
//! artifact by atomic rename and reloading, then rolls back. At the end it prints what happened:
//! calls made, calls failed (always 0), which versions answered, and when each old generation
//! drained.
//!
//! Run it with `cargo run --release -p hello`; it builds the two plugin versions itself.
//! It first runs the same load with no swaps for `--baseline-ms`, so throughput and latency
//! while swapping are reported as ratios against a baseline from the same run.
//!
//! Options: `--threads N` (default 4), `--swaps N` (default 40), `--interval-ms N` (default 25),
//! `--baseline-ms N` (default 500).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hello_api::{Greeter, GreeterClient};
use swapkit::Swapper;

struct Options {
    threads: usize,
    swaps: usize,
    interval: Duration,
    baseline: Duration,
}

/// Phases of the run: a warm-up that is not counted, the baseline, the swaps, and the stop.
const WARMUP: usize = 0;
const BASELINE: usize = 1;
const SWAPPING: usize = 2;
const STOP: usize = 3;

/// What one calling thread saw, by phase.
struct Tally {
    /// Answers by greeting text, with the caller's name replaced by `{name}`.
    answers: HashMap<String, u64>,
    /// Answers counted by the greeting's shape (its length less the name's), which tells the
    /// versions apart without hashing a string on every call.
    by_shape: [u64; 256],
    calls: [u64; 3],
    /// Sampled call latencies (one call in 16 is timed), in fixed-size histograms so the
    /// demo's own memory does not grow while it measures.
    latency: [Histogram; 3],
    requests: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            answers: HashMap::new(),
            by_shape: [0; 256],
            calls: [0; 3],
            latency: [
                Histogram::default(),
                Histogram::default(),
                Histogram::default(),
            ],
            requests: 0,
        }
    }
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        // The value is the answer's shape, the same on every thread.
        self.answers.extend(other.answers);
        for (a, b) in self.by_shape.iter_mut().zip(other.by_shape) {
            *a += b;
        }
        for p in 0..3 {
            self.calls[p] += other.calls[p];
            self.latency[p].merge(&other.latency[p]);
        }
        self.requests += other.requests;
    }
}

/// One calling thread: calls without pause until phase 2, and every 100th call makes a pinned
/// "request" of two calls that must see one version.
fn work(
    t: usize,
    greeter: &GreeterClient<swapkit::Binding>,
    swapper: &Swapper,
    phase: &AtomicUsize,
    failed: &AtomicU64,
    mixed: &AtomicU64,
) -> Tally {
    let mut tally = Tally::default();
    let name = format!("client-{t}");
    let mut i = 0u64;
    loop {
        let p = phase.load(Ordering::Relaxed);
        if p >= STOP {
            return tally;
        }
        i += 1;
        let timed = i.is_multiple_of(16);
        let start = timed.then(Instant::now);
        let answer = greeter.greet(&name);
        if let Some(start) = start {
            tally.latency[p].record(start.elapsed().as_nanos().min(u64::MAX as u128) as u64);
        }
        match answer {
            Ok(text) => {
                tally.calls[p] += 1;
                let shape = shape(&text, &name);
                if tally.by_shape[shape] == 0 {
                    tally
                        .answers
                        .insert(text.replace(&name, "{name}"), shape as u64);
                }
                tally.by_shape[shape] += 1;
            }
            Err(e) => {
                failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("call failed: {e}");
            }
        }
        if i.is_multiple_of(100) {
            let pin = swapper.pin();
            let client = pin.client::<dyn Greeter>();
            match (client.version(), client.version()) {
                (Ok(a), Ok(b)) if a == b => tally.requests += 1,
                (Ok(_), Ok(_)) => {
                    mixed.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The greeting's length less the name's: the same for every answer of one version.
fn shape(text: &str, name: &str) -> usize {
    text.len().saturating_sub(name.len()).min(255)
}

/// A log-linear latency histogram in nanoseconds: 8 buckets per power of two, so about 12%
/// resolution, in a fixed 4 KiB.
struct Histogram {
    counts: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; 512],
        }
    }
}

impl Histogram {
    fn index(ns: u64) -> usize {
        if ns < 8 {
            return ns as usize;
        }
        let top = 63 - ns.leading_zeros() as usize;
        (top - 2) * 8 + ((ns >> (top - 3)) & 7) as usize
    }

    fn lower_bound(i: usize) -> u64 {
        if i < 8 {
            return i as u64;
        }
        (8 + (i % 8) as u64) << (i / 8 - 1)
    }

    fn record(&mut self, ns: u64) {
        self.counts[Self::index(ns)] += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// The lower bound of the bucket holding quantile `q`.
    fn quantile(&self, q: f64) -> Duration {
        let total: u64 = self.counts.iter().sum();
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Duration::from_nanos(Self::lower_bound(i));
            }
        }
        Duration::ZERO
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}

/// Resident set size of this process, where the platform reports it.
fn rss_kib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        threads: 4,
        swaps: 40,
        interval: Duration::from_millis(25),
        baseline: Duration::from_millis(500),
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
            "--baseline-ms" => o.baseline = Duration::from_millis(value()?),
            "-h" | "--help" => {
                return Err(
                    "usage: hello [--threads N] [--swaps N] [--interval-ms N] [--baseline-ms N]"
                        .into(),
                )
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

    let phase = AtomicUsize::new(WARMUP);
    let failed = AtomicU64::new(0);
    let mixed = AtomicU64::new(0);
    let mut rss_before = None;
    let mut first_call_after_reload = vec![];
    let mut phase_time = [Duration::ZERO; 3];

    let per_thread: Vec<Tally> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..o.threads)
            .map(|t| {
                let (greeter, swapper, phase, failed, mixed) =
                    (&greeter, &swapper, &phase, &failed, &mixed);
                s.spawn(move || work(t, greeter, swapper, phase, failed, mixed))
            })
            .collect();

        std::thread::sleep(Duration::from_millis(200));
        phase.store(BASELINE, Ordering::Relaxed);
        let baseline = Instant::now();
        std::thread::sleep(o.baseline);
        phase_time[BASELINE] = baseline.elapsed();
        rss_before = rss_kib();
        phase.store(SWAPPING, Ordering::Relaxed);
        let swapping = Instant::now();
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
        phase_time[SWAPPING] = swapping.elapsed();
        phase.store(STOP, Ordering::Relaxed);
        workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .collect()
    });

    let drained = swapper.wait_drained(Duration::from_secs(10));
    let rss_after = rss_kib();
    let status = swapper.status();
    let mut total = Tally::default();
    for t in per_thread {
        total.merge(t);
    }
    let failed = failed.load(Ordering::Relaxed);
    let mixed = mixed.load(Ordering::Relaxed);
    let calls: u64 = total.calls.iter().sum::<u64>() + failed;
    let (base, swap) = (BASELINE, SWAPPING);

    println!("\n== report ==");
    println!("calls made       : {calls}");
    println!("calls failed     : {failed}");
    println!(
        "pinned requests  : {}, of which saw two versions: {mixed}",
        total.requests
    );
    println!("answers by version:");
    let mut answers: Vec<_> = total.answers.into_iter().collect();
    answers.sort();
    for (text, shape) in &answers {
        println!("  {:>10}  {text}", total.by_shape[*shape as usize]);
    }
    let rate = |p: usize| total.calls[p] as f64 / phase_time[p].as_secs_f64().max(1e-9);
    let (base_rate, swap_rate) = (rate(base), rate(swap));
    let (base_p50, base_p99) = (
        total.latency[base].quantile(0.50),
        total.latency[base].quantile(0.99),
    );
    let (swap_p50, swap_p99) = (
        total.latency[swap].quantile(0.50),
        total.latency[swap].quantile(0.99),
    );
    println!("                   baseline (no swaps)   while swapping      ratio");
    println!(
        "throughput       : {:>12.0} calls/s {:>12.0} calls/s   {:.2}x",
        base_rate,
        swap_rate,
        swap_rate / base_rate.max(1e-9)
    );
    println!(
        "latency p50      : {base_p50:>12.1?}       {swap_p50:>12.1?}         {:.2}x",
        ratio(swap_p50, base_p50)
    );
    println!(
        "latency p99      : {base_p99:>12.1?}       {swap_p99:>12.1?}         {:.2}x",
        ratio(swap_p99, base_p99)
    );
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
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let swaps = (o.swaps + 1).max(1) as f64;
        println!(
            "resident memory  : {before} KiB before the swaps, {after} KiB after ({:+.1} KiB per swap)",
            (after as f64 - before as f64) / swaps
        );
    }
    let times: Vec<Duration> = status
        .drained
        .iter()
        .filter_map(|d| d.drained_after)
        .collect();
    let slowest = times.iter().max().copied().unwrap_or_default();
    println!(
        "generations drained: {} (slowest {slowest:.1?} after it was superseded); the last few:",
        status.drained.len()
    );
    for d in status.drained.iter().rev().take(4).rev() {
        println!("  {d}");
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
