//! The fleet example end to end, with its figures: a real etcd on 127.0.0.1 (Debian's
//! `etcd-server`), an HTTP server for the artifacts, and five `fleet-host` processes that
//! call their pricer plugin without pause. etcd runs with TLS and auth on; each host is an etcd
//! user that may write only its own report, and follows only rollouts the operator key signed.
//!
//! Each round rolls release v2 out in three steps with zero-length windows, then tries a
//! faulty release as a canary on one host at 10% of its traffic, which the gate catches and
//! aborts, then goes back to v1. It prints, per round, the time from `rollout` to every host
//! serving the release, and from the failed gate to every host back on the stable release;
//! then the calls that failed on each host. Exits non-zero if a call failed outside the
//! canary's share, or a rollout did not end as it should.
//!
//! ```text
//! cargo run --release -p fleet-host --bin fleet-demo            # 5 hosts, 5 rounds
//! cargo run --release -p fleet-host --bin fleet-demo -- --hosts 3 --rounds 2
//! ```

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use swapkit_fleet::testing::Etcd;
use swapkit_fleet::{Artifact, Controller, Phase, Plan, Release};

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fleet-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    hosts: usize,
    rounds: usize,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        hosts: 5,
        rounds: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = || {
            it.next()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{arg} takes a positive number"))
        };
        match arg.as_str() {
            "--hosts" => out.hosts = number()?,
            "--rounds" => out.rounds = number()?,
            other => {
                return Err(format!(
                    "unknown argument `{other}`; use --hosts N, --rounds N"
                ))
            }
        }
    }
    Ok(out)
}

/// A host process, killed when dropped.
struct Host {
    id: String,
    child: Child,
    state: PathBuf,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Host {
    fn tally(&self) -> (u64, u64) {
        let text = std::fs::read_to_string(self.state.join("tally")).unwrap_or_default();
        let mut it = text.split_whitespace().map(|n| n.parse().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    }
}

fn run() -> Result<bool, Error> {
    let args = args()?;
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../Cargo.toml");
    println!("building the pricer plugins...");
    let built: Vec<PathBuf> = swapkit_build::PluginBuild::new(workspace)
        .packages(["fleet-pricer-v1", "fleet-pricer-v2", "fleet-pricer-bad"])
        .release(!cfg!(debug_assertions))
        .run()?
        .into_iter()
        .map(|a| a.path)
        .collect();
    let dir = tempfile::tempdir()?;
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www)?;
    let server = swapkit_fleet::serve(&www, "127.0.0.1:0")?;
    println!("starting etcd...");
    let etcd = Etcd::start(dir.path());
    let service = "pricing";
    let operator = swapkit::trust::SecretKey::generate()?;
    std::fs::write(dir.path().join("operator.pub"), operator.public().to_text())?;
    let mut c = Controller::with_access(etcd.controller(service), service)?.operator_key(operator);
    let mut hashes = vec![];
    for (id, version, path) in [
        ("v1", "1.0.0", &built[0]),
        ("v2", "2.0.0", &built[1]),
        ("bad", "2.1.0", &built[2]),
    ] {
        let file = www.join(format!("pricer-{id}.so"));
        std::fs::copy(path, &file)?;
        let base = format!("http://{}", server.addr());
        let artifact = Artifact::from_file(&file, "pricer", version, Some(&base))?;
        let sha256 = artifact.sha256.clone();
        c.publish(&Release {
            id: id.into(),
            artifacts: vec![artifact],
        })?;
        hashes.push(sha256);
    }
    let hosts = (1..=args.hosts)
        .map(|i| start_host(&format!("h{i}"), dir.path(), &etcd, service, &built[0]))
        .collect::<Result<Vec<_>, _>>()?;
    let all_on = |c: &mut Controller, sha: &str| -> Result<bool, Error> {
        let reports = c.status()?.1;
        Ok(reports.len() == args.hosts
            && reports
                .iter()
                .all(|r| r.canary.is_none() && r.plugins.iter().all(|p| p.sha256 == sha)))
    };
    wait(&mut c, |c| all_on(c, &hashes[0]))?;
    println!(
        "{} hosts serve v1 and call it every 200 µs; load average {}",
        args.hosts,
        load_average()
    );

    let zero = |steps: &str, hold_ms| Plan {
        steps: Plan::parse_steps(steps, hold_ms).expect("steps"),
        deadline_ms: 10_000,
        failure_margin: 0.01,
        min_calls: 50,
    };
    let mut rollouts = vec![];
    let mut rollbacks = vec![];
    let mut ok = true;
    println!(
        "\n{:>5} {:>22} {:>26}",
        "round", "rollout to all on v2", "failed gate to all on v2"
    );
    for round in 1..=args.rounds {
        // v2, three steps, zero-length windows: from `rollout` to every host serving it.
        let started = Instant::now();
        c.start("v2", zero("1,50%,all", 0), Some("v1".into()))?;
        let done = c.drive(|_| {})?;
        wait(&mut c, |c| all_on(c, &hashes[1]))?;
        let rollout = started.elapsed();
        ok &= done.phase == Phase::Done;

        // The faulty release as a canary on one host at 10% of its traffic, watched for 5 s:
        // from the gate failing to every host back on v2.
        c.start("bad", zero("1@10,all", 5_000), Some("v2".into()))?;
        let aborted = c.drive(|_| {})?;
        let caught = Instant::now();
        wait(&mut c, |c| all_on(c, &hashes[1]))?;
        let rollback = caught.elapsed();
        ok &= aborted.phase == Phase::Aborted && aborted.step == 0;
        println!(
            "{round:>5} {:>19.1} ms {:>23.1} ms   ({})",
            ms(rollout),
            ms(rollback),
            aborted.reason.as_deref().unwrap_or("?")
        );
        rollouts.push(rollout);
        rollbacks.push(rollback);

        // Back to v1 for the next round.
        c.start("v1", zero("all", 0), Some("v2".into()))?;
        c.drive(|_| {})?;
        wait(&mut c, |c| all_on(c, &hashes[0]))?;
    }
    rollouts.sort();
    rollbacks.sort();
    println!(
        "\nmedian: rollout to all {} hosts {:.1} ms (max {:.1}); failed gate to all back {:.1} ms (max {:.1})",
        args.hosts,
        ms(rollouts[rollouts.len() / 2]),
        ms(*rollouts.last().expect("a round")),
        ms(rollbacks[rollbacks.len() / 2]),
        ms(*rollbacks.last().expect("a round"))
    );
    // Each host writes its tally every 100 ms: let the last calls in.
    std::thread::sleep(Duration::from_millis(300));
    println!("\nhost      calls   failed");
    for h in &hosts {
        let (calls, failed) = h.tally();
        let note = if h.id == "h1" {
            "  (the canary host: its 10% share of the faulty release)"
        } else {
            ""
        };
        println!("{:<6} {:>8} {:>8}{note}", h.id, calls, failed);
        if h.id != "h1" && failed > 0 {
            ok = false;
        }
    }
    println!("load average {}", load_average());
    if !ok {
        println!("FAILED: a rollout ended wrongly, or a call failed outside the canary's share");
    }
    Ok(ok)
}

fn start_host(id: &str, dir: &Path, etcd: &Etcd, service: &str, v1: &Path) -> Result<Host, Error> {
    let plugins = dir.join(id).join("plugins");
    let state = dir.join(id).join("state");
    std::fs::create_dir_all(&plugins)?;
    std::fs::create_dir_all(&state)?;
    std::fs::copy(v1, plugins.join("pricer.so"))?;
    let exe = std::env::current_exe()?.with_file_name("fleet-host");
    let user = etcd.host(service, id);
    let user = user.user_name().ok_or("a host user")?.to_owned();
    let mut child = Command::new(&exe)
        .args([
            "--etcd",
            &etcd.endpoint(),
            "--service",
            service,
            "--host",
            id,
        ])
        .args(["--etcd-user", &user])
        .arg("--etcd-password-file")
        .arg(etcd.password_file(&user))
        .arg("--etcd-ca")
        .arg(etcd.ca_file())
        .arg("--operator-key")
        .arg(dir.join("operator.pub"))
        .arg("--state")
        .arg(&state)
        .arg("--plugins")
        .arg(&plugins)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(state.join("stderr"))?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    if !line.starts_with("ready") {
        return Err(format!("{id} did not start: {line:?}").into());
    }
    Ok(Host {
        id: id.into(),
        child,
        state,
    })
}

fn wait(
    c: &mut Controller,
    mut done: impl FnMut(&mut Controller) -> Result<bool, Error>,
) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(c)? {
        if Instant::now() > deadline {
            return Err("the hosts did not converge within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}
