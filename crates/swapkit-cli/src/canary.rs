//! `swapkit canary`: run a second version of one plugin beside the stable one in a running
//! host, step its share, promote or abort it; and how `status` shows it.

use std::path::PathBuf;

use clap::Subcommand;
use swapkit_admin::{CanaryReport, Outcome, Request, VersionReport};

use crate::remote::{ask, print_swap, unexpected, Remote};
use crate::Error;

#[derive(Subcommand)]
pub(crate) enum CanaryAction {
    /// Load an artifact beside the stable version of its plugin, for a sticky share of keys.
    Start {
        #[command(flatten)]
        remote: Remote,
        /// The plugin artifact, as a path the host can read.
        artifact: PathBuf,
        /// The share of request keys it serves, in percent.
        #[arg(long, default_value_t = 1.0)]
        percent: f64,
        /// Let the host's canary gate judge it and step, promote or abort it.
        #[arg(long)]
        gate: bool,
    },
    /// Set the running canary's share of keys; keys on the canary stay on it as it grows.
    Set {
        #[command(flatten)]
        remote: Remote,
        /// In percent.
        percent: f64,
    },
    /// Make the canary the only version of its plugin, with its own state.
    Promote {
        #[command(flatten)]
        remote: Remote,
    },
    /// Drop the canary: the stable version serves every call again, its state untouched.
    Abort {
        #[command(flatten)]
        remote: Remote,
    },
}

pub(crate) fn run(action: CanaryAction) -> Result<(), Error> {
    let (remote, request) = match action {
        CanaryAction::Start {
            remote,
            artifact,
            percent,
            gate,
        } => {
            // The host reads the path itself: make it absolute, so it means the same there.
            let artifact = std::path::absolute(&artifact)?;
            let request = Request::CanaryStart {
                artifact,
                percent: Some(percent),
                gate,
            };
            (remote, request)
        }
        CanaryAction::Set { remote, percent } => (remote, Request::CanarySet { percent }),
        CanaryAction::Promote { remote } => (remote, Request::CanaryPromote),
        CanaryAction::Abort { remote } => (remote, Request::CanaryAbort),
    };
    match ask(&remote, request)? {
        Outcome::Canary(step) => {
            println!("canary {}: generation {}", step.what, step.generation);
            Ok(())
        }
        Outcome::Swapped(swap) => {
            print_swap("canary promoted", &swap);
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}

/// The canary's lines of `swapkit status`: both versions side by side.
pub(crate) fn print_report(c: &CanaryReport) {
    println!(
        "  canary of `{}` at {:.2}% of keys, running {:.1}s:",
        c.plugin, c.percent, c.running_for_s
    );
    println!(
        "    {:<8} {:<12} {:>10} {:>9} {:>8} {:>10} {:>10}",
        "", "version", "calls", "failures", "timed", "p50 us", "p99 us"
    );
    let line = |name: &str, v: &VersionReport| {
        let us = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.1}"));
        println!(
            "    {:<8} {:<12} {:>10} {:>9} {:>8} {:>10} {:>10}",
            name,
            v.version,
            v.calls,
            v.failures,
            v.timed,
            us(v.p50_us),
            us(v.p99_us)
        );
    };
    line("stable", &c.stable);
    line("canary", &c.canary);
    if let Some(g) = &c.gate {
        let steps: Vec<String> = g.steps.iter().map(|s| format!("{s}%")).collect();
        let step = g.step.map_or("-".to_owned(), |s| (s + 1).to_string());
        println!(
            "    gate: step {step} of [{}] then promote; {} of {} failed checks; {:.1}s left in the window",
            steps.join(", "),
            g.failed_checks,
            g.abort_after,
            g.window_left_s
        );
        if let Some(last) = &g.last_check {
            println!("    last check: {last}");
        }
    }
}
