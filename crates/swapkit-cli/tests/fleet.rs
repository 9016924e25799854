//! `swapkit fleet` end to end: a real etcd, artifacts served over HTTP by `swapkit fleet
//! serve`'s server, and a host in this process running the real agent.

mod common;

use std::time::{Duration, Instant};

use common::{build_plugins, ok, swapkit};
use swapkit::Swapper;
use swapkit_fleet::testing::Etcd;
use swapkit_fleet::{FleetConfig, FleetExt};

fn serving(swapper: &Swapper) -> String {
    swapper
        .status()
        .current
        .plugins
        .first()
        .map(|p| p.version.clone())
        .unwrap_or_default()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A real etcd, the greeter's two builds served over HTTP from `www`, and `swapkit fleet`
/// pointed at them for one service.
struct Setup {
    dir: tempfile::TempDir,
    etcd: Etcd,
    built: Vec<std::path::PathBuf>,
    www: std::path::PathBuf,
    base: String,
    service: &'static str,
    _server: swapkit_fleet::Server,
}

impl Setup {
    fn new(service: &'static str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let etcd = Etcd::start(dir.path());
        let built = build_plugins(&["hello-greeter-v1", "hello-greeter-v2"]);
        let www = dir.path().join("www");
        std::fs::create_dir_all(&www).unwrap();
        let server = swapkit_fleet::serve(&www, "127.0.0.1:0").unwrap();
        Setup {
            base: format!("http://{}", server.addr()),
            dir,
            etcd,
            built,
            www,
            service,
            _server: server,
        }
    }

    /// Copies build `i` into `www` as `name`.
    fn serve(&self, i: usize, name: &str) -> std::path::PathBuf {
        let path = self.www.join(name);
        std::fs::copy(&self.built[i], &path).unwrap();
        path
    }

    /// `swapkit fleet ARGS --etcd .. --service ..`: (success, stdout, stderr).
    fn fleet(&self, args: &[&str]) -> (bool, String, String) {
        let endpoint = self.etcd.endpoint();
        let mut all = vec!["fleet"];
        all.extend_from_slice(args);
        all.extend(["--etcd", &endpoint, "--service", self.service]);
        swapkit(&all)
    }

    fn run(&self, args: &[&str]) -> String {
        let (success, out, err) = self.fleet(args);
        assert!(success, "fleet {args:?} failed:\n{out}\n{err}");
        out
    }

    fn fail(&self, args: &[&str]) -> String {
        let (success, out, err) = self.fleet(args);
        assert!(!success, "fleet {args:?} should fail:\n{out}");
        err
    }

    /// A host in this process, running the agent.
    fn host(&self, builder: swapkit::SwapperBuilder) -> Swapper {
        let endpoint = self.etcd.endpoint();
        let config = FleetConfig::new([endpoint.as_str()], self.service, "here")
            .cache_dir(self.dir.path().join("cache"));
        builder.fleet(config).build().unwrap()
    }
}

#[test]
fn publish_roll_out_and_roll_back_from_the_command_line() {
    let t = Setup::new("hello");
    let (v1, v2) = (t.serve(0, "greeter-1.so"), t.serve(1, "greeter-2.so"));
    let (v1, v2) = (v1.to_str().unwrap(), v2.to_str().unwrap());
    let out = t.run(&["publish", "--release", "v1", "--base-url", &t.base, v1]);
    assert!(out.contains("greeter 1.0.0"), "{out}");
    t.run(&["publish", "--release", "v2", "--base-url", &t.base, v2]);
    // An id is published once: other artifacts under it are refused.
    let err = t.fail(&["publish", "--release", "v2", "--base-url", &t.base, v1]);
    assert!(err.contains("already published"), "{err}");

    let swapper = t.host(Swapper::builder());
    swapper.load_files([&t.built[0]]).unwrap();
    wait_until("the host to report", || t.run(&["hosts"]).contains("here"));

    let err = t.fail(&["rollout", "--release", "nope"]);
    assert!(err.contains("not published"), "{err}");

    let rollout = [
        "rollout",
        "--release",
        "v2",
        "--stable",
        "v1",
        "--steps",
        "1@50,all",
        "--hold",
        "0ms",
    ];
    let out = t.run(&rollout);
    assert!(out.contains("done: every host runs the release"), "{out}");
    assert_eq!(serving(&swapper), "2.0.0");
    let status = t.run(&["status"]);
    assert!(
        status.contains("rollout 1: release `v2` (stable `v1`)"),
        "{status}"
    );
    assert!(status.contains("greeter 2.0.0"), "{status}");

    // Abort needs a rollout in progress; rollback undoes a finished one.
    let err = t.fail(&["abort"]);
    assert!(err.contains("Done already"), "{err}");
    t.run(&["rollback"]);
    wait_until("the host back on 1.0.0", || serving(&swapper) == "1.0.0");
    drop(swapper);
    wait_until("the host's report to go", || {
        t.run(&["hosts"]).contains("no live hosts")
    });
}

#[test]
fn a_host_with_a_trust_policy_runs_only_signed_releases() {
    let t = Setup::new("signed");
    let key = t.dir.path().join("release");
    ok(&["keygen", key.to_str().unwrap()]);
    let (v1, v2, unsigned) = (
        t.serve(0, "greeter-1.so"),
        t.serve(1, "greeter-2.so"),
        t.serve(1, "greeter-2-unsigned.so"),
    );
    let key_file = format!("{}.key", key.display());
    ok(&[
        "sign",
        "--key",
        &key_file,
        v1.to_str().unwrap(),
        v2.to_str().unwrap(),
    ]);
    for (id, file) in [("v1", &v1), ("v2", &v2), ("v2-unsigned", &unsigned)] {
        t.run(&[
            "publish",
            "--release",
            id,
            "--base-url",
            &t.base,
            file.to_str().unwrap(),
        ]);
    }

    let public = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
    let policy =
        swapkit::TrustPolicy::new().key(swapkit::trust::PublicKey::parse(&public).unwrap());
    let swapper = t.host(Swapper::builder().trust(policy));
    swapper.load_files([&v1]).unwrap();
    wait_until("the host to report", || t.run(&["hosts"]).contains("here"));

    // The unsigned build is refused by the host; the rollout is aborted and nothing changed.
    let rollout = |id| {
        [
            "rollout",
            "--release",
            id,
            "--stable",
            "v1",
            "--steps",
            "all",
            "--hold",
            "0ms",
        ]
    };
    let err = t.fail(&rollout("v2-unsigned"));
    assert!(
        err.contains("cannot run release `v2-unsigned`") && err.contains("unsigned"),
        "{err}"
    );
    assert_eq!(serving(&swapper), "1.0.0");

    // The signed one runs; its signature came with the release.
    t.run(&rollout("v2"));
    assert_eq!(serving(&swapper), "2.0.0");
}
