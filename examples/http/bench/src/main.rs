//! The http example under `wrk`, updated three ways, side by side: swapkit's swap (through
//! the admin socket), a restart of the process, and a graceful restart that hands the
//! listening socket to the next process.
//!
//! Each scenario starts the service (`http-host --serve`), runs wrk one second at a time (a
//! warm-up second, then baseline seconds and seconds with updates in turn, then one after)
//! while a probe asks once a millisecond on a connection of its own, and records per second: requests, non-2xx and
//! socket errors, p50 / p99 / max, and the longest time with no response. It does so at full
//! speed and at a paced rate, prints a per-second table for each scenario and a summary
//! (Markdown) for each rate, and can write the seconds as CSV and a plot as SVG.
//!
//! Every process of the service uses one throw-away PostgreSQL cluster this bench starts
//! (`http_db::Cluster`), where the shop records every request as a visit with the version that
//! handled it; each scenario's wrk and probe visit as users of their own, so their rows can be
//! counted after it.
//!
//! Exits non-zero if a swap lost a request (wrk's or the probe's: a page that mixed versions is
//! a 500, and a failure) or a visit (the probe's rows must be exactly its requests, wrk's at
//! least its completed requests and at most one more per connection and second), or if a
//! scenario could not run. Restarts losing requests is what this measures, not a failure.
//!
//! ```text
//! cargo run --release -p http-bench -- --svg under-load.svg   # the full run, about 75 s
//! cargo run --release -p http-bench -- --short               # CI's: 1 + 2 s, 10 swaps
//! ```
//!
//! `scripts/http-wrk.sh` installs wrk if it is missing, builds, and runs the full form.

mod plot;
mod probe;
mod server;
mod wrk;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use http_db::{Cluster, Db};
use probe::{longest_gap, Probe, Prober};
use server::{Server, Way};
use wrk::Rate;

struct Args {
    short: bool,
    connections: usize,
    port: u16,
    host: PathBuf,
    wasm: bool,
    paced_ms: u32,
    svg: Option<PathBuf>,
    csv: Option<PathBuf>,
}

const USAGE: &str = "use --short, --connections N, --port N (a free one if 0, the default), \
                     --host PATH (http-host), --wasm, --paced-ms N, --svg FILE, --csv FILE";

fn args() -> Result<Args, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut out = Args {
        short: false,
        connections: 32,
        port: 0,
        host: exe.with_file_name("http-host"),
        wasm: false,
        // Half the service's capacity with 32 connections, now that each request awaits the
        // database (about 6,000 req/s on two cores at full speed).
        paced_ms: 10,
        svg: None,
        csv: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} takes a value"));
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name} takes a number, not `{v}`"))
        };
        match arg.as_str() {
            "--short" => out.short = true,
            "--connections" => out.connections = number(&arg, value(&arg)?)?.max(1) as usize,
            "--port" => out.port = number(&arg, value(&arg)?)? as u16,
            "--host" => out.host = value(&arg)?.into(),
            "--wasm" => out.wasm = true,
            "--paced-ms" => out.paced_ms = number(&arg, value(&arg)?)?.max(1) as u32,
            "--svg" => out.svg = Some(value(&arg)?.into()),
            "--csv" => out.csv = Some(value(&arg)?.into()),
            other => return Err(format!("unknown argument `{other}`; {USAGE}")),
        }
    }
    if !out.host.exists() {
        return Err(format!(
            "no http-host at {}; build it (`cargo build --release -p http-host`) or give --host",
            out.host.display()
        ));
    }
    Ok(out)
}

/// How many seconds of each phase, and how many updates.
struct Plan {
    baseline: u32,
    updating: u32,
    swaps: u32,
    restarts: u32,
}

/// Where a second falls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    WarmUp,
    Baseline,
    Updating,
    After,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::WarmUp => "warm-up",
            Phase::Baseline => "baseline",
            Phase::Updating => "updating",
            Phase::After => "after",
        }
    }
}

/// One second of wrk in a scenario.
pub struct Row {
    /// When wrk started and ended, in seconds from the scenario's start.
    pub start: f64,
    pub end: f64,
    pub phase: Phase,
    pub updates: usize,
    pub wrk: wrk::Second,
    /// The longest time with no response to the probe in this second.
    pub gap: Duration,
}

/// One update of the service.
pub struct Update {
    /// When it started, in seconds from the scenario's start.
    pub at: f64,
    pub took: Duration,
}

/// A scenario's record.
pub struct Scenario {
    pub way: Way,
    pub rate: Rate,
    pub rows: Vec<Row>,
    pub updates: Vec<Update>,
    pub probes: Vec<Probe>,
    /// The visits the database holds of the scenario's probe and of its wrk.
    pub recorded: Recorded,
}

/// Rows in the database, counted after a scenario.
#[derive(Clone, Copy, Default)]
pub struct Recorded {
    pub probe: u64,
    pub wrk: u64,
}

/// The database every scenario's service writes to, and a runtime to ask it from.
struct Database {
    cluster: Cluster,
    runtime: tokio::runtime::Runtime,
    db: Db,
}

impl Database {
    fn start() -> Result<Database, String> {
        println!("starting a throw-away PostgreSQL cluster...");
        let cluster = Cluster::start()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        let db = runtime.block_on(Db::connect(&cluster.config(), 1))?;
        Ok(Database {
            cluster,
            runtime,
            db,
        })
    }

    fn visits(&self, user: &str) -> Result<u64, String> {
        self.runtime.block_on(self.db.visits(user))
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("http-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, String> {
    let args = args()?;
    let plan = if args.short {
        Plan {
            baseline: 1,
            updating: 2,
            swaps: 10,
            restarts: 2,
        }
    } else {
        Plan {
            baseline: 5,
            updating: 5,
            swaps: 100,
            restarts: 5,
        }
    };
    let rates = if args.short {
        vec![Rate::Full]
    } else {
        vec![
            Rate::Full,
            Rate::Paced {
                delay_ms: args.paced_ms,
            },
        ]
    };
    let releases = build_shops(args.wasm)?;
    let database = Database::start()?;
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let load_before = load_average();

    let mut scenarios = vec![];
    for &rate in &rates {
        let lua = match rate {
            Rate::Full => None,
            Rate::Paced { delay_ms } => {
                let path = scratch.path().join("paced.lua");
                std::fs::write(&path, wrk::pacing_script(delay_ms)).map_err(|e| e.to_string())?;
                Some(path)
            }
        };
        for way in Way::ALL {
            println!("\n## {}, {}", way.name(), rate.name());
            let users = Users::of(scenarios.len());
            let mut scenario = scenario(
                way,
                rate,
                &plan,
                &args,
                &releases,
                lua.as_deref(),
                (&database, &users),
            )?;
            scenario.recorded = Recorded {
                probe: database.visits(&users.probe)?,
                wrk: database.visits(&users.wrk)?,
            };
            print_seconds(&scenario);
            scenarios.push(scenario);
        }
    }
    let load_after = load_average();

    let mut ok = true;
    for &rate in &rates {
        let of_rate: Vec<&Scenario> = scenarios.iter().filter(|s| s.rate == rate).collect();
        println!("\n{}", summary(&of_rate, &args));
        let swap = of_rate.iter().find(|s| s.way == Way::Swap);
        if let Some(swap) = swap {
            let failed = failed(swap);
            if failed > 0 {
                ok = false;
                println!(
                    "FAILED: {failed} requests failed while swapping ({})",
                    rate.name()
                );
            }
            let (counted, made) = probe::visits(&swap.probes);
            if counted != made || swap.recorded.probe != swap.probes.len() as u64 {
                ok = false;
                println!(
                    "FAILED: the shop counted {counted} of the probe's {made} visits, and the \
                     database holds {} rows of its {} requests: state was lost while swapping \
                     ({})",
                    swap.recorded.probe,
                    swap.probes.len(),
                    rate.name()
                );
            }
            let (rows, completed) = (swap.recorded.wrk, wrk_requests(swap));
            let in_flight = (args.connections * swap.rows.len()) as u64;
            if rows < completed || rows > completed + in_flight {
                ok = false;
                println!(
                    "FAILED: wrk completed {completed} requests and the database holds {rows} \
                     of its visits: expected at least as many, and at most {in_flight} more \
                     (those in flight as each second of wrk ended) ({})",
                    rate.name()
                );
            }
        }
    }
    println!("load average: {load_before} before, {load_after} after");
    drop(database.cluster);
    if let Some(csv) = &args.csv {
        write_csv(csv, &scenarios)?;
        println!("wrote {}", csv.display());
    }
    if let Some(svg) = &args.svg {
        plot::draw(svg, &scenarios, &rates)
            .map_err(|e| format!("cannot draw {}: {e}", svg.display()))?;
        println!("wrote {}", svg.display());
    }
    Ok(ok)
}

/// Builds shop 1.0.0 and 2.0.0, for the backend asked for.
fn build_shops(wasm: bool) -> Result<[PathBuf; 2], String> {
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../Cargo.toml");
    let mut build =
        swapkit_build::PluginBuild::new(workspace).packages(["http-shop-v1", "http-shop-v2"]);
    // Built as this bench is (and so, from scripts/http-wrk.sh, as the service is); wasm is
    // optimised always, as its debug code runs many times slower.
    build = build.release(wasm || !cfg!(debug_assertions));
    if wasm {
        build = build.wasm();
    }
    let built = build.run().map_err(|e| e.to_string())?;
    let paths: Vec<PathBuf> = built.into_iter().map(|a| a.path).collect();
    Ok([paths[0].clone(), paths[1].clone()])
}

/// The users a scenario's probe and wrk visit as: their own, so that their rows in the
/// database can be counted after it.
struct Users {
    probe: String,
    wrk: String,
}

impl Users {
    fn of(scenario: usize) -> Users {
        Users {
            probe: format!("probe-{scenario}"),
            wrk: format!("wrk-{scenario}"),
        }
    }
}

/// Requests wrk completed in a scenario.
fn wrk_requests(s: &Scenario) -> u64 {
    s.rows.iter().map(|r| r.wrk.requests).sum()
}

/// Runs one way of updating at one rate, with the service on `database`.
fn scenario(
    way: Way,
    rate: Rate,
    plan: &Plan,
    args: &Args,
    releases: &[PathBuf; 2],
    lua: Option<&Path>,
    (database, users): (&Database, &Users),
) -> Result<Scenario, String> {
    let port = match args.port {
        0 => free_port()?,
        port => port,
    };
    let config = database.cluster.config();
    let mut server = Server::start(way, &args.host, port, releases, &config)?;
    let url = format!("http://127.0.0.1:{port}/price/42?qty=5");
    let start = Instant::now();
    let prober = Prober::start(([127, 0, 0, 1], port).into(), start, &users.probe);
    // Baseline and updating seconds take turns, so that both see the same drift of a shared
    // machine (its other work, the CPU's clock); a warm-up second first, one after the last.
    let mut phases = vec![Phase::WarmUp];
    for i in 0..plan.baseline.max(plan.updating) {
        if i < plan.baseline {
            phases.push(Phase::Baseline);
        }
        if i < plan.updating {
            phases.push(Phase::Updating);
        }
    }
    phases.push(Phase::After);
    let (count, rollback_at) = match way {
        Way::Swap => (plan.swaps, true),
        _ => (plan.restarts, false),
    };
    let mut rows = vec![];
    let mut updates = vec![];
    let mut error = None;
    for (i, &phase) in phases.iter().enumerate() {
        let begin = start.elapsed().as_secs_f64();
        let (second, done) = std::thread::scope(|s| {
            let updater = (phase == Phase::Updating).then(|| {
                let k = phases[..i]
                    .iter()
                    .filter(|p| **p == Phase::Updating)
                    .count() as u32;
                // This second's share of the updates, spread over it; the rollback last.
                let mut here = count / plan.updating + u32::from(k < count % plan.updating);
                let last = k + 1 == plan.updating;
                if last && rollback_at {
                    here += 1;
                }
                let server = &mut server;
                s.spawn(move || -> Result<Vec<Update>, String> {
                    let chunk = Instant::now();
                    let mut done = vec![];
                    for j in 0..here {
                        let due =
                            Duration::from_secs_f64(0.1 + 0.8 * (j as f64 + 0.5) / here as f64);
                        if let Some(wait) = due.checked_sub(chunk.elapsed()) {
                            std::thread::sleep(wait);
                        }
                        let at = start.elapsed().as_secs_f64();
                        let took = if last && rollback_at && j + 1 == here {
                            server.rollback()?
                        } else {
                            server.update()?
                        };
                        done.push(Update { at, took });
                    }
                    Ok(done)
                })
            });
            let second = wrk::second(&url, args.connections, lua, &users.wrk);
            let done = updater.map(|u| {
                u.join()
                    .unwrap_or_else(|_| Err("the updater panicked".into()))
            });
            (second, done)
        });
        let end = start.elapsed().as_secs_f64();
        let n = match done {
            Some(Ok(done)) => {
                let n = done.len();
                updates.extend(done);
                n
            }
            Some(Err(e)) => {
                error = Some(e);
                0
            }
            None => 0,
        };
        match second {
            Ok(wrk) => rows.push(Row {
                start: begin,
                end,
                phase,
                updates: n,
                wrk,
                gap: Duration::ZERO,
            }),
            Err(e) => error = error.or(Some(e)),
        }
        if error.is_some() {
            break;
        }
    }
    let probes = prober.stop();
    let stopped = server.stop();
    if let Some(e) = error {
        return Err(format!("{} at {}: {e}", way.name(), rate.name()));
    }
    stopped.map_err(|e| format!("{} at {}: {e}", way.name(), rate.name()))?;
    for row in &mut rows {
        row.gap = longest_gap(&probes, secs(row.start), secs(row.end));
    }
    Ok(Scenario {
        way,
        rate,
        rows,
        updates,
        probes,
        recorded: Recorded::default(),
    })
}

/// A port nothing listens on now, so that two runs on one machine do not collide.
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn print_seconds(s: &Scenario) {
    println!(
        "{:>4} {:<9} {:>7} {:>9} {:>6} {:>6} {:>8} {:>8} {:>9} {:>8}",
        "s",
        "phase",
        "updates",
        "req/s",
        "non2xx",
        "socket",
        "p50 µs",
        "p99 µs",
        "max µs",
        "gap ms"
    );
    for (i, r) in s.rows.iter().enumerate() {
        println!(
            "{:>4} {:<9} {:>7} {:>9.0} {:>6} {:>6} {:>8.0} {:>8.0} {:>9.0} {:>8.1}",
            i,
            r.phase.name(),
            r.updates,
            r.wrk.rate(),
            r.wrk.non2xx,
            r.wrk.socket,
            r.wrk.p50,
            r.wrk.p99,
            r.wrk.max,
            r.gap.as_secs_f64() * 1e3
        );
    }
}

/// Requests lost in a scenario: wrk's (every second, warm-up included) and the probe's.
fn failed(s: &Scenario) -> u64 {
    s.rows.iter().map(|r| r.wrk.failed()).sum::<u64>() + probe_failures(s)
}

fn probe_failures(s: &Scenario) -> u64 {
    s.probes.iter().filter(|p| !p.ok).count() as u64
}

/// The figures of one phase of a scenario.
struct Figures {
    rate: f64,
    /// The median of the seconds' p99s: one second that the machine's other work made slow
    /// does not move it.
    p99_median: f64,
    p99_worst: f64,
    gap: Duration,
}

fn figures(s: &Scenario, phase: Phase) -> Figures {
    let rows: Vec<&Row> = s.rows.iter().filter(|r| r.phase == phase).collect();
    let n = rows.len().max(1) as f64;
    Figures {
        rate: rows.iter().map(|r| r.wrk.rate()).sum::<f64>() / n,
        p99_median: median(rows.iter().map(|r| r.wrk.p99).collect()),
        p99_worst: rows.iter().map(|r| r.wrk.p99).fold(0.0, f64::max),
        gap: rows.iter().map(|r| r.gap).max().unwrap_or_default(),
    }
}

/// The side-by-side table of one rate, in Markdown.
fn summary(scenarios: &[&Scenario], args: &Args) -> String {
    let rate = scenarios.first().map_or(Rate::Full, |s| s.rate);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "### {}, {} connections{}\n",
        rate.name(),
        args.connections,
        if args.wasm { ", shop on wasm" } else { "" }
    );
    let head: Vec<&str> = scenarios.iter().map(|s| s.way.name()).collect();
    let _ = writeln!(t, "| | {} |", head.join(" | "));
    let _ = writeln!(t, "|---|{}", "---:|".repeat(head.len()));
    let mut line = |label: &str, f: &dyn Fn(&Scenario) -> String| {
        let cells: Vec<String> = scenarios.iter().map(|s| f(s)).collect();
        let _ = writeln!(t, "| {label} | {} |", cells.join(" | "));
    };
    line("updates", &|s| {
        let n = s.updates.len();
        if s.way == Way::Swap {
            format!("{} + a rollback", n.saturating_sub(1))
        } else {
            n.to_string()
        }
    });
    line("time per update, mean / max", &|s| {
        let n = s.updates.len().max(1) as f64;
        let mean = s.updates.iter().map(|u| u.took.as_secs_f64()).sum::<f64>() / n;
        let max = s
            .updates
            .iter()
            .map(|u| u.took.as_secs_f64())
            .fold(0.0, f64::max);
        format!("{:.1} / {:.1} ms", mean * 1e3, max * 1e3)
    });
    let sum = |s: &Scenario, f: &dyn Fn(&wrk::Second) -> u64| {
        s.rows.iter().map(|r| f(&r.wrk)).sum::<u64>()
    };
    // While nothing listens, wrk's connections try again at once and count each attempt as
    // a socket error: a restart's count is of attempts, not of requests a client would send.
    line("wrk errors: non-2xx + socket", &|s| {
        let (non2xx, socket) = (sum(s, &|w| w.non2xx), sum(s, &|w| w.socket));
        format!("**{}** ({non2xx} + {socket})", non2xx + socket)
    });
    line("failed probes (one request a millisecond)", &|s| {
        format!("**{}** of {}", probe_failures(s), s.probes.len())
    });
    line(
        "the probe's visits, as the shop counted them / made",
        &|s| {
            let (counted, made) = probe::visits(&s.probes);
            format!("{counted} / {made}")
        },
    );
    line(
        "visits in the database: the probe's rows / requests",
        &|s| format!("{} / {}", s.recorded.probe, s.probes.len()),
    );
    line(
        "visits in the database: wrk's rows / completed requests",
        &|s| format!("{} / {}", s.recorded.wrk, wrk_requests(s)),
    );
    line("longest gap with no response: baseline / updating", &|s| {
        format!(
            "{:.1} / **{:.1} ms**",
            ms(figures(s, Phase::Baseline).gap),
            ms(figures(s, Phase::Updating)
                .gap
                .max(figures(s, Phase::After).gap))
        )
    });
    line("requests/s: baseline → updating", &|s| {
        let (b, u) = (figures(s, Phase::Baseline), figures(s, Phase::Updating));
        format!(
            "{:.0} → {:.0} (**{:.1}%**)",
            b.rate,
            u.rate,
            100.0 * u.rate / b.rate.max(1.0)
        )
    });
    line("p99, median of the seconds: baseline → updating", &|s| {
        let (b, u) = (figures(s, Phase::Baseline), figures(s, Phase::Updating));
        format!(
            "{:.0} → {:.0} µs (**{:.2}×**)",
            b.p99_median,
            u.p99_median,
            u.p99_median / b.p99_median.max(1.0)
        )
    });
    line("p99, worst second: baseline → updating", &|s| {
        let (b, u) = (figures(s, Phase::Baseline), figures(s, Phase::Updating));
        format!("{:.0} → {:.0} µs", b.p99_worst, u.p99_worst)
    });
    t
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn write_csv(path: &Path, scenarios: &[Scenario]) -> Result<(), String> {
    let mut out = String::from(
        "rate,way,second,start_s,end_s,phase,updates,requests,requests_per_s,non2xx,socket,connect,p50_us,p99_us,max_us,gap_ms\n",
    );
    for s in scenarios {
        for (i, r) in s.rows.iter().enumerate() {
            let _ = writeln!(
                out,
                "{},{},{i},{:.3},{:.3},{},{},{},{:.0},{},{},{},{:.0},{:.0},{:.0},{:.2}",
                s.rate.name(),
                s.way.name(),
                r.start,
                r.end,
                r.phase.name(),
                r.updates,
                r.wrk.requests,
                r.wrk.rate(),
                r.wrk.non2xx,
                r.wrk.socket,
                r.wrk.connect,
                r.wrk.p50,
                r.wrk.p99,
                r.wrk.max,
                ms(r.gap)
            );
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(path, out).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The 1-minute load average, as /proc/loadavg has it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}
