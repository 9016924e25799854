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

#[test]
fn publish_roll_out_and_roll_back_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let built = build_plugins(&["hello-greeter-v1", "hello-greeter-v2"]);
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let (v1, v2) = (www.join("greeter-1.so"), www.join("greeter-2.so"));
    std::fs::copy(&built[0], &v1).unwrap();
    std::fs::copy(&built[1], &v2).unwrap();
    let server = swapkit_fleet::serve(&www, "127.0.0.1:0").unwrap();
    let base = format!("http://{}", server.addr());
    let endpoint = etcd.endpoint();
    let at = |args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend([
            "--etcd".into(),
            endpoint.clone(),
            "--service".into(),
            "hello".into(),
        ]);
        all
    };
    let run = |args: &[&str]| {
        let args = at(args);
        ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let fail = |args: &[&str]| {
        let args = at(args);
        let (success, stdout, stderr) =
            swapkit(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!success, "{args:?} should fail:\n{stdout}");
        stderr
    };

    let out = run(&[
        "fleet",
        "publish",
        "--release",
        "v1",
        "--base-url",
        &base,
        v1.to_str().unwrap(),
    ]);
    assert!(out.contains("greeter 1.0.0"), "{out}");
    run(&[
        "fleet",
        "publish",
        "--release",
        "v2",
        "--base-url",
        &base,
        v2.to_str().unwrap(),
    ]);
    // An id is published once: other artifacts under it are refused.
    let err = fail(&[
        "fleet",
        "publish",
        "--release",
        "v2",
        "--base-url",
        &base,
        v1.to_str().unwrap(),
    ]);
    assert!(err.contains("already published"), "{err}");

    let swapper = Swapper::builder()
        .fleet(
            FleetConfig::new([endpoint.as_str()], "hello", "here")
                .cache_dir(dir.path().join("cache")),
        )
        .build()
        .unwrap();
    swapper.load_files([&built[0]]).unwrap();
    wait_until("the host to report", || {
        run(&["fleet", "hosts"]).contains("here")
    });

    let err = fail(&["fleet", "rollout", "--release", "nope"]);
    assert!(err.contains("not published"), "{err}");

    let out = run(&[
        "fleet",
        "rollout",
        "--release",
        "v2",
        "--stable",
        "v1",
        "--steps",
        "1@50,all",
        "--hold",
        "0ms",
    ]);
    assert!(out.contains("done: every host runs the release"), "{out}");
    assert_eq!(serving(&swapper), "2.0.0");
    let status = run(&["fleet", "status"]);
    assert!(
        status.contains("rollout 1: release `v2` (stable `v1`)"),
        "{status}"
    );
    assert!(status.contains("greeter 2.0.0"), "{status}");

    // A second rollout while none runs is fine; abort and rollback need one.
    let err = fail(&["fleet", "abort"]);
    assert!(err.contains("Done already"), "{err}");
    run(&["fleet", "rollback"]);
    wait_until("the host back on 1.0.0", || serving(&swapper) == "1.0.0");
    drop(swapper);
    wait_until("the host's report to go", || {
        run(&["fleet", "hosts"]).contains("no live hosts")
    });
}

#[test]
fn a_host_with_a_trust_policy_runs_only_signed_releases() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let built = build_plugins(&["hello-greeter-v1", "hello-greeter-v2"]);
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let key = dir.path().join("release");
    ok(&["keygen", key.to_str().unwrap()]);
    let (v1, v2, unsigned) = (
        www.join("greeter-1.so"),
        www.join("greeter-2.so"),
        www.join("greeter-2-unsigned.so"),
    );
    std::fs::copy(&built[0], &v1).unwrap();
    std::fs::copy(&built[1], &v2).unwrap();
    std::fs::copy(&built[1], &unsigned).unwrap();
    let key_file = format!("{}.key", key.display());
    ok(&[
        "sign",
        "--key",
        &key_file,
        v1.to_str().unwrap(),
        v2.to_str().unwrap(),
    ]);
    let server = swapkit_fleet::serve(&www, "127.0.0.1:0").unwrap();
    let base = format!("http://{}", server.addr());
    let endpoint = etcd.endpoint();
    let fleet = |args: &[&str]| {
        let mut all = vec!["fleet"];
        all.extend_from_slice(args);
        all.extend(["--etcd", &endpoint, "--service", "signed"]);
        swapkit(&all)
    };
    for (id, file) in [("v1", &v1), ("v2", &v2), ("v2-unsigned", &unsigned)] {
        let (success, out, err) = fleet(&[
            "publish",
            "--release",
            id,
            "--base-url",
            &base,
            file.to_str().unwrap(),
        ]);
        assert!(success, "{out}{err}");
    }

    let public = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
    let policy =
        swapkit::TrustPolicy::new().key(swapkit::trust::PublicKey::parse(&public).unwrap());
    let swapper = Swapper::builder()
        .trust(policy)
        .fleet(
            FleetConfig::new([endpoint.as_str()], "signed", "here")
                .cache_dir(dir.path().join("cache")),
        )
        .build()
        .unwrap();
    swapper.load_files([&v1]).unwrap();
    wait_until("the host to report", || {
        fleet(&["hosts"]).1.contains("here")
    });

    // The unsigned build is refused by the host; the rollout is aborted and nothing changed.
    let (success, out, err) = fleet(&[
        "rollout",
        "--release",
        "v2-unsigned",
        "--stable",
        "v1",
        "--steps",
        "all",
        "--hold",
        "0ms",
    ]);
    assert!(!success, "{out}");
    assert!(
        err.contains("cannot run release `v2-unsigned`") && err.contains("unsigned"),
        "{err}"
    );
    assert_eq!(serving(&swapper), "1.0.0");

    // The signed one runs; its signature came with the release.
    let (success, out, err) = fleet(&[
        "rollout",
        "--release",
        "v2",
        "--stable",
        "v1",
        "--steps",
        "all",
        "--hold",
        "0ms",
    ]);
    assert!(success, "{out}{err}");
    assert_eq!(serving(&swapper), "2.0.0");
}
