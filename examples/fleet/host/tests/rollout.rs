//! Fleet rollouts with real parts: a real etcd (Debian's `etcd-server`) on 127.0.0.1 with its
//! data in a temporary directory, TLS and auth on, five `fleet-host` processes (each its own
//! etcd user, trusting the operator key) calling their pricer plugin without pause, and the
//! releases' artifacts served over HTTP on 127.0.0.1. Controllers sign with the operator key.
//!
//! The scenarios run one at a time (each starts its own etcd and hosts).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use swapkit_fleet::testing::Etcd;
use swapkit_fleet::{Artifact, Controller, Phase, Plan, Progress, Release, Report};

/// One scenario at a time: each runs an etcd and five busy hosts on two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn terminate(child: &mut Child, signal: i32) {
    // SAFETY: kill(2) on a child this test spawned and has not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let _ = child.wait();
}

/// The pricer's three builds, once per test binary.
struct Builds {
    v1: PathBuf,
    v2: PathBuf,
    bad: PathBuf,
}

fn builds() -> &'static Builds {
    static BUILDS: OnceLock<Builds> = OnceLock::new();
    BUILDS.get_or_init(|| {
        let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../Cargo.toml");
        let built = swapkit_build::PluginBuild::new(workspace)
            .packages(["fleet-pricer-v1", "fleet-pricer-v2", "fleet-pricer-bad"])
            .run()
            .expect("build the pricer plugins");
        Builds {
            v1: built[0].path.clone(),
            v2: built[1].path.clone(),
            bad: built[2].path.clone(),
        }
    })
}

/// A host process.
struct Host {
    id: String,
    child: Option<Child>,
    state: PathBuf,
}

impl Host {
    fn tally(&self) -> (u64, u64) {
        let text = std::fs::read_to_string(self.state.join("tally")).unwrap_or_default();
        let mut it = text.split_whitespace().map(|n| n.parse().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, libc::SIGKILL);
        }
    }
}

/// An etcd, the artifact server, and hosts that start on release v1.
struct Fleet {
    // Dropped in this order: the hosts, then what they used.
    hosts: Vec<Host>,
    _www: swapkit_fleet::Server,
    etcd: Etcd,
    dir: tempfile::TempDir,
    service: String,
    /// The operator's key pair, as `swapkit keygen` writes it.
    operator: swapkit::trust::SecretKey,
    /// The controller's etcd access.
    access: swapkit_fleet::EtcdAccess,
    /// The published releases' SHA-256, by id.
    v1: String,
    v2: String,
}

impl Fleet {
    fn start(hosts: usize) -> Fleet {
        let b = builds();
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("www");
        std::fs::create_dir_all(&www).unwrap();
        let server = swapkit_fleet::serve(&www, "127.0.0.1:0").unwrap();
        let etcd = Etcd::start(dir.path());
        let service = "pricing".to_owned();
        let operator = swapkit::trust::SecretKey::generate().unwrap();
        std::fs::write(dir.path().join("operator.pub"), operator.public().to_text()).unwrap();
        let access = etcd.controller(&service);
        let mut c = Controller::with_access(access.clone(), &service).unwrap();
        let mut publish = |id: &str, version: &str, built: &Path| {
            let file = www.join(format!("pricer-{id}.so"));
            std::fs::copy(built, &file).unwrap();
            let base = format!("http://{}", server.addr());
            let artifact = Artifact::from_file(&file, "pricer", version, Some(&base)).unwrap();
            let sha256 = artifact.sha256.clone();
            c.publish(&Release {
                id: id.into(),
                artifacts: vec![artifact],
            })
            .unwrap();
            sha256
        };
        let v1 = publish("v1", "1.0.0", &b.v1);
        let v2 = publish("v2", "2.0.0", &b.v2);
        publish("bad", "2.1.0", &b.bad);
        let mut fleet = Fleet {
            operator,
            access,
            etcd,
            _www: server,
            dir,
            hosts: vec![],
            service,
            v1,
            v2,
        };
        for i in 1..=hosts {
            fleet.add_host(&format!("h{i}"));
        }
        fleet.wait_reports(hosts);
        fleet
    }

    /// A controller of the service, signing with the operator key.
    fn controller(&self) -> Controller {
        let key = swapkit::trust::SecretKey::parse(&self.operator.to_text()).unwrap();
        Controller::with_access(self.access.clone(), &self.service)
            .unwrap()
            .operator_key(key)
    }

    /// Starts a host whose plugin directory holds v1 (or starts it again, on its state).
    fn add_host(&mut self, id: &str) {
        let plugins = self.dir.path().join(id).join("plugins");
        let state = self.dir.path().join(id).join("state");
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        std::fs::copy(&builds().v1, plugins.join("pricer.so")).unwrap();
        let stderr = std::fs::File::create(state.join("stderr")).unwrap();
        let user = self.etcd.host(&self.service, id);
        let user = user.user_name().unwrap().to_owned();
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleet-host"))
            .args([
                "--etcd",
                &self.etcd.endpoint(),
                "--service",
                &self.service,
                "--host",
                id,
                "--etcd-user",
                &user,
            ])
            .arg("--etcd-password-file")
            .arg(self.etcd.password_file(&user))
            .arg("--etcd-ca")
            .arg(self.etcd.ca_file())
            .arg("--operator-key")
            .arg(self.dir.path().join("operator.pub"))
            .arg("--state")
            .arg(&state)
            .arg("--plugins")
            .arg(&plugins)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("ready"), "{id} did not start: {line:?}");
        self.hosts.retain(|h| h.id != id);
        self.hosts.push(Host {
            id: id.into(),
            child: Some(child),
            state,
        });
    }

    fn host(&mut self, id: &str) -> &mut Host {
        self.hosts.iter_mut().find(|h| h.id == id).unwrap()
    }

    fn reports(&self) -> Vec<Report> {
        self.controller().status().unwrap().1
    }

    fn wait_reports(&self, n: usize) {
        wait_until(Duration::from_secs(30), "every host to report", || {
            self.reports().len() == n
        });
    }

    /// Hosts whose only plugin is the release with this hash, and no canary.
    fn serving(&self, sha: &str) -> usize {
        self.reports()
            .iter()
            .filter(|r| r.canary.is_none() && r.plugins.len() == 1 && r.plugins[0].sha256 == sha)
            .count()
    }
}

/// Each host writes its tally every 100 ms: waits until every host has written one since
/// the moment of the call.
fn settle_tallies() {
    std::thread::sleep(Duration::from_millis(300));
}

fn wait_until(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "waited {timeout:?} for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn plan(steps: &str, hold_ms: u64) -> Plan {
    Plan {
        steps: Plan::parse_steps(steps, hold_ms).unwrap(),
        deadline_ms: 20_000,
        failure_margin: 0.01,
        min_calls: 50,
    }
}

#[test]
fn a_staged_rollout_reaches_every_host_and_a_late_one() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fleet = Fleet::start(5);
    let mut c = fleet.controller();
    let rollout = c
        .start("v2", plan("1,50%,all", 0), Some("v1".into()))
        .unwrap();
    assert_eq!(
        rollout.targets,
        Some(vec!["h1".to_owned()]),
        "the canary step takes one host"
    );
    let started = Instant::now();
    let mut seen = vec![];
    let done = c.drive(|p| seen.push(p.clone())).unwrap();
    let took = started.elapsed();
    assert_eq!(done.phase, Phase::Done, "{done:?}");
    for step in 1..3 {
        assert!(seen.contains(&Progress::Advanced { step }), "{seen:?}");
    }
    assert_eq!(fleet.serving(&fleet.v2), 5, "{:#?}", fleet.reports());
    eprintln!(
        "figure: rollout to all five hosts serving v2, three steps, zero-length windows: {took:?}"
    );
    // A host that joins after the rollout (starting on v1) converges to it.
    fleet.add_host("h6");
    wait_until(Duration::from_secs(10), "the late host to run v2", || {
        fleet.serving(&fleet.v2) == 6
    });
    settle_tallies();
    let failed: u64 = fleet.hosts.iter().map(|h| h.tally().1).sum();
    assert_eq!(failed, 0, "no call failed on any host");
}

#[test]
fn a_faulty_release_is_caught_at_the_canary_and_rolled_back_everywhere() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fleet = Fleet::start(5);
    let mut c = fleet.controller();
    c.start("bad", plan("1,all", 5_000), Some("v1".into()))
        .unwrap();
    let aborted = c.drive(|_| {}).unwrap();
    let caught = Instant::now();
    assert_eq!(aborted.phase, Phase::Aborted);
    let reason = aborted.reason.clone().unwrap_or_default();
    assert!(reason.starts_with("gate:"), "{reason}");
    assert_eq!(aborted.step, 0, "caught at the canary step");
    wait_until(Duration::from_secs(10), "every host back on v1", || {
        fleet.serving(&fleet.v1) == 5
    });
    eprintln!(
        "figure: from the failed gate to all five hosts back on v1: {:?}",
        caught.elapsed()
    );
    // Only the canary host's calls failed (once each host has written its tally since).
    settle_tallies();
    for h in ["h2", "h3", "h4", "h5"] {
        let (calls, failed) = fleet.host(h).tally();
        assert!(calls > 0);
        assert_eq!(failed, 0, "{h} is outside the canary's share");
    }
    let canary = fleet.host("h1").state.clone();
    wait_until(
        Duration::from_secs(10),
        "the canary host's tally of its failed calls",
        || {
            let tally = std::fs::read_to_string(canary.join("tally")).unwrap_or_default();
            tally.split_whitespace().nth(1).is_some_and(|f| f != "0")
        },
    );
}

#[test]
fn a_release_a_host_cannot_load_aborts_the_rollout() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fleet = Fleet::start(2);
    let mut c = fleet.controller();
    // Published with v2's hash but pointing at v1's file: every fetch fails its check.
    let mut lying = c
        .releases()
        .unwrap()
        .into_iter()
        .find(|r| r.id == "v2")
        .unwrap();
    lying.id = "lying".into();
    lying.artifacts[0].url = lying.artifacts[0].url.replace("pricer-v2", "pricer-v1");
    c.publish(&lying).unwrap();
    c.start("lying", plan("1,all", 0), Some("v1".into()))
        .unwrap();
    let aborted = c.drive(|_| {}).unwrap();
    assert_eq!(aborted.phase, Phase::Aborted);
    let reason = aborted.reason.unwrap_or_default();
    assert!(
        reason.contains("cannot run release `lying`") && reason.contains("SHA-256"),
        "{reason}"
    );
    assert_eq!(fleet.serving(&fleet.v1), 2, "nothing was loaded");
}

#[test]
fn two_controllers_move_each_step_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fleet = Fleet::start(5);
    fleet
        .controller()
        .start("v2", plan("1,2,3,all", 100), Some("v1".into()))
        .unwrap();
    let drivers: Vec<_> = (0..2)
        .map(|_| {
            let mut c = fleet.controller();
            std::thread::spawn(move || {
                let mut advanced = vec![];
                let end = c
                    .drive(|p| {
                        if let Progress::Advanced { step } = p {
                            advanced.push(*step);
                        }
                    })
                    .unwrap();
                (end, advanced)
            })
        })
        .collect();
    let mut advanced = vec![];
    for d in drivers {
        let (end, steps) = d.join().unwrap();
        assert_eq!(end.phase, Phase::Done);
        advanced.extend(steps);
    }
    advanced.sort_unstable();
    assert_eq!(
        advanced,
        [1, 2, 3],
        "each step moved by exactly one controller"
    );
    assert_eq!(fleet.serving(&fleet.v2), 5);
}

#[test]
fn a_host_killed_mid_rollout_comes_back_and_converges() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fleet = Fleet::start(5);
    let mut c = fleet.controller();
    c.start("v2", plan("2,all", 1_500), Some("v1".into()))
        .unwrap();
    let driver = {
        let mut c = fleet.controller();
        std::thread::spawn(move || c.drive(|_| {}).unwrap())
    };
    // h2 is in the first step; kill it once it runs v2, and start it again.
    wait_until(Duration::from_secs(10), "h2 to run v2", || {
        fleet
            .reports()
            .iter()
            .any(|r| r.host == "h2" && r.plugins.iter().any(|p| p.sha256 == fleet.v2))
    });
    let mut child = fleet.host("h2").child.take().unwrap();
    terminate(&mut child, libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    fleet.add_host("h2");
    let done = driver.join().unwrap();
    assert_eq!(done.phase, Phase::Done, "{done:?}");
    wait_until(Duration::from_secs(10), "all five on v2", || {
        fleet.serving(&fleet.v2) == 5
    });
}

#[test]
fn etcd_stopped_mid_rollout_pauses_it_and_hosts_keep_serving() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fleet = Fleet::start(5);
    let mut c = fleet.controller();
    c.start("v2", plan("1,all", 1_000), Some("v1".into()))
        .unwrap();
    let driver = {
        let mut c = fleet.controller();
        std::thread::spawn(move || {
            let mut waited = false;
            let end = c
                .drive(|p| waited |= matches!(p, Progress::Waiting { .. }))
                .unwrap();
            (end, waited)
        })
    };
    wait_until(Duration::from_secs(10), "the canary host to run v2", || {
        fleet.serving(&fleet.v2) == 1
    });
    fleet.etcd.stop();
    let before: Vec<(u64, u64)> = fleet.hosts.iter().map(Host::tally).collect();
    std::thread::sleep(Duration::from_millis(1_500));
    for (h, (calls, failed)) in fleet.hosts.iter().zip(before) {
        let (now_calls, now_failed) = h.tally();
        assert!(now_calls > calls, "{} kept serving without etcd", h.id);
        assert_eq!(now_failed, failed, "{} failed no call without etcd", h.id);
    }
    fleet.etcd.run();
    let (done, waited) = driver.join().unwrap();
    assert!(waited, "the controller noticed the outage");
    assert_eq!(done.phase, Phase::Done, "{done:?}");
    wait_until(Duration::from_secs(10), "all five on v2", || {
        fleet.serving(&fleet.v2) == 5
    });
    settle_tallies();
    let failed: u64 = fleet.hosts.iter().map(|h| h.tally().1).sum();
    assert_eq!(failed, 0);
}

#[test]
fn a_step_whose_hosts_do_not_converge_or_give_no_evidence_hits_its_deadline() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fleet = Fleet::start(2);
    let mut c = fleet.controller();
    // h2 is frozen: its report stays until its lease runs out, and it never converges.
    let pid = fleet.host("h2").child.as_ref().unwrap().id() as libc::pid_t;
    // SAFETY: kill(2) on a child of this test, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let mut stuck = plan("all", 0);
    stuck.deadline_ms = 500;
    c.start("v2", stuck, Some("v1".into())).unwrap();
    let aborted = c.drive(|_| {}).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(aborted.phase, Phase::Aborted);
    let reason = aborted.reason.unwrap_or_default();
    assert!(
        reason.starts_with("progress deadline: 1 of 2 hosts"),
        "{reason}"
    );
    wait_until(Duration::from_secs(10), "both back on v1", || {
        fleet.serving(&fleet.v1) == 2
    });

    // A watched canary step that no call reaches cannot be judged: it is not waved through.
    let mut starved = plan("1@10,all", 100);
    starved.min_calls = 1_000_000;
    starved.deadline_ms = 1_000;
    c.start("v2", starved, Some("v1".into())).unwrap();
    let aborted = c.drive(|_| {}).unwrap();
    assert_eq!(aborted.phase, Phase::Aborted);
    assert_eq!(aborted.step, 0);
    let reason = aborted.reason.unwrap_or_default();
    assert!(
        reason.contains("fewer than the 1000000 calls the gate needs"),
        "{reason}"
    );
}

#[test]
fn idle_hosts_report_at_their_pace_and_do_not_wake_each_other() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fleet = Fleet::start(3);
    let mut c = fleet.controller();
    // Each host reports every 100 ms. Sampled every 10 ms for a second, a host shows about ten
    // distinct reports; hosts that woke at each other's reports rewrote theirs without pause.
    let mut seen: std::collections::HashMap<String, std::collections::HashSet<u64>> =
        Default::default();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        for r in c.status().unwrap().1 {
            seen.entry(r.host).or_default().insert(r.at_ms);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(seen.len(), 3);
    for (host, reports) in seen {
        assert!(
            reports.len() < 40,
            "{host} wrote {} reports in a second",
            reports.len()
        );
    }
}
