//! `swapkit fleet` end to end: a real etcd with TLS and auth on, artifacts served over HTTP
//! by `swapkit fleet serve`'s server, and a host in this process running the real agent.
//! The command line runs as the service's controller user with the operator key; the host as
//! its own user, trusting that key.

mod common;

use std::time::{Duration, Instant};

use common::{build_plugins, ok, swapkit};
use swapkit::Swapper;
use swapkit_fleet::testing::Etcd;
use swapkit_fleet::{FleetConfig, FleetExt, Report};

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
    /// The operator's key pair (`swapkit keygen`): `<operator>.key`, `<operator>.pub`.
    operator: std::path::PathBuf,
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
        let operator = dir.path().join("operator");
        ok(&["keygen", operator.to_str().unwrap()]);
        let t = Setup {
            base: format!("http://{}", server.addr()),
            dir,
            etcd,
            built,
            www,
            service,
            operator,
            _server: server,
        };
        // The users, made by etcd's root with `swapkit fleet grant`.
        for (role, user) in [("controller", "ctl"), ("here", "host-here")] {
            let file = t.dir.path().join(format!("{user}.password"));
            std::fs::write(&file, format!("{user}-password\n")).unwrap();
            let out = t.as_user(
                "root",
                &t.etcd.password_file("root"),
                &[
                    "grant",
                    "--role",
                    role,
                    "--user",
                    user,
                    "--password-file",
                    file.to_str().unwrap(),
                ],
            );
            assert!(out.0, "grant {role}: {} {}", out.1, out.2);
        }
        t
    }

    /// `swapkit fleet ARGS` as etcd `user`, over TLS, for this service.
    fn as_user(
        &self,
        user: &str,
        password: &std::path::Path,
        args: &[&str],
    ) -> (bool, String, String) {
        let endpoint = self.etcd.endpoint();
        let ca = self.etcd.ca_file();
        let mut all = vec!["fleet"];
        all.extend_from_slice(args);
        all.extend([
            "--etcd",
            &endpoint,
            "--service",
            self.service,
            "--etcd-ca",
            ca.to_str().unwrap(),
            "--etcd-user",
            user,
            "--etcd-password-file",
            password.to_str().unwrap(),
        ]);
        swapkit(&all)
    }

    fn operator_public(&self) -> swapkit::trust::PublicKey {
        let text = std::fs::read_to_string(format!("{}.pub", self.operator.display())).unwrap();
        swapkit::trust::PublicKey::parse(&text).unwrap()
    }

    fn operator_secret(&self) -> swapkit::trust::SecretKey {
        let text = std::fs::read_to_string(format!("{}.key", self.operator.display())).unwrap();
        swapkit::trust::SecretKey::parse(&text).unwrap()
    }

    /// The host `here`'s etcd access.
    fn host_access(&self) -> swapkit_fleet::EtcdAccess {
        swapkit_fleet::EtcdAccess::new([self.etcd.endpoint()])
            .ca_file(self.etcd.ca_file())
            .unwrap()
            .user("host-here", "host-here-password")
    }

    fn key(&self, rest: &str) -> String {
        format!("/swapkit/{}/{rest}", self.service)
    }

    /// The host's report, read as root.
    fn report(&self) -> Option<Report> {
        let bytes = self.etcd.get(&self.key("hosts/here"))?;
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    /// Copies build `i` into `www` as `name`.
    fn serve(&self, i: usize, name: &str) -> std::path::PathBuf {
        let path = self.www.join(name);
        std::fs::copy(&self.built[i], &path).unwrap();
        path
    }

    /// `swapkit fleet ARGS` as the controller, with the operator key: (success, stdout,
    /// stderr).
    fn fleet(&self, args: &[&str]) -> (bool, String, String) {
        let key = format!("{}.key", self.operator.display());
        let mut all = args.to_vec();
        all.extend(["--operator-key", &key]);
        self.as_user("ctl", &self.dir.path().join("ctl.password"), &all)
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

    /// A host in this process, running the agent as its etcd user and trusting the
    /// operator key (or, without `operator`, no operator key).
    fn host(&self, builder: swapkit::SwapperBuilder, operator: bool) -> Swapper {
        let mut config = FleetConfig::new(Vec::<String>::new(), self.service, "here")
            .etcd(self.host_access())
            .cache_dir(self.dir.path().join("cache"));
        if operator {
            config = config.operator_key(self.operator_public());
        }
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

    let swapper = t.host(Swapper::builder(), true);
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
    let swapper = t.host(Swapper::builder().trust(policy), false);
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

    // This host trusts no operator key: no rollout can take it down to a lower version,
    // however validly the old release is signed. The rollback is refused by its rollback
    // protection, reported, and it keeps serving 2.0.0.
    t.run(&["rollback"]);
    wait_until("the host to report the refused downgrade", || {
        t.report()
            .and_then(|r| r.error)
            .is_some_and(|e| e.contains("1.0.0"))
    });
    let error = t.report().unwrap().error.unwrap();
    assert!(
        error.contains("downgrade") || error.contains("rollback"),
        "{error}"
    );
    assert_eq!(serving(&swapper), "2.0.0");
}

/// The rollout record as root finds it in etcd.
fn record_bytes(t: &Setup) -> Vec<u8> {
    t.etcd.get(&t.key("rollout")).expect("a rollout record")
}

/// A record of `instruction`, signed by `key` (or unsigned).
fn envelope(
    instruction: &swapkit_fleet::Instruction,
    key: Option<&swapkit::trust::SecretKey>,
) -> Vec<u8> {
    let body = serde_json::to_string(instruction).unwrap();
    let mut value = serde_json::json!({ "body": body });
    if let Some(key) = key {
        let s = key
            .sign_record(swapkit_fleet::ROLLOUT_KIND, body.as_bytes())
            .unwrap();
        let hex: String = s.bytes.iter().map(|b| format!("{b:02x}")).collect();
        value["key"] = s.key.to_string().into();
        value["signature"] = hex.into();
    }
    serde_json::to_vec(&value).unwrap()
}

fn instruction_of(bytes: &[u8]) -> swapkit_fleet::Instruction {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    serde_json::from_str(value["body"].as_str().unwrap()).unwrap()
}

/// Writes `value` as the rollout (as root: a hostile etcd writer), and waits until the host
/// reports a refusal that mentions `why`; the host must still serve `version`.
fn refused(t: &Setup, swapper: &Swapper, value: &[u8], why: &str, version: &str) {
    t.etcd.put(&t.key("rollout"), value);
    wait_until(&format!("the host to refuse a record ({why})"), || {
        t.report()
            .and_then(|r| r.refused)
            .is_some_and(|r| r.contains(why))
    });
    assert_eq!(
        serving(swapper),
        version,
        "after a record refused for {why}"
    );
    let hosts = t.run(&["hosts"]);
    assert!(hosts.contains("refused the rollout"), "{hosts}");
}

#[test]
fn an_etcd_writer_without_the_operator_key_moves_no_host() {
    let t = Setup::new("guarded");
    let (v1, v2) = (t.serve(0, "greeter-1.so"), t.serve(1, "greeter-2.so"));
    for (id, file) in [("v1", &v1), ("v2", &v2)] {
        t.run(&[
            "publish",
            "--release",
            id,
            "--base-url",
            &t.base,
            file.to_str().unwrap(),
        ]);
    }
    let swapper = t.host(Swapper::builder(), true);
    swapper.load_files([&v1]).unwrap();
    wait_until("the host to report", || t.report().is_some());
    let all = |id| {
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
    t.run(&all("v2"));
    assert_eq!(serving(&swapper), "2.0.0");
    let done_v2 = record_bytes(&t);
    let status = t.run(&["status"]);
    assert!(
        status.contains("verified with the operator key"),
        "{status}"
    );

    // The operator rolls back: a signed instruction takes the host down.
    t.run(&["rollback"]);
    wait_until("the host back on 1.0.0", || serving(&swapper) == "1.0.0");
    let rolled_back = record_bytes(&t);
    let seq = instruction_of(&rolled_back).seq;
    wait_until("the host to report the record it follows", || {
        t.report().and_then(|r| r.seq) == Some(seq)
    });

    // Replayed: the older record (v2 done), validly signed, written back.
    refused(&t, &swapper, &done_v2, "replay", "1.0.0");
    // Unsigned: the same instruction numbered above, without a signature.
    let mut forged = instruction_of(&done_v2);
    forged.seq = seq + 1_000;
    refused(&t, &swapper, &envelope(&forged, None), "unsigned", "1.0.0");
    // Signed by another key.
    let stranger = swapkit::trust::SecretKey::generate().unwrap();
    refused(
        &t,
        &swapper,
        &envelope(&forged, Some(&stranger)),
        "forged",
        "1.0.0",
    );
    // The operator's signature over other bytes.
    let mut value: serde_json::Value = serde_json::from_slice(&rolled_back).unwrap();
    let body = value["body"]
        .as_str()
        .unwrap()
        .replace("rolled_back", "done");
    value["body"] = body.into();
    refused(
        &t,
        &swapper,
        &serde_json::to_vec(&value).unwrap(),
        "forged",
        "1.0.0",
    );
    // Signed by the operator, for another service.
    let mut elsewhere = instruction_of(&done_v2);
    elsewhere.seq = seq + 2_000;
    elsewhere.service = "other".into();
    refused(
        &t,
        &swapper,
        &envelope(&elsewhere, Some(&t.operator_secret())),
        "service `other`",
        "1.0.0",
    );

    // The controller acts on none of it...
    let status = t.run(&["status"]);
    assert!(status.contains("NOT THE OPERATOR'S"), "{status}");
    let err = t.fail(&["pause"]);
    assert!(err.contains("rollout record"), "{err}");
    // ...and a new rollout replaces it, numbered above all.
    t.run(&all("v2"));
    assert_eq!(serving(&swapper), "2.0.0");
    assert!(t.report().unwrap().refused.is_none());

    // A release record rewritten after it was signed: a controller will not sign over it...
    let release_key = t.key("release/v1");
    let original = t.etcd.get(&release_key).unwrap();
    let mut tampered: serde_json::Value = serde_json::from_slice(&original).unwrap();
    tampered["artifacts"][0]["url"] = format!("{}/greeter-2.so", t.base).into();
    t.etcd
        .put(&release_key, &serde_json::to_vec(&tampered).unwrap());
    let err = t.fail(&["rollback"]);
    assert!(err.contains("rewritten since"), "{err}");
    // ...and a host refuses an instruction whose release record is not the one signed.
    let mut signed = instruction_of(&record_bytes(&t));
    signed.seq += 1;
    signed.rollout.phase = swapkit_fleet::Phase::RolledBack;
    refused(
        &t,
        &swapper,
        &envelope(&signed, Some(&t.operator_secret())),
        "release `v1` in etcd is not the one",
        "2.0.0",
    );
    t.etcd.put(&release_key, &original);

    // A restarted host remembers the highest record it followed.
    let current = record_bytes(&t);
    drop(swapper);
    let swapper = t.host(Swapper::builder(), true);
    swapper.load_files([&v2]).unwrap();
    // It follows the record in etcd (the rollback signed above, now that its release is
    // restored) before the replay is written, so what it runs is settled.
    let current_seq = instruction_of(&current).seq;
    wait_until("the restarted host to follow the current record", || {
        t.report()
            .is_some_and(|r| r.seq == Some(current_seq) && r.converged)
    });
    assert_eq!(serving(&swapper), "1.0.0");
    refused(&t, &swapper, &rolled_back, "replay", "1.0.0");
    t.etcd.put(&t.key("rollout"), &current);
    wait_until("the host to follow the current record again", || {
        t.report()
            .is_some_and(|r| r.refused.is_none() && r.converged)
    });

    // A record numbered an hour ahead of this controller's clock (another controller's,
    // skewed), then forged over: the next rollout is numbered above what the host followed,
    // not by the clock alone.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut ahead = instruction_of(&current);
    ahead.seq = now_ms + 3_600_000;
    t.etcd.put(
        &t.key("rollout"),
        &envelope(&ahead, Some(&t.operator_secret())),
    );
    wait_until("the host to follow the record ahead", || {
        t.report().and_then(|r| r.seq) == Some(ahead.seq)
    });
    ahead.seq += 1;
    // (`current` is the rollback signed above, followed now that its release is restored.)
    refused(&t, &swapper, &envelope(&ahead, None), "unsigned", "1.0.0");
    t.run(&all("v2"));
    assert_eq!(serving(&swapper), "2.0.0");
    // The rollout ends in a record after the one that started it (its one step done): the
    // host may report the first before it follows the last.
    let last = instruction_of(&record_bytes(&t)).seq;
    assert!(last > ahead.seq, "{last} after {}", ahead.seq);
    wait_until("the host to follow the rollout's last record", || {
        t.report().and_then(|r| r.seq) == Some(last)
    });
    let report = t.report().unwrap();
    assert!(report.refused.is_none(), "{report:?}");
}

#[test]
fn each_etcd_user_writes_only_what_its_role_allows() {
    let t = Setup::new("roles");
    let host = t.host_access();
    let key = |rest: &str| t.key(rest);
    // A host writes its own report, and nothing else of the service.
    t.etcd.put_as(&host, &key("hosts/here"), b"{}").unwrap();
    for rest in ["rollout", "release/v9", "hosts/there"] {
        let err = t.etcd.put_as(&host, &key(rest), b"{}").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("permission denied") && text.contains("own report"),
            "{rest}: {text}"
        );
    }
    // The controller writes the service's keys, and no other service's.
    let ctl = t
        .etcd
        .user("ctl", "ctl-password")
        .ca_file(t.etcd.ca_file())
        .unwrap();
    t.etcd.put_as(&ctl, &key("release/v9"), b"{}").unwrap();
    let err = t
        .etcd
        .put_as(&ctl, "/swapkit/other/rollout", b"{}")
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");

    // Without the right password, without a user, or without TLS, nothing is read.
    let (success, _, err) = t.as_user("ctl", &t.etcd.password_file("root"), &["status"]);
    assert!(
        !success && err.contains("user or password is wrong"),
        "{err}"
    );
    let (success, _, err) = swapkit(&[
        "fleet",
        "status",
        "--etcd",
        &t.etcd.endpoint(),
        "--service",
        t.service,
        "--etcd-ca",
        t.etcd.ca_file().to_str().unwrap(),
    ]);
    assert!(!success && err.contains("requires a user"), "{err}");
    let plain = swapkit_fleet::EtcdAccess::new([format!("http://{}", t.etcd.endpoint())])
        .user("ctl", "ctl-password");
    let err = t
        .etcd
        .put_as(&plain, &key("release/v9"), b"{}")
        .unwrap_err();
    assert!(
        matches!(err, swapkit_fleet::FleetError::Etcd { .. }),
        "{err}"
    );
}
