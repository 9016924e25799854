//! A job queue and a timer that store live functions: jobs scheduled under v1 of the `jobs`
//! plugin run v2's code after a swap, and the count of reminders the plugin keeps as its own
//! live data carries on across the swap (v2 migrates it from v1's schema with no code for the
//! field it adds).
//!
//! The queue keeps each job as a line of JSON, as a database or a file would: a `LiveFn` is
//! only a plugin name and a function name, resolved at every call in the current generation.
//!
//! Run it with `cargo run -p livex`; it builds the plugins itself. Pass `--wasm` to run them on
//! the wasm backend.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use swapkit::{LiveFn, Swapper};

/// One scheduled job: when, what, with which argument.
#[derive(Serialize, Deserialize)]
struct Job {
    due_ms: u64,
    run: LiveFn<(u64,), String>,
    user: u64,
}

/// A job queue that stores its jobs serialized, the way a durable queue would.
#[derive(Default)]
struct Queue {
    lines: Mutex<Vec<String>>,
}

impl Queue {
    fn schedule(&self, job: &Job) -> Result<(), serde_json::Error> {
        let line = serde_json::to_string(job)?;
        self.lines.lock().unwrap().push(line);
        Ok(())
    }

    /// Takes the jobs due at `now_ms`.
    fn due(&self, now_ms: u64) -> Vec<Job> {
        let mut lines = self.lines.lock().unwrap();
        let mut due = vec![];
        lines.retain(|line| match serde_json::from_str::<Job>(line) {
            Ok(job) if job.due_ms <= now_ms => {
                due.push(job);
                false
            }
            Ok(_) => true,
            Err(e) => {
                eprintln!("dropping an unreadable job ({e}): {line}");
                false
            }
        });
        due
    }

    fn is_empty(&self) -> bool {
        self.lines.lock().unwrap().is_empty()
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("livex: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let wasm = std::env::args().any(|a| a == "--wasm");
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../Cargo.toml");
    println!(
        "building jobs v1 and v2 ({})...",
        if wasm { "wasm" } else { "native" }
    );
    let mut build =
        swapkit_build::PluginBuild::new(workspace).packages(["livex-jobs-v1", "livex-jobs-v2"]);
    if wasm {
        build = build.wasm().release(true);
    }
    let built: Vec<_> = build.run()?.into_iter().map(|a| a.path).collect();

    if wasm {
        // Compile v2 ahead into the shared compile cache, as a deploy pipeline would, so that
        // the swap below, timed against the reminders, reads it rather than compiling it
        // (hundreds of ms on a busy machine, when every reminder would fall due before it).
        Swapper::new()?.load_files([&built[1]])?;
    }
    let swapper = Arc::new(Swapper::new()?);
    swapper.load_files([&built[0]])?;
    println!("generation {}: jobs v1", swapper.generation());

    let queue = Arc::new(Queue::default());
    let remind = LiveFn::new("jobs", "send_reminder");
    for (i, user) in [11, 12, 13, 14, 15].into_iter().enumerate() {
        queue.schedule(&Job {
            due_ms: 40 + 80 * i as u64,
            run: remind.clone(),
            user,
        })?;
    }
    println!("scheduled 5 reminders under v1, the last at 360 ms");

    // The timer: runs due jobs every 10 ms until the queue is empty.
    let start = Instant::now();
    let timer = {
        let (swapper, queue) = (swapper.clone(), queue.clone());
        std::thread::spawn(move || {
            let mut ran = vec![];
            while !queue.is_empty() {
                let now = start.elapsed().as_millis() as u64;
                for job in queue.due(now) {
                    let answer = job
                        .run
                        .call(&swapper, &(job.user,))
                        .unwrap_or_else(|e| format!("failed: {e}"));
                    println!("  {now:>4} ms  {answer}");
                    ran.push(answer);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            ran
        })
    };

    std::thread::sleep(Duration::from_millis(130));
    let report = swapper.load_files([&built[1]])?;
    println!(
        "  {:>4} ms  swapped to jobs v2 (generation {}) in {:?}",
        start.elapsed().as_millis(),
        report.generation,
        report.took
    );
    let ran = timer.join().map_err(|_| "the timer thread panicked")?;

    let (v1, v2) = (
        ran.iter().filter(|r| r.starts_with("v1")).count(),
        ran.iter().filter(|r| r.starts_with("v2")).count(),
    );
    let counted = ran.last().map(String::as_str).unwrap_or_default();
    println!("{v1} jobs ran v1's code, {v2} ran v2's; the last says: {counted}");
    if v1 == 0 || v2 == 0 || !counted.contains("#5") {
        return Err("expected jobs on both versions and the count to carry over to #5".into());
    }
    Ok(())
}
