//! The commands that steer a running host through its admin socket.

use std::path::PathBuf;

use clap::Subcommand;
use swapkit_admin::{Client, Outcome, PatchApplied, Request, StatusReport, Swap};

use crate::Error;

/// Where the host's admin socket is.
#[derive(clap::Args)]
pub(crate) struct Remote {
    /// The host's admin socket (SwapperBuilder::admin_socket).
    #[arg(long, env = "SWAPKIT_SOCKET")]
    pub socket: PathBuf,
}

#[derive(Subcommand)]
pub(crate) enum PatchAction {
    /// Apply every patch a plugin artifact exports, all or nothing.
    Apply {
        #[command(flatten)]
        remote: Remote,
        /// The plugin artifact, as a path the host can read.
        artifact: PathBuf,
        /// Patch only this sticky percentage of request keys.
        #[arg(long)]
        percent: Option<f64>,
        /// The name to restore it by.
        #[arg(long)]
        id: Option<String>,
    },
    /// Restore a patch set applied with `patch apply`.
    Restore {
        #[command(flatten)]
        remote: Remote,
        /// The id `patch apply` printed.
        id: String,
    },
    /// List the host's patchable functions and the patches on them.
    List {
        #[command(flatten)]
        remote: Remote,
    },
}

pub(crate) fn ask(remote: &Remote, request: Request) -> Result<Outcome, Error> {
    let mut client = Client::connect(&remote.socket)?;
    Ok(client.request(&request)?)
}

pub(crate) fn unexpected(outcome: Outcome) -> Error {
    format!("the host answered with something else: {outcome:?}").into()
}

pub(crate) fn status(remote: &Remote, json: bool) -> Result<(), Error> {
    match ask(remote, Request::Status)? {
        Outcome::Status(report) if json => {
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Outcome::Status(report) => {
            print_status(&report);
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}

fn print_status(s: &StatusReport) {
    println!("host pid {}: generation {}", s.pid, s.generation);
    println!(
        "  {:<20} {:<12} {:<7} {:>10} {:>7} {:>7} {:>7}  sha256",
        "plugin", "version", "backend", "calls", "errors", "panics", "traps"
    );
    for p in &s.plugins {
        println!(
            "  {:<20} {:<12} {:<7} {:>10} {:>7} {:>7} {:>7}  {}",
            p.plugin.name,
            p.plugin.version,
            p.backend,
            p.calls,
            p.errors,
            p.panics,
            p.traps,
            &p.sha256[..12.min(p.sha256.len())]
        );
    }
    println!(
        "  generations alive {}, pins held {}",
        s.generations_alive, s.pins_held
    );
    for d in &s.draining {
        println!(
            "  draining: generation {} for {:.1}s ({} pins, {} calls in flight)",
            d.generation, d.draining_for_s, d.pins, d.calls
        );
    }
    let r = &s.reloads;
    print!(
        "  swaps published {}, failed {}, auto-rollbacks {}",
        r.published, r.failed, r.auto_rollbacks
    );
    if let Some(ms) = r.last_ms {
        print!(", last took {ms:.2} ms");
    }
    println!();
    if let Some(e) = &r.last_error {
        println!("  last failure: {e}");
    }
    if let Some(p) = &s.probation {
        println!(
            "  probation: generation {}, {:.1}s left, {} failures in {} calls",
            p.generation, p.remaining_s, p.failures, p.calls
        );
    }
    if let Some(c) = &s.canary {
        crate::canary::print_report(c);
    }
    if let Some(last) = &s.last_canary {
        println!("  last canary: {last}");
    }
    if let Some(g) = s.known_good {
        println!("  known-good: generation {g}");
    }
    println!("  triggers: {}", s.triggers.join(", "));
    if s.history.is_empty() {
        println!("  history: empty");
    } else {
        println!("  history (newest first):");
        for k in &s.history {
            let plugins: Vec<String> = k.plugins.iter().map(|p| p.to_string()).collect();
            println!("    generation {}: {}", k.generation, plugins.join(" "));
        }
    }
}

pub(crate) fn print_swap(what: &str, swap: &Swap) {
    let list = |v: &[swapkit_admin::PluginVersion]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    println!(
        "{what}: generation {} published in {:.2} ms; loaded {}; reused {}",
        swap.generation,
        swap.took_ms,
        list(&swap.loaded),
        list(&swap.reused)
    );
}

pub(crate) fn reload(remote: &Remote) -> Result<(), Error> {
    match ask(remote, Request::Reload)? {
        Outcome::Swapped(swap) => {
            print_swap("reloaded", &swap);
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}

pub(crate) fn rollback(remote: &Remote, to: Option<String>) -> Result<(), Error> {
    match ask(remote, Request::Rollback { to })? {
        Outcome::Swapped(swap) => {
            print_swap("rolled back", &swap);
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}

fn print_applied(p: &PatchApplied) {
    println!(
        "patch set `{}` from {} applied to: {}",
        p.id,
        p.plugin,
        p.targets.join(", ")
    );
}

pub(crate) fn patch(action: PatchAction) -> Result<(), Error> {
    match action {
        PatchAction::Apply {
            remote,
            artifact,
            percent,
            id,
        } => {
            // The host reads the path itself: make it absolute, so it means the same there.
            let artifact = std::path::absolute(&artifact)?;
            match ask(
                &remote,
                Request::PatchApply {
                    artifact,
                    percent,
                    id,
                },
            )? {
                Outcome::Patched(p) => {
                    print_applied(&p);
                    Ok(())
                }
                other => Err(unexpected(other)),
            }
        }
        PatchAction::Restore { remote, id } => match ask(&remote, Request::PatchRestore { id })? {
            Outcome::Restored { id } => {
                println!("patch set `{id}` restored");
                Ok(())
            }
            other => Err(unexpected(other)),
        },
        PatchAction::List { remote } => match ask(&remote, Request::PatchList)? {
            Outcome::Patches(report) => {
                if report.targets.is_empty() {
                    println!("the host has no patchable functions");
                }
                for t in &report.targets {
                    println!("{} {}", t.target, t.signature);
                    // The stack in the order a call checks it: the first that admits runs.
                    for (i, p) in t.patches.iter().enumerate() {
                        println!(
                            "  {}. `{}` for {}: {} hits, {} panics{}",
                            i + 1,
                            p.id,
                            p.rollout,
                            p.hits,
                            p.panics,
                            if p.healthy { "" } else { ", UNHEALTHY" }
                        );
                        println!("     from {}", p.source);
                    }
                }
                for s in &report.skipped {
                    println!("{}  not patchable: {}", s.name, s.reason);
                }
                for p in &report.applied {
                    print_applied(p);
                }
                Ok(())
            }
            other => Err(unexpected(other)),
        },
    }
}
