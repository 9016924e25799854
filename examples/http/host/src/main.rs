//! An HTTP service whose business logic lives in plugins, swapped while it serves.
//!
//! An axum server on tokio owns the sockets and HTTP; the `shop` plugin owns what a request
//! means (routing rules, pricing, the JSON page) and keeps its state (visit counts) in the
//! Vault. A built-in load generator keeps `--connections` keep-alive connections busy for
//! `--seconds` with no swap (the baseline), then as long again while the shop is swapped
//! `--swaps` times between 1.0.0 and 2.0.0 and rolled back once. Each request pins one
//! generation across its `.await`s, so its body and its `x-shop-version` header always come
//! from one version; the load generator checks that on every response.
//!
//! It prints requests, failures and latency per second, and exits non-zero if any request
//! failed (a non-2xx status, a socket error, or a response mixing two versions).
//!
//! ```text
//! cargo run --release -p http-host                      # 5 s baseline, 5 s with 100 swaps
//! cargo run --release -p http-host -- --wasm            # the same with the shop on wasm
//! cargo run --release -p http-host -- --seconds 2 --swaps 10 --connections 8
//! cargo run --release -p http-host -- --serve 8080 --swap-after-s 5 --swap-every-ms 50
//! ```
//!
//! `--serve PORT` serves on 127.0.0.1:PORT for an external load generator
//! (`scripts/http-wrk.sh` drives it with `wrk`) and, from `--swap-after-s` on, swaps the shop
//! every `--swap-every-ms` for `--swaps` swaps, then rolls back once; it runs until killed.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_api::Shop;
use swapkit::Swapper;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    seconds: u64,
    swaps: u32,
    connections: usize,
    wasm: bool,
    /// Serve on this port for an external load generator, instead of loading it here.
    serve: Option<u16>,
    swap_after: Duration,
    swap_every: Duration,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        seconds: 5,
        swaps: 100,
        connections: 32,
        wasm: false,
        serve: None,
        swap_after: Duration::from_secs(5),
        swap_every: Duration::from_millis(50),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("{name} takes a number"))
        };
        match arg.as_str() {
            "--seconds" => out.seconds = value("--seconds")?.max(1),
            "--swaps" => out.swaps = value("--swaps")? as u32,
            "--connections" => out.connections = value("--connections")?.max(1) as usize,
            "--wasm" => out.wasm = true,
            "--serve" => out.serve = Some(value("--serve")? as u16),
            "--swap-after-s" => out.swap_after = Duration::from_secs(value("--swap-after-s")?),
            "--swap-every-ms" => {
                out.swap_every = Duration::from_millis(value("--swap-every-ms")?.max(1))
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`; use --seconds N, --swaps N, --connections N, \
                     --wasm, or --serve PORT [--swap-after-s N] [--swap-every-ms N]"
                ))
            }
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("http: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, BoxError> {
    let args = args()?;
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../Cargo.toml");
    let backend = if args.wasm { "wasm" } else { "native" };
    println!("building the shop plugins ({backend})...");
    let mut build =
        swapkit_build::PluginBuild::new(workspace).packages(["http-shop-v1", "http-shop-v2"]);
    if args.wasm {
        build = build.wasm().release(true);
    }
    let built: Vec<_> = build.run()?.into_iter().map(|a| a.path).collect();
    let releases = [built[0].clone(), built[1].clone()];

    let swapper = Arc::new(Swapper::builder().build()?);
    swapper.load_files([&releases[0]])?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.serve {
        Some(port) => runtime.block_on(serve_for_others(swapper, releases, args, port)),
        None => runtime.block_on(serve_under_load(swapper, releases, args)),
    }
}

/// Serves on `port` until killed, swapping on a schedule: for an external load generator.
async fn serve_for_others(
    swapper: Arc<Swapper>,
    releases: [std::path::PathBuf; 2],
    args: Args,
    port: u16,
) -> Result<bool, BoxError> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let app = Router::new().fallback(handle).with_state(swapper.clone());
    let start = Instant::now();
    std::thread::spawn(move || {
        std::thread::sleep(args.swap_after);
        for i in 0..args.swaps {
            if let Err(e) = swapper.load_files([&releases[(i as usize + 1) % 2]]) {
                eprintln!("swap {i} failed: {e}");
            }
            println!("swap {} at {:.3} s", i + 1, start.elapsed().as_secs_f64());
            std::thread::sleep(args.swap_every);
        }
        match swapper.rollback() {
            Ok(_) => println!("rollback at {:.3} s", start.elapsed().as_secs_f64()),
            Err(e) => eprintln!("rollback failed: {e}"),
        }
    });
    println!("ready on http://127.0.0.1:{port}");
    axum::serve(listener, app).await?;
    Ok(true)
}

/// Answers every request through the shop plugin.
async fn handle(State(swapper): State<Arc<Swapper>>, uri: Uri, headers: HeaderMap) -> Response {
    let user = headers
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    // One version for the whole request: the pin holds its generation across the awaits, so
    // a swap in the middle changes nothing for it.
    let pin = swapper.pin();
    let shop = pin.client::<dyn Shop>();
    let answer = shop.handle(&path, &user);
    // Where a real handler would await a database or another service.
    tokio::task::yield_now().await;
    let version = shop.version();
    match (answer, version) {
        (Ok((status, body)), Ok(version)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [
                (header::CONTENT_TYPE, "application/json".to_owned()),
                (header::HeaderName::from_static("x-shop-version"), version),
            ],
            body,
        )
            .into_response(),
        (Err(e), _) | (_, Err(e)) => {
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
}

async fn serve_under_load(
    swapper: Arc<Swapper>,
    releases: [std::path::PathBuf; 2],
    args: Args,
) -> Result<bool, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new().fallback(handle).with_state(swapper.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "serving on http://{addr}; {} connections, {} s baseline, then {} s with {} swaps and a rollback",
        args.connections, args.seconds, args.seconds, args.swaps
    );

    let phase = Duration::from_secs(args.seconds);
    let start = Instant::now();
    // The swaps run on a thread of their own, as an operator's or the watcher's would.
    let swapping = {
        let swapper = swapper.clone();
        let swaps = args.swaps;
        std::thread::spawn(move || -> Result<Vec<Duration>, swapkit::LoadError> {
            std::thread::sleep(phase);
            let interval = phase / (swaps + 2);
            let mut at = vec![];
            for i in 0..swaps {
                std::thread::sleep(interval);
                swapper.load_files([&releases[(i as usize + 1) % 2]])?;
                at.push(start.elapsed());
            }
            std::thread::sleep(interval);
            swapper.rollback()?;
            at.push(start.elapsed());
            Ok(at)
        })
    };
    let deadline = start + 2 * phase;
    let clients: Vec<_> = (0..args.connections)
        .map(|id| tokio::spawn(client(addr, id, start, deadline)))
        .collect();
    let mut samples = vec![];
    for c in clients {
        samples.extend(c.await?);
    }
    let swaps = swapping
        .join()
        .map_err(|_| "the swapping thread panicked")??;
    Ok(report(&samples, &swaps, phase, &swapper))
}

/// One response, as the load generator saw it.
struct Sample {
    /// When the request was sent, from the start of the run.
    at: Duration,
    took: Duration,
    outcome: Outcome,
}

#[derive(PartialEq)]
enum Outcome {
    Ok,
    /// A status other than 2xx.
    Status,
    /// The connection failed.
    Socket,
    /// The body came from another version than the `x-shop-version` header.
    Mixed,
}

/// One keep-alive connection sending requests back to back until `deadline`.
async fn client(addr: SocketAddr, id: usize, start: Instant, deadline: Instant) -> Vec<Sample> {
    let mut samples = vec![];
    let mut n = id as u64;
    while Instant::now() < deadline {
        let Ok(stream) = TcpStream::connect(addr).await else {
            samples.push(Sample {
                at: start.elapsed(),
                took: Duration::ZERO,
                outcome: Outcome::Socket,
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        while Instant::now() < deadline {
            n += 7;
            let path = if n.is_multiple_of(10) {
                "/visits".to_owned()
            } else {
                format!("/price/{}?qty={}", n % 1000, n % 8 + 1)
            };
            let sent = Instant::now();
            let request = format!("GET {path} HTTP/1.1\r\nhost: shop\r\nx-user: u{id}\r\n\r\n");
            let outcome = match write.write_all(request.as_bytes()).await {
                Ok(()) => response(&mut read).await,
                Err(_) => Err(()),
            };
            let outcome = match outcome {
                Ok((status, version, body)) if (200..300).contains(&status) => {
                    if path.starts_with("/price")
                        && !body.contains(&format!("\"version\":\"{version}\""))
                    {
                        Outcome::Mixed
                    } else {
                        Outcome::Ok
                    }
                }
                Ok(_) => Outcome::Status,
                Err(()) => Outcome::Socket,
            };
            let failed_socket = outcome == Outcome::Socket;
            samples.push(Sample {
                at: sent - start,
                took: sent.elapsed(),
                outcome,
            });
            if failed_socket {
                break; // reconnect
            }
        }
    }
    samples
}

/// Reads one HTTP/1.1 response: status, `x-shop-version`, body.
async fn response<R: tokio::io::AsyncBufRead + Unpin>(
    read: &mut R,
) -> Result<(u16, String, String), ()> {
    let mut line = String::new();
    read.read_line(&mut line).await.map_err(|_| ())?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(())?;
    let (mut length, mut version) = (0usize, String::new());
    loop {
        line.clear();
        if read.read_line(&mut line).await.map_err(|_| ())? == 0 {
            return Err(());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().map_err(|_| ())?,
                "x-shop-version" => version = value.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    read.read_exact(&mut body).await.map_err(|_| ())?;
    Ok((status, version, String::from_utf8_lossy(&body).into_owned()))
}

/// Prints the run per second and per phase; true if no request failed.
fn report(samples: &[Sample], swaps: &[Duration], phase: Duration, swapper: &Swapper) -> bool {
    let seconds = (2 * phase).as_secs() as usize;
    println!(
        "\n{:>4} {:>6} {:>9} {:>6} {:>7} {:>6} {:>9} {:>9} {:>9}",
        "s", "swaps", "requests", "non2xx", "socket", "mixed", "p50 µs", "p99 µs", "max µs"
    );
    for s in 0..seconds {
        let in_second: Vec<&Sample> = samples
            .iter()
            .filter(|x| x.at.as_secs() as usize == s)
            .collect();
        let swapped = swaps.iter().filter(|t| t.as_secs() as usize == s).count();
        let line = Line::of(&in_second);
        println!(
            "{:>4} {:>6} {:>9} {:>6} {:>7} {:>6} {:>9} {:>9} {:>9}",
            s,
            swapped,
            line.requests,
            line.status,
            line.socket,
            line.mixed,
            line.p50,
            line.p99,
            line.max
        );
    }
    let baseline: Vec<&Sample> = samples.iter().filter(|x| x.at < phase).collect();
    let swapping: Vec<&Sample> = samples.iter().filter(|x| x.at >= phase).collect();
    let (b, w) = (Line::of(&baseline), Line::of(&swapping));
    let secs = phase.as_secs_f64();
    println!(
        "\nbaseline:  {:>8.0} req/s, p50 {} µs, p99 {} µs, max {} µs",
        b.requests as f64 / secs,
        b.p50,
        b.p99,
        b.max
    );
    println!(
        "swapping:  {:>8.0} req/s, p50 {} µs, p99 {} µs, max {} µs ({} swaps and a rollback)",
        w.requests as f64 / secs,
        w.p50,
        w.p99,
        w.max,
        swaps.len().saturating_sub(1)
    );
    println!(
        "throughput while swapping: {:.1}% of the baseline; p99 {:.2}x the baseline",
        100.0 * w.requests as f64 / b.requests.max(1) as f64,
        w.p99 as f64 / b.p99.max(1) as f64
    );
    let visits: u64 = swapper
        .vault()
        .list("shop/visits/")
        .iter()
        .filter_map(|k| swapper.vault().get::<u64>(k).ok().flatten())
        .sum();
    println!("visits counted in the Vault across every swap: {visits}");
    let failed = b.failed() + w.failed();
    println!(
        "failed requests: {failed} (non-2xx {}, socket errors {}, mixed versions {})",
        b.status + w.status,
        b.socket + w.socket,
        b.mixed + w.mixed
    );
    failed == 0
}

/// Counts and latency percentiles of some samples.
struct Line {
    requests: usize,
    status: usize,
    socket: usize,
    mixed: usize,
    p50: u128,
    p99: u128,
    max: u128,
}

impl Line {
    fn of(samples: &[&Sample]) -> Line {
        let count = |o: Outcome| samples.iter().filter(|s| s.outcome == o).count();
        let mut took: Vec<u128> = samples
            .iter()
            .filter(|s| s.outcome != Outcome::Socket)
            .map(|s| s.took.as_micros())
            .collect();
        took.sort_unstable();
        let at = |q: f64| {
            took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        Line {
            requests: samples.len(),
            status: count(Outcome::Status),
            socket: count(Outcome::Socket),
            mixed: count(Outcome::Mixed),
            p50: at(0.5),
            p99: at(0.99),
            max: took.last().copied().unwrap_or(0),
        }
    }

    fn failed(&self) -> usize {
        self.status + self.socket + self.mixed
    }
}
