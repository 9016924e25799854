//! What the fleet keeps in etcd, as JSON under `/swapkit/<service>/`: releases, the one
//! rollout, and each host's report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A whole selection of plugins that hosts load together, published once under its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// Its name in the fleet, as `publish` was given it (`2024-06-01`, `v2`, ...).
    pub id: String,
    /// Every plugin of the selection.
    pub artifacts: Vec<Artifact>,
}

/// One plugin of a release, and where every host can fetch it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// The plugin's name, from its manifest.
    pub plugin: String,
    /// Its version, from its manifest.
    pub version: String,
    /// SHA-256 of the artifact, in hex: checked after every fetch, before anything else.
    pub sha256: String,
    /// The file's name (its extension tells the backend).
    pub file: String,
    /// `http://...`, or a path every host can read.
    pub url: String,
    /// The detached signature (`swapkit sign`), for hosts with a trust policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// How many hosts a step moves to the release.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hosts {
    /// This many hosts (the canary step).
    Count(usize),
    /// This share of the hosts that report, rounded up.
    Percent(f64),
    /// Every host, including those that join later.
    All,
}

/// One step of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Which hosts run the release in this step (those of earlier steps stay).
    pub hosts: Hosts,
    /// The share of each such host's traffic, in percent, that the release serves (through
    /// a canary in the host below 100).
    pub traffic: f64,
    /// How long the step is watched, once every host in it runs the release, before the
    /// next: the analysis window.
    pub hold_ms: u64,
}

/// A rollout's steps and the rules that judge them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// How long the hosts of a step may take to run the release before the rollout is
    /// aborted: the progress deadline.
    pub deadline_ms: u64,
    /// The release's failure rate may exceed the stable release's by this much (0.01 is one
    /// point) before the gate fails.
    pub failure_margin: f64,
    /// Calls the release must have served in a step before a failure rate is judged (a single
    /// failure with fewer still counts against it if the stable release has none).
    pub min_calls: u64,
}

impl Plan {
    /// Steps from text: `1` (a host count), `25%` (a share of hosts), `all`; each may add
    /// `@10` (10% of each host's traffic). For example `1@10,1,50%,all`.
    pub fn parse_steps(text: &str, hold_ms: u64) -> Result<Vec<Step>, String> {
        text.split(',')
            .map(|part| {
                let part = part.trim();
                let (hosts, traffic) = match part.split_once('@') {
                    Some((h, t)) => (
                        h,
                        t.trim_end_matches('%').parse::<f64>().map_err(|_| {
                            format!("`{t}` in `{part}` is not a traffic percentage")
                        })?,
                    ),
                    None => (part, 100.0),
                };
                if !(0.0..=100.0).contains(&traffic) || traffic == 0.0 {
                    return Err(format!(
                        "traffic in `{part}` must be above 0 and at most 100"
                    ));
                }
                let hosts = if hosts == "all" {
                    Hosts::All
                } else if let Some(p) = hosts.strip_suffix('%') {
                    let p: f64 = p
                        .parse()
                        .map_err(|_| format!("`{hosts}` is not a share of hosts"))?;
                    if !(0.0..=100.0).contains(&p) || p == 0.0 {
                        return Err(format!("`{hosts}` must be above 0% and at most 100%"));
                    }
                    Hosts::Percent(p)
                } else {
                    Hosts::Count(hosts.parse().map_err(|_| {
                        format!("`{hosts}` is not a host count, a share like `50%`, or `all`")
                    })?)
                };
                Ok(Step {
                    hosts,
                    traffic,
                    hold_ms,
                })
            })
            .collect()
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A controller moves it on.
    Running,
    /// Held at its step until resumed; hosts keep what they run.
    Paused,
    /// Every host runs the release.
    Done,
    /// Stopped (a failed gate, a host that cannot load it, the deadline, an operator): every
    /// host runs the stable release.
    Aborted,
    /// Undone after it was done: every host runs the stable release.
    RolledBack,
}

/// The one rollout of a service: what every host should run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Counts up with every rollout of the service, so reports name the one they follow.
    pub id: u64,
    /// The release being rolled out.
    pub release: String,
    /// The release hosts return to on an abort; `None` for a first release (hosts not yet
    /// moved keep what they run).
    pub stable: Option<String>,
    pub plan: Plan,
    /// The step in force.
    pub step: usize,
    /// The hosts that run the release in this step; `None` for every host.
    pub targets: Option<Vec<String>>,
    pub phase: Phase,
    /// Why it was aborted or paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the step started, in milliseconds since the Unix epoch.
    pub step_started_ms: u64,
}

/// What one host should run.
#[derive(Debug, Clone, PartialEq)]
pub enum Desire {
    /// Whatever it runs: there is nothing for it to do.
    Keep,
    /// This release, serving this share of the host's traffic (a canary below 100).
    Run { release: String, traffic: f64 },
}

impl Rollout {
    /// What `host` should run.
    pub fn desire_for(&self, host: &str) -> Desire {
        let release = |id: &str, traffic: f64| Desire::Run {
            release: id.to_owned(),
            traffic,
        };
        let stable = || {
            self.stable
                .as_deref()
                .map_or(Desire::Keep, |s| release(s, 100.0))
        };
        match self.phase {
            Phase::Done => release(&self.release, 100.0),
            Phase::Aborted | Phase::RolledBack => stable(),
            Phase::Running | Phase::Paused => {
                let traffic = self.plan.steps.get(self.step).map_or(100.0, |s| s.traffic);
                match &self.targets {
                    Some(targets) if !targets.iter().any(|t| t == host) => stable(),
                    _ => release(&self.release, traffic),
                }
            }
        }
    }

    /// Whether a controller still has work on it.
    pub fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Running | Phase::Paused)
    }
}

/// What a host reports, under its lease, every few hundred milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub host: String,
    pub labels: BTreeMap<String, String>,
    /// The rollout and step it last converged to, if any.
    pub rollout: Option<u64>,
    pub step: Option<usize>,
    /// The release it runs as the rollout asked, and its share of traffic.
    pub release: Option<String>,
    pub traffic: f64,
    /// Whether it runs what the rollout asks of it now.
    pub converged: bool,
    /// Why it could not, if it could not.
    pub error: Option<String>,
    /// The number of the rollout record it follows ([`crate::Instruction::seq`]).
    #[serde(default)]
    pub seq: Option<u64>,
    /// Why it refused the rollout record in etcd, if it did (forged, replayed, unsigned):
    /// it keeps what it runs meanwhile.
    #[serde(default)]
    pub refused: Option<String>,
    /// The host's current generation.
    pub generation: u64,
    /// The plugins it serves, with their calls and failures since each was loaded.
    pub plugins: Vec<Serving>,
    /// A canary running in it, with both sides' counts.
    pub canary: Option<CanaryCounts>,
    /// When it was written, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A plugin a host serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Serving {
    pub plugin: String,
    pub version: String,
    pub sha256: String,
    pub calls: u64,
    /// Errors, panics and traps.
    pub failures: u64,
}

/// A canary in a host: the new version beside the stable one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryCounts {
    pub plugin: String,
    pub version: String,
    pub percent: f64,
    pub calls: u64,
    pub failures: u64,
    pub stable_version: String,
    pub stable_calls: u64,
    pub stable_failures: u64,
    /// Latency of the canary's and the stable version's timed calls, in microseconds, once
    /// enough were timed.
    #[serde(default)]
    pub p50_us: Option<u64>,
    #[serde(default)]
    pub p99_us: Option<u64>,
    #[serde(default)]
    pub stable_p50_us: Option<u64>,
    #[serde(default)]
    pub stable_p99_us: Option<u64>,
}

impl Report {
    /// Calls and failures of `release`'s plugins in this host.
    pub fn counts_of(&self, release: &Release) -> (u64, u64) {
        let mut calls = 0;
        let mut failures = 0;
        for a in &release.artifacts {
            if let Some(c) = self
                .canary
                .as_ref()
                .filter(|c| c.plugin == a.plugin && c.version == a.version)
            {
                calls += c.calls;
                failures += c.failures;
            } else if let Some(p) = self.plugins.iter().find(|p| p.sha256 == a.sha256) {
                calls += p.calls;
                failures += p.failures;
            }
        }
        (calls, failures)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(phase: Phase, targets: Option<Vec<&str>>) -> Rollout {
        Rollout {
            id: 1,
            release: "v2".into(),
            stable: Some("v1".into()),
            plan: Plan {
                steps: Plan::parse_steps("1@10,all", 0).unwrap(),
                deadline_ms: 1000,
                failure_margin: 0.01,
                min_calls: 10,
            },
            step: 0,
            targets: targets.map(|t| t.into_iter().map(String::from).collect()),
            phase,
            reason: None,
            step_started_ms: 0,
        }
    }

    fn run(release: &str, traffic: f64) -> Desire {
        Desire::Run {
            release: release.into(),
            traffic,
        }
    }

    #[test]
    fn each_host_knows_what_to_run() {
        let r = rollout(Phase::Running, Some(vec!["a"]));
        assert_eq!(r.desire_for("a"), run("v2", 10.0));
        assert_eq!(r.desire_for("b"), run("v1", 100.0));
        let all = Rollout {
            step: 1,
            ..rollout(Phase::Running, None)
        };
        assert_eq!(all.desire_for("late"), run("v2", 100.0));
        assert_eq!(
            rollout(Phase::Aborted, Some(vec!["a"])).desire_for("a"),
            run("v1", 100.0)
        );
        assert_eq!(
            rollout(Phase::Done, Some(vec![])).desire_for("b"),
            run("v2", 100.0)
        );
        let first = Rollout {
            stable: None,
            ..rollout(Phase::Aborted, None)
        };
        assert_eq!(first.desire_for("a"), Desire::Keep);
    }

    #[test]
    fn steps_parse() {
        let steps = Plan::parse_steps("1@10, 2, 50%, all", 500).unwrap();
        let hosts: Vec<Hosts> = steps.iter().map(|s| s.hosts).collect();
        assert_eq!(
            hosts,
            [
                Hosts::Count(1),
                Hosts::Count(2),
                Hosts::Percent(50.0),
                Hosts::All
            ]
        );
        assert_eq!(steps[0].traffic, 10.0);
        assert_eq!(steps[1].traffic, 100.0);
        for bad in ["", "x", "0%", "150%", "1@0", "1@x", "2@101"] {
            assert!(Plan::parse_steps(bad, 0).is_err(), "{bad}");
        }
    }
}
