//! An HTTP service whose business logic lives in plugins, swapped while it serves.
//!
//! An axum server on tokio owns the sockets, HTTP and the database connections; the `shop`
//! plugin owns what a request means (routing rules, pricing, carts, the JSON page) and keeps
//! its state (visits, carts) in PostgreSQL, which it awaits through async services the host
//! offers (`db.visit`, `db.visits`, `db.add_to_cart`). A request is two calls of the shop with
//! a query of the host's between them; it pins one generation across all of its awaits, and
//! its page records the version of both calls and of the row its visit wrote, which the host
//! checks against the version it pinned (a mixed page is a 500).
//!
//! The database is a throw-away PostgreSQL cluster this process starts (as `nobody` when it
//! runs as root) and deletes when it exits, or the one `--database` names.
//!
//! **The demo** (no `--serve`) brings its own load: `--connections` keep-alive connections
//! busy for twice `--seconds`, in which seconds with no swap (the baseline) and seconds with
//! swaps take turns: new builds of the shop (1.0.0 and 2.0.0 in turn) are dropped into the
//! plugin directory `--swaps` times in all (the file watcher swaps each in), and one
//! rollback follows. It prints requests, failures
//! and latency per second and exits non-zero if any request failed (a non-2xx status, a
//! socket error, or a response mixing two versions).
//!
//! **`--serve PORT`** serves on 127.0.0.1:PORT (or on the socket a supervisor hands over as
//! descriptor 3 with `LISTEN_FDS=1`) until SIGTERM or SIGINT, then shuts down gracefully.
//! The shop comes from `--plugin FILE`, from `--dir DIR` (the source of later reloads, from
//! the admin socket with `--admin SOCKET` or the watcher with `--watch`), or is built here.
//! `http-bench` (and `scripts/http-wrk.sh`) drive this mode under `wrk`.
//!
//! ```text
//! cargo run --release -p http-host                      # 5 s baseline, 5 s with 100 swaps
//! cargo run --release -p http-host -- --wasm            # the same with the shop on wasm
//! cargo run --release -p http-host -- --seconds 2 --swaps 10 --connections 8
//! cargo run --release -p http-host -- --serve 8080 --dir plugins --admin /tmp/shop.sock
//! HTTP_SHOP_DATABASE="host=127.0.0.1 user=.. password=.." \
//!     cargo run --release -p http-host -- --serve 8080     # or --database "host=.."
//! ```

mod load;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_api::Shop;
use http_db::{Cluster, Db};
use swapkit::{Swapper, SwapperBuilder, WasmLimits};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    seconds: u64,
    swaps: u32,
    connections: usize,
    wasm: bool,
    /// Serve on this port for an external load generator, instead of loading it here.
    serve: Option<u16>,
    /// Serve this shop artifact.
    plugin: Option<PathBuf>,
    /// Serve the shop in this directory, and reload from it.
    dir: Option<PathBuf>,
    /// The admin socket to open.
    admin: Option<PathBuf>,
    /// Reload when `dir` changes.
    watch: bool,
    /// The database to use (a libpq-style connection string), instead of a cluster of its own.
    database: Option<String>,
}

const USAGE: &str = "use --seconds N, --swaps N, --connections N and --wasm for the demo, or \
                     --serve PORT [--plugin FILE | --dir DIR] [--admin SOCKET] [--watch] [--wasm], and \
                     --database CONFIG with either";

fn args() -> Result<Args, String> {
    let mut out = Args {
        seconds: 5,
        swaps: 100,
        connections: 32,
        wasm: false,
        serve: None,
        plugin: None,
        dir: None,
        admin: None,
        watch: false,
        // A password is better kept out of the command line, which every user can read.
        database: std::env::var("HTTP_SHOP_DATABASE").ok(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} takes a value"));
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name} takes a number, not `{v}`"))
        };
        match arg.as_str() {
            "--seconds" => out.seconds = number(&arg, value(&arg)?)?.max(1),
            "--swaps" => out.swaps = number(&arg, value(&arg)?)? as u32,
            "--connections" => out.connections = number(&arg, value(&arg)?)?.max(1) as usize,
            "--wasm" => out.wasm = true,
            "--serve" => out.serve = Some(number(&arg, value(&arg)?)? as u16),
            "--plugin" => out.plugin = Some(value(&arg)?.into()),
            "--dir" => out.dir = Some(value(&arg)?.into()),
            "--admin" => out.admin = Some(value(&arg)?.into()),
            "--watch" => out.watch = true,
            "--database" => out.database = Some(value(&arg)?),
            other => return Err(format!("unknown argument `{other}`; {USAGE}")),
        }
    }
    if out.serve.is_none() && (out.plugin.is_some() || out.dir.is_some() || out.admin.is_some()) {
        return Err(format!(
            "--plugin, --dir and --admin go with --serve; {USAGE}"
        ));
    }
    if out.plugin.is_some() && out.dir.is_some() {
        return Err("give the shop as --plugin FILE or --dir DIR, not both".into());
    }
    if out.watch && out.dir.is_none() {
        return Err("--watch watches the plugin directory: give it with --dir DIR".into());
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.serve {
        Some(port) => runtime.block_on(serve_for_others(args, port)),
        None => runtime.block_on(serve_under_load(args)),
    }
}

/// Builds shop 1.0.0 and 2.0.0 from the workspace, for the backend asked for.
fn build_shops(wasm: bool) -> Result<[PathBuf; 2], BoxError> {
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../Cargo.toml");
    println!(
        "building the shop plugins ({})...",
        if wasm { "wasm" } else { "native" }
    );
    // Built as this host is (a release host gets release plugins); wasm is optimised always,
    // as its debug code runs many times slower.
    let mut build = swapkit_build::PluginBuild::new(workspace)
        .packages(["http-shop-v1", "http-shop-v2"])
        .release(wasm || !cfg!(debug_assertions));
    if wasm {
        build = build.wasm();
    }
    let built: Vec<_> = build.run()?.into_iter().map(|a| a.path).collect();
    Ok([built[0].clone(), built[1].clone()])
}

/// Wasm instances per shop: each request holds one while its first call awaits the database,
/// so the pool is sized for the connections in flight rather than for the cores.
const WASM_POOL: usize = 128;

/// The swapper every mode starts from: the shop may call the database services, and a wasm
/// shop has an instance for each request in flight.
fn builder() -> SwapperBuilder {
    Swapper::builder()
        .sandbox(serve::sandbox())
        .wasm_limits(WasmLimits {
            pool_size: WASM_POOL,
            ..WasmLimits::default()
        })
}

/// The database: the one `config` names, or a throw-away cluster of this process's own (kept
/// running while the returned cluster lives).
async fn database(config: Option<&str>) -> Result<(Option<Cluster>, Arc<Db>), BoxError> {
    let (cluster, config) = match config {
        Some(config) => (None, config.to_owned()),
        None => {
            let cluster = tokio::task::spawn_blocking(Cluster::start).await??;
            let config = cluster.config();
            (Some(cluster), config)
        }
    };
    let db = Db::connect(&config, 4).await?;
    Ok((cluster, Arc::new(db)))
}

/// Serves until SIGTERM or SIGINT, for an external load generator and operator.
async fn serve_for_others(args: Args, port: u16) -> Result<bool, BoxError> {
    let (_cluster, db) = database(args.database.as_deref()).await?;
    let mut builder = builder();
    if let Some(socket) = &args.admin {
        builder = builder.admin_socket(socket);
    }
    if args.watch {
        builder = builder.watch(Duration::from_millis(5));
    }
    let swapper = Arc::new(builder.build()?);
    serve::offer(swapper.vault(), &db);
    match (&args.plugin, &args.dir) {
        (Some(file), _) => swapper.load_files([file])?,
        (None, Some(dir)) => swapper.load_dir(dir)?,
        (None, None) => swapper.load_files([&build_shops(args.wasm)?[0]])?,
    };
    let listener = serve::listener(port)?;
    let version = swapper.pin().client::<dyn Shop>().version()?;
    // Supervisors wait for this line before they send traffic here or stop the previous
    // process.
    println!(
        "ready on http://{}: shop {version}, pid {}",
        listener.local_addr()?,
        std::process::id()
    );
    axum::serve(listener, serve::app(serve::App { swapper, db }))
        .with_graceful_shutdown(serve::terminated())
        .await?;
    println!("stopped");
    Ok(true)
}

/// Publishes `artifact` into `dir` as its shop, the way a deploy should: written under a
/// hidden name, then renamed over the old one, so the watcher never sees half a file.
fn publish(artifact: &Path, dir: &Path) -> std::io::Result<()> {
    let name = Path::new("shop").with_extension(artifact.extension().unwrap_or_default());
    let hidden = dir.join(format!(".{}.tmp", name.display()));
    std::fs::copy(artifact, &hidden)?;
    std::fs::rename(&hidden, dir.join(name))
}

/// The demo: the service and its load in one process; new builds land in the watched
/// plugin directory while the load runs.
async fn serve_under_load(args: Args) -> Result<bool, BoxError> {
    let releases = build_shops(args.wasm)?;
    let (_cluster, db) = database(args.database.as_deref()).await?;
    let dir = tempfile::tempdir()?;
    publish(&releases[0], dir.path())?;
    let swapper = Arc::new(builder().watch(Duration::from_millis(5)).build()?);
    serve::offer(swapper.vault(), &db);
    swapper.load_dir(dir.path())?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = serve::app(serve::App {
        swapper: swapper.clone(),
        db: db.clone(),
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "serving on http://{addr}; {} connections for {} s: even seconds are the baseline, in \
         odd ones {} new builds in all land in the watched plugin directory, then a rollback",
        args.connections,
        2 * args.seconds,
        args.swaps
    );

    let phase = Duration::from_secs(args.seconds);
    let start = Instant::now();
    // Baseline and swapping seconds take turns (even seconds without swaps, odd ones with),
    // so that both see the same drift of a shared machine. The deploys run on a thread of
    // their own, as an operator's would; each waits for the watcher to publish its
    // generation before the next.
    let swapping = {
        let swapper = swapper.clone();
        let (swaps, seconds) = (args.swaps, args.seconds as u32);
        let dir = dir.path().to_owned();
        std::thread::spawn(move || -> Result<Vec<Duration>, BoxError> {
            let mut at = vec![];
            for k in 0..seconds {
                let second = start + Duration::from_secs(2 * k as u64 + 1);
                let here = swaps / seconds + u32::from(k < swaps % seconds);
                for j in 0..here {
                    let due =
                        second + Duration::from_secs_f64((j as f64 + 0.5) / (here + 1) as f64);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    let before = swapper.generation();
                    publish(&releases[(at.len() + 1) % 2], &dir)?;
                    let waited = Instant::now();
                    while swapper.generation() == before {
                        if waited.elapsed() > Duration::from_secs(10) {
                            return Err(format!(
                                "the watcher did not swap in build {} within 10 s (generation \
                                 {} still serves); its reload error, if any, is logged above",
                                at.len() + 1,
                                before
                            )
                            .into());
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    at.push(start.elapsed());
                }
            }
            // The rollback, late in the last swapping second.
            let due = start + Duration::from_secs_f64(2.0 * seconds as f64 - 0.1);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            swapper.rollback()?;
            at.push(start.elapsed());
            Ok(at)
        })
    };
    let deadline = start + 2 * phase;
    let clients: Vec<_> = (0..args.connections)
        .map(|id| tokio::spawn(load::client(addr, id, start, deadline)))
        .collect();
    let mut samples = vec![];
    for c in clients {
        samples.extend(c.await?);
    }
    let swaps = swapping
        .join()
        .map_err(|_| "the swapping thread panicked")??;
    // Every request answered is one visit: the database must hold exactly that many.
    let mut recorded = 0;
    for id in 0..args.connections {
        recorded += db.visits(&load::user(id)).await?;
    }
    Ok(load::report(&samples, &swaps, phase, recorded))
}
