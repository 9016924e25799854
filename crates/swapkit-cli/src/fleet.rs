//! `swapkit fleet ...`: releases and rollouts across a service's hosts, through etcd
//! (`swapkit-fleet`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use swapkit_fleet::{Artifact, Controller, EtcdAccess, Phase, Plan, Progress, Release, Rollout};

use crate::Error;

/// Where the fleet's state is.
#[derive(Args)]
pub(crate) struct At {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "SWAPKIT_ETCD",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    etcd: Vec<String>,
    /// The service (the hosts' `FleetConfig` names it).
    #[arg(long, env = "SWAPKIT_SERVICE")]
    service: String,
    /// The etcd user to authenticate as (its password from --etcd-password-file or
    /// $SWAPKIT_ETCD_PASSWORD).
    #[arg(long, env = "SWAPKIT_ETCD_USER")]
    etcd_user: Option<String>,
    /// A file holding the etcd user's password.
    #[arg(long, env = "SWAPKIT_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    etcd_password_file: Option<PathBuf>,
    /// Talk TLS to etcd, trusting the certificate authority in this PEM file.
    #[arg(long, env = "SWAPKIT_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// The operator's secret key (`swapkit keygen`): every rollout written is signed with it,
    /// and only rollouts it signed are acted on. Hosts given its public key follow nothing
    /// else.
    #[arg(long, env = "SWAPKIT_OPERATOR_KEY")]
    operator_key: Option<PathBuf>,
}

impl At {
    fn access(&self) -> Result<EtcdAccess, Error> {
        let mut access = EtcdAccess::new(self.etcd.iter().cloned());
        if let Some(user) = &self.etcd_user {
            let password = match (
                &self.etcd_password_file,
                std::env::var("SWAPKIT_ETCD_PASSWORD"),
            ) {
                (Some(file), _) => std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?,
                (None, Ok(password)) => password,
                (None, Err(_)) => {
                    return Err(format!(
                        "--etcd-user {user} needs its password: --etcd-password-file FILE or \
                         $SWAPKIT_ETCD_PASSWORD"
                    )
                    .into())
                }
            };
            access = access.user(user, &password);
        }
        if let Some(ca) = &self.etcd_ca {
            access = access.ca_file(ca)?;
        }
        Ok(access)
    }

    fn controller(&self) -> Result<Controller, Error> {
        let c = Controller::with_access(self.access()?, &self.service)?;
        Ok(match &self.operator_key {
            Some(path) => c.operator_key(crate::sign::secret_key(path)?),
            None => c,
        })
    }
}

#[derive(Subcommand)]
pub(crate) enum FleetAction {
    /// Publish artifacts as a release: per plugin its version, hash, signature (ARTIFACT.sig)
    /// and where hosts fetch it.
    Publish {
        #[command(flatten)]
        at: At,
        /// The release's id.
        #[arg(long)]
        release: String,
        /// The URL the artifacts are served under (`swapkit fleet serve`); their file names
        /// are appended. Without it, hosts read the artifacts' absolute paths.
        #[arg(long)]
        base_url: Option<String>,
        /// The artifacts: the whole selection hosts load.
        #[arg(required = true)]
        artifacts: Vec<PathBuf>,
    },
    /// Start rolling a release out, and drive it through its steps until it is done or
    /// aborted (or only start it, with --detach).
    Rollout {
        #[command(flatten)]
        at: At,
        /// The published release.
        #[arg(long)]
        release: String,
        /// The steps: a host count, a share of hosts, or `all`, each with an optional
        /// `@PERCENT` of its hosts' traffic (a canary in each host).
        #[arg(long, default_value = "1,25%,all")]
        steps: String,
        /// How long each step is watched once its hosts run the release (`500ms`, `10s`).
        #[arg(long, default_value = "10s", value_parser = duration)]
        hold: Duration,
        /// How long a step's hosts may take to run the release before the rollout aborts.
        #[arg(long, default_value = "60s", value_parser = duration)]
        deadline: Duration,
        /// The release hosts return to on an abort; the last rollout's by default.
        #[arg(long)]
        stable: Option<String>,
        /// Points of failure rate the release may have over the stable one.
        #[arg(long, default_value_t = 1.0)]
        failure_margin: f64,
        /// Calls before a failure rate is judged.
        #[arg(long, default_value_t = 100)]
        min_calls: u64,
        /// Only start it; `swapkit fleet resume` or another `rollout` drives it.
        #[arg(long)]
        detach: bool,
    },
    /// Show the rollout and every live host: release, traffic, calls, failures.
    Status {
        #[command(flatten)]
        at: At,
    },
    /// Hold the rollout at its step.
    Pause {
        #[command(flatten)]
        at: At,
    },
    /// Let a paused rollout go on, and drive it.
    Resume {
        #[command(flatten)]
        at: At,
    },
    /// Drive the running rollout (after a controller stopped, or beside another one).
    Drive {
        #[command(flatten)]
        at: At,
    },
    /// Stop the rollout: every host returns to the stable release.
    Abort {
        #[command(flatten)]
        at: At,
        /// Why, for the record.
        #[arg(long, default_value = "aborted by an operator")]
        reason: String,
    },
    /// Undo the last rollout, done or not: every host returns to the stable release.
    Rollback {
        #[command(flatten)]
        at: At,
    },
    /// List the live hosts.
    Hosts {
        #[command(flatten)]
        at: At,
    },
    /// Give an etcd user the role of this service's controller, or of one of its hosts (which
    /// may write only its own report). Run it as etcd's root (--etcd-user root).
    Grant {
        #[command(flatten)]
        at: At,
        /// `controller`, or the host's id (as its `FleetConfig` names it).
        #[arg(long)]
        role: String,
        /// The user to make (or update).
        #[arg(long)]
        user: String,
        /// A file holding the user's password.
        #[arg(long)]
        password_file: PathBuf,
    },
    /// Serve a directory of artifacts over HTTP for the hosts to fetch.
    Serve {
        /// The directory.
        dir: PathBuf,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8650")]
        listen: String,
    },
}

pub(crate) fn run(action: FleetAction) -> Result<(), Error> {
    match action {
        FleetAction::Publish {
            at,
            release,
            base_url,
            artifacts,
        } => {
            let release = release_of(&release, base_url.as_deref(), &artifacts)?;
            at.controller()?.publish(&release)?;
            println!("published release `{}`:", release.id);
            for a in &release.artifacts {
                println!(
                    "  {} {}  {}  {}",
                    a.plugin,
                    a.version,
                    &a.sha256[..12],
                    a.url
                );
            }
            Ok(())
        }
        FleetAction::Rollout {
            at,
            release,
            steps,
            hold,
            deadline,
            stable,
            failure_margin,
            min_calls,
            detach,
        } => {
            let plan = Plan {
                steps: Plan::parse_steps(&steps, hold.as_millis() as u64)?,
                deadline_ms: deadline.as_millis() as u64,
                failure_margin: failure_margin / 100.0,
                min_calls,
            };
            let mut c = at.controller()?;
            let rollout = c.start(&release, plan, stable)?;
            println!(
                "rollout {} of `{}` started (stable: {}), {} steps",
                rollout.id,
                rollout.release,
                rollout.stable.as_deref().unwrap_or("none"),
                rollout.plan.steps.len()
            );
            if detach {
                return Ok(());
            }
            drive(&mut c)
        }
        FleetAction::Status { at } => status(&mut at.controller()?, &at),
        FleetAction::Hosts { at } => hosts(&mut at.controller()?),
        FleetAction::Pause { at } => {
            let r = at.controller()?.pause()?;
            println!("rollout {} paused at step {}", r.id, r.step + 1);
            Ok(())
        }
        FleetAction::Resume { at } => {
            let mut c = at.controller()?;
            let r = c.resume()?;
            println!("rollout {} resumed at step {}", r.id, r.step + 1);
            drive(&mut c)
        }
        FleetAction::Drive { at } => drive(&mut at.controller()?),
        FleetAction::Abort { at, reason } => {
            let r = at.controller()?.abort(&reason)?;
            println!(
                "rollout {} aborted: every host returns to `{}`",
                r.id,
                r.stable.as_deref().unwrap_or("what it ran")
            );
            Ok(())
        }
        FleetAction::Rollback { at } => {
            let r = at.controller()?.rollback()?;
            println!(
                "rollout {} rolled back: every host returns to `{}`",
                r.id,
                r.stable.as_deref().unwrap_or("?")
            );
            Ok(())
        }
        FleetAction::Grant {
            at,
            role,
            user,
            password_file,
        } => {
            let password = std::fs::read_to_string(&password_file)
                .map_err(|e| format!("cannot read {}: {e}", password_file.display()))?;
            let password = password.trim_end_matches('\n');
            let access = at.access()?;
            if role == "controller" {
                swapkit_fleet::grant_controller(&access, &at.service, &user, password)?;
                println!(
                    "user `{user}` has role `{}`: reads and writes /swapkit/{}/",
                    swapkit_fleet::controller_role(&at.service),
                    at.service
                );
            } else {
                swapkit_fleet::grant_host(&access, &at.service, &role, &user, password)?;
                println!(
                    "user `{user}` has role `{}`: reads /swapkit/{}/, writes only /swapkit/{}/hosts/{role}",
                    swapkit_fleet::host_role(&at.service, &role),
                    at.service,
                    at.service
                );
            }
            Ok(())
        }
        FleetAction::Serve { dir, listen } => {
            let server = swapkit_fleet::serve(&dir, &listen)?;
            println!("serving {} on http://{}/", dir.display(), server.addr());
            loop {
                std::thread::park();
            }
        }
    }
}

/// A release of `artifacts`, named and versioned by what their bytes claim (no code of them
/// runs, here or anywhere).
fn release_of(id: &str, base_url: Option<&str>, artifacts: &[PathBuf]) -> Result<Release, Error> {
    let mut out = vec![];
    for path in artifacts {
        let claimed = crate::inspect::claimed(path)?;
        let artifact = Artifact::from_file(path, &claimed.plugin, &claimed.version, base_url)?;
        // What was read is what is published.
        let read: String = claimed.sha256.iter().map(|b| format!("{b:02x}")).collect();
        if artifact.sha256 != read {
            return Err(format!("{} changed while it was read", path.display()).into());
        }
        out.push(artifact);
    }
    Ok(Release {
        id: id.to_owned(),
        artifacts: out,
    })
}

/// Drives the rollout to its end, printing each change; fails if it was aborted.
fn drive(c: &mut Controller) -> Result<(), Error> {
    let start = Instant::now();
    let end = c.drive(|p| {
        let at = start.elapsed().as_secs_f64();
        match p {
            Progress::Step {
                step,
                of,
                ready,
                hosts,
            } => println!(
                "[{at:6.2} s] step {}/{of}: {ready} of {hosts} hosts run the release",
                step + 1
            ),
            Progress::Holding { step, for_ms } => {
                println!(
                    "[{at:6.2} s] step {}: every host runs it; watching for {for_ms} ms",
                    step + 1
                )
            }
            Progress::Gathering {
                step,
                calls,
                needed,
            } => println!(
                "[{at:6.2} s] step {}: {calls} of the {needed} calls the gate needs",
                step + 1
            ),
            Progress::Advanced { step } => println!("[{at:6.2} s] on to step {}", step + 1),
            Progress::Waiting { reason } => {
                println!("[{at:6.2} s] waiting: {reason}; hosts keep what they run")
            }
            Progress::Finished { phase, reason } => println!(
                "[{at:6.2} s] {}{}",
                phase_name(*phase),
                reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        }
    })?;
    match end.phase {
        Phase::Done | Phase::Paused => Ok(()),
        _ => Err(format!(
            "rollout {} of `{}` {}: {}",
            end.id,
            end.release,
            phase_name(end.phase),
            end.reason.as_deref().unwrap_or("no reason given")
        )
        .into()),
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Running => "running",
        Phase::Paused => "paused",
        Phase::Done => "done: every host runs the release",
        Phase::Aborted => "aborted: every host returns to the stable release",
        Phase::RolledBack => "rolled back: every host returns to the stable release",
    }
}

fn status(c: &mut Controller, at: &At) -> Result<(), Error> {
    match c.record()? {
        None => println!("no rollout yet"),
        Some(record) => {
            print_rollout(&record.instruction.rollout);
            let checked = match &at.operator_key {
                Some(path) => {
                    let key = crate::sign::secret_key(path)?.public();
                    match record.verify(&key, &at.service) {
                        Ok(()) => " (verified with the operator key)".to_owned(),
                        Err(refusal) => format!(": NOT THE OPERATOR'S: {refusal}"),
                    }
                }
                None => String::new(),
            };
            let signer = record
                .signer
                .map_or("unsigned".to_owned(), |k| format!("signed by key {k}"));
            println!("  record {}, {signer}{checked}", record.instruction.seq);
        }
    }
    hosts(c)
}

fn print_rollout(r: &Rollout) {
    let step = r.plan.steps.get(r.step);
    println!(
        "rollout {}: release `{}` (stable `{}`), {}, step {}/{}{}",
        r.id,
        r.release,
        r.stable.as_deref().unwrap_or("none"),
        phase_name(r.phase),
        r.step + 1,
        r.plan.steps.len(),
        step.filter(|s| s.traffic < 100.0)
            .map(|s| format!(" at {}% of traffic", s.traffic))
            .unwrap_or_default()
    );
    if let Some(reason) = &r.reason {
        println!("  reason: {reason}");
    }
    if r.is_active() {
        match &r.targets {
            Some(t) => println!("  hosts in this step: {}", t.join(", ")),
            None => println!("  hosts in this step: all"),
        }
    }
}

fn hosts(c: &mut Controller) -> Result<(), Error> {
    let (_, reports) = c.status()?;
    if reports.is_empty() {
        println!("no live hosts");
        return Ok(());
    }
    println!(
        "{:<16} {:<12} {:>7} {:<28} {:>10} {:>8}  state",
        "host", "release", "traffic", "plugins", "calls", "failed"
    );
    for h in reports {
        let plugins: Vec<String> = h
            .plugins
            .iter()
            .map(|p| format!("{} {}", p.plugin, p.version))
            .chain(h.canary.iter().map(|c| {
                let p99 = c
                    .p99_us
                    .map(|p| format!(", p99 {p} µs"))
                    .unwrap_or_default();
                format!("+canary {} {}%{p99}", c.version, c.percent)
            }))
            .collect();
        let calls: u64 = h.plugins.iter().map(|p| p.calls).sum::<u64>()
            + h.canary.as_ref().map_or(0, |c| c.calls);
        let failed: u64 = h.plugins.iter().map(|p| p.failures).sum::<u64>()
            + h.canary.as_ref().map_or(0, |c| c.failures);
        let state = match (&h.refused, &h.error, h.converged) {
            (Some(why), _, _) => format!("refused the rollout: {why}"),
            (None, Some(e), _) => format!("cannot run it: {e}"),
            (None, None, true) => "as asked".to_owned(),
            (None, None, false) => "converging".to_owned(),
        };
        println!(
            "{:<16} {:<12} {:>6.0}% {:<28} {:>10} {:>8}  {state}",
            h.host,
            h.release.as_deref().unwrap_or("-"),
            h.traffic,
            plugins.join(", "),
            calls,
            failed
        );
    }
    Ok(())
}

/// `500ms`, `10s`, `2m`.
fn duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration like 500ms, 10s or 2m");
    let (n, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| text.split_at(i))
        .ok_or_else(bad)?;
    let n: f64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs_f64(secs))
}
