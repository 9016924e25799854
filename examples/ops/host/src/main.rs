//! A long-running service with every operating feature on, for the swapkit CLI to steer.
//!
//! ```text
//! ops-host --plugins DIR --socket PATH [--state DIR] [--no-watch] [--probation-ms N]
//!          [--max-failure-rate R]
//! ```
//!
//! It serves greetings from the `hello` greeter plugins in `DIR` and prices through a
//! patchable function, on a worker thread, and prints a line whenever what it serves changes:
//! `serving <greeting> | price <cents>`. Then, from another shell:
//!
//! ```text
//! swapkit status --socket PATH
//! swapkit reload --socket PATH            # or: kill -HUP <pid>, or publish into DIR
//! swapkit rollback --socket PATH --to greeter@1.0.0
//! swapkit patch apply --socket PATH target/swapkit/native/ops_discount.so --percent 50
//! swapkit canary start --socket PATH target/swapkit/native/hello_greeter_v1.so --percent 100
//! swapkit canary set --socket PATH 0       # then: canary promote, or canary abort
//! ```

use std::path::PathBuf;
use std::time::Duration;

/// The host's pricing. Every function in it is patchable in process; `price` is patchable by
/// plugins too. `swapkit patch list` shows which items the module form left out, and why.
#[swapkit::patchable]
pub mod pricing {
    /// The price of `qty` items at `cents` each.
    #[swapkit::patchable(plugin)]
    pub fn price(cents: u64, qty: u32) -> u64 {
        cents * capped(qty)
    }

    /// At most 1,000 items per order. Generic, so it has no patch slot: the module notes it.
    pub fn capped<T: Into<u64>>(qty: T) -> u64 {
        qty.into().min(1_000)
    }
}

struct Args {
    plugins: PathBuf,
    socket: PathBuf,
    state: Option<PathBuf>,
    probation: Option<Duration>,
    max_failure_rate: f64,
    watch: bool,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut plugins = None;
    let mut socket = None;
    let mut args = Args {
        plugins: PathBuf::new(),
        socket: PathBuf::new(),
        state: None,
        probation: None,
        max_failure_rate: 0.2,
        watch: true,
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--plugins" => plugins = Some(PathBuf::from(value()?)),
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--no-watch" => args.watch = false,
            "--state" => args.state = Some(PathBuf::from(value()?)),
            "--probation-ms" => {
                let ms: u64 = value()?
                    .parse()
                    .map_err(|e| format!("--probation-ms: {e}"))?;
                args.probation = Some(Duration::from_millis(ms));
            }
            "--max-failure-rate" => {
                args.max_failure_rate = value()?
                    .parse()
                    .map_err(|e| format!("--max-failure-rate: {e}"))?
            }
            other => {
                return Err(format!(
                    "unknown argument {other}; see the doc comment of examples/ops/host"
                ))
            }
        }
    }
    args.plugins = plugins.ok_or("--plugins DIR is required")?;
    args.socket = socket.ok_or("--socket PATH is required")?;
    Ok(args)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = args()?;
    let mut builder = swapkit::Swapper::builder()
        .interface::<dyn hello_api::Greeter>()
        .admin_socket(&args.socket)
        .reload_on_signal(signal_hook::consts::SIGHUP)
        .metrics_interval(Duration::from_secs(1));
    if args.watch {
        builder = builder.watch(Duration::from_millis(150));
    }
    if let Some(state) = &args.state {
        builder = builder.state_dir(state);
    }
    if let Some(window) = args.probation {
        builder = builder.auto_rollback(
            swapkit::Probation::new(window)
                .max_failure_rate(args.max_failure_rate)
                .min_calls(10),
        );
    }
    let swapper = builder.build()?;
    let report = swapper.resume(&args.plugins)?;
    let greeter = swapper.client::<dyn hello_api::Greeter>()?;
    println!(
        "ready pid={} generation={}",
        std::process::id(),
        report.generation
    );

    let mut last = String::new();
    loop {
        // Every call runs under the request key `ops`: a canary at 100% serves it, at 0% the
        // stable version does.
        let served = match swapkit::patch::with_key("ops", || greeter.greet("ops")) {
            Ok(text) => text,
            Err(e) => format!("error: {e}"),
        };
        let line = format!("serving {served} | price {}", pricing::price(1000, 1));
        if line != last {
            println!("{line}");
            last = line;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
