//! The http example against a real PostgreSQL: the service started as a process, its shop
//! plugins built from the workspace, its database a throw-away cluster.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http_db::Cluster;

/// Shop 1.0.0 and 2.0.0, built once for every test.
fn shops() -> &'static [PathBuf; 2] {
    static SHOPS: OnceLock<[PathBuf; 2]> = OnceLock::new();
    SHOPS.get_or_init(|| {
        let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../Cargo.toml");
        let built = swapkit_build::PluginBuild::new(workspace)
            .packages(["http-shop-v1", "http-shop-v2"])
            .run()
            .expect("build the shop plugins");
        [built[0].path.clone(), built[1].path.clone()]
    })
}

/// Puts `artifact` in `dir` as the shop, by an atomic rename.
fn publish(artifact: &Path, dir: &Path) {
    let name = Path::new("shop").with_extension(artifact.extension().unwrap_or_default());
    let hidden = dir.join(format!(".{}.tmp", name.display()));
    std::fs::copy(artifact, &hidden).unwrap();
    std::fs::rename(&hidden, dir.join(name)).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// `http-host --serve` on a free port, serving (and watching) `dir`, with `database`.
struct Service {
    child: Child,
    port: u16,
}

impl Service {
    fn start(dir: &Path, database: &str) -> Service {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_http-host"))
            .args(["--serve", &port.to_string(), "--watch", "--dir"])
            .arg(dir)
            .env("HTTP_SHOP_DATABASE", database)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("ready"),
            "the service did not start: {line:?}"
        );
        Service { child, port }
    }

    /// `GET path` as `user`: status, `x-shop-version`, body.
    fn get(&self, path: &str, user: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nhost: t\r\nx-user: {user}\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let version = head
            .lines()
            .find_map(|l| l.strip_prefix("x-shop-version: "))
            .unwrap_or_default()
            .to_owned();
        (status, version, body.to_owned())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_request_is_a_visit_recorded_by_the_version_that_answered_it_across_a_swap() {
    let cluster = Cluster::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    publish(&shops()[0], dir.path());
    let service = Service::start(dir.path(), &cluster.config());

    let (status, version, page) = service.get("/price/42?qty=5", "ann");
    assert_eq!((status, version.as_str()), (200, "1.0.0"), "{page}");
    assert!(http_api::page::whole(&page, "1.0.0"), "{page}");
    // Five at 142 cents, 5% (35 cents, rounded down) off.
    assert_eq!(http_api::page::number(&page, "cents"), Some(675), "{page}");
    let (_, _, page) = service.get("/cart/7?qty=2", "ann");
    assert_eq!(http_api::page::number(&page, "in_cart"), Some(2), "{page}");

    publish(&shops()[1], dir.path());
    let waited = Instant::now();
    loop {
        let (status, version, page) = service.get("/price/42?qty=5", "ann");
        assert_eq!(status, 200, "{page}");
        assert!(http_api::page::whole(&page, &version), "{page}");
        if version == "2.0.0" {
            // 10% off now.
            assert_eq!(http_api::page::number(&page, "cents"), Some(639), "{page}");
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "no swap to 2.0.0"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The cart and the visits were in the database, not in the plugin: 2.0.0 sees them.
    let (_, _, page) = service.get("/cart/7?qty=3", "ann");
    assert_eq!(http_api::page::number(&page, "in_cart"), Some(5), "{page}");
    let before = requests_of(&service, "ann");
    let (status, version, page) = service.get("/visits", "ann");
    assert_eq!((status, version.as_str()), (200, "2.0.0"), "{page}");
    assert_eq!(
        http_api::page::number(&page, "visits"),
        Some(before + 1),
        "{page}"
    );
}

/// How many visits `user` has, from the service itself (the count is one more than the
/// requests before it, as asking is a visit too).
fn requests_of(service: &Service, user: &str) -> u64 {
    let (_, _, page) = service.get("/visits", user);
    http_api::page::number(&page, "visits").unwrap()
}

#[test]
fn while_the_database_is_down_requests_fail_with_503_and_the_service_still_swaps() {
    let cluster = Cluster::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    publish(&shops()[0], dir.path());
    let service = Service::start(dir.path(), &cluster.config());
    assert_eq!(service.get("/price/1", "bo").0, 200);

    cluster.stop().unwrap();
    let (status, _, body) = service.get("/price/1", "bo");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot record the visit"), "{body}");
    // The shop can still be swapped, and answers the same way: the failure is the database's.
    publish(&shops()[1], dir.path());
    let waited = Instant::now();
    loop {
        let (status, version, body) = service.get("/visits", "bo");
        assert_eq!(status, 503, "{body}");
        if version == "2.0.0" {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "no swap to 2.0.0"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_database_that_cannot_be_reached_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    publish(&shops()[0], dir.path());
    let database = format!(
        "host=127.0.0.1 port={} user=swapkit password=x dbname=postgres connect_timeout=5",
        free_port()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_http-host"))
        .args(["--serve", &free_port().to_string(), "--dir"])
        .arg(dir.path())
        .env("HTTP_SHOP_DATABASE", database)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect to the database"),
        "{stderr}"
    );
}
