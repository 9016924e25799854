//! The `swapkit` command line.
//!
//! - `swapkit new plugin NAME` and `swapkit new host NAME` scaffold crates that build as
//!   they are.
//! - `swapkit build [PATH]` builds a plugin, native, wasm or both, and writes the artifacts to
//!   an output directory.
//! - `swapkit inspect ARTIFACT` prints what a load would check, or what is wrong, running
//!   none of a native library's code in its own process.
//! - `swapkit keygen OUT`, `swapkit sign --key KEY ARTIFACT..` and `swapkit verify --key PUB
//!   ARTIFACT..` make signed releases (`swapkit build --sign KEY` signs as it builds).
//! - `swapkit status | reload | rollback | patch ...` steer a running host through its admin
//!   socket (`--socket`, or `$SWAPKIT_SOCKET`).
//! - `swapkit fleet publish | rollout | status | pause | resume | abort | rollback | hosts |
//!   serve` roll releases out across a service's hosts through etcd (`--etcd`, `--service`).
//!
//! It also runs as `cargo swapkit ...`.

#![deny(missing_docs)]

mod build;
mod canary;
mod fleet;
mod inspect;
mod remote;
mod scaffold;
mod sign;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "swapkit",
    version,
    about = "Hot code swapping for Rust services: build, inspect and steer plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Scaffold a plugin or host crate.
    New {
        #[command(subcommand)]
        what: scaffold::What,
    },
    /// Build a plugin crate and copy its artifacts to an output directory.
    Build(build::Args),
    /// Print an artifact's manifest, hash, interfaces and exports, or what is wrong with it.
    /// No code of the artifact runs in this process: its bytes are checked first; a wasm
    /// module is probed in the sandbox, a native library's manifest read by a child process.
    Inspect {
        /// The artifact: a native library or a wasm module.
        artifact: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Check only the file's bytes, never running any of a native library's code (its
        /// manifest is then not shown).
        #[arg(long)]
        no_exec: bool,
        /// Map a native library in this process to read its manifest (its constructors run
        /// here); what the child process does.
        #[arg(long, hide = true)]
        in_process: bool,
    },
    /// Make a signing key pair: OUT.key (secret, mode 0600) and OUT.pub.
    Keygen {
        /// The files' path without extension.
        out: PathBuf,
    },
    /// Sign artifacts: writes ARTIFACT.sig next to each, over its hash, plugin name, version,
    /// backend and build.
    Sign {
        /// The secret key file (from `swapkit keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The artifacts.
        #[arg(required = true)]
        artifacts: Vec<PathBuf>,
    },
    /// Check artifacts as a host trusting these public keys would; fails on the first one it
    /// would refuse, saying why.
    Verify {
        /// A trusted public key file; repeat for several.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// The artifacts.
        #[arg(required = true)]
        artifacts: Vec<PathBuf>,
    },
    /// Show a running host's generations, plugins, call counts and history.
    Status {
        #[command(flatten)]
        remote: remote::Remote,
        /// Print the raw JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Make a running host reload from its plugin source.
    Reload {
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Make a running host go back to a kept selection.
    Rollback {
        #[command(flatten)]
        remote: remote::Remote,
        /// VERSION, PLUGIN@VERSION or generation:N; the previous selection if absent.
        #[arg(long)]
        to: Option<String>,
    },
    /// Apply, restore or list patches in a running host.
    Patch {
        #[command(subcommand)]
        action: remote::PatchAction,
    },
    /// Run a second version of a plugin beside the stable one in a running host: start,
    /// set its share, promote or abort.
    Canary {
        #[command(subcommand)]
        action: canary::CanaryAction,
    },
    /// Roll releases out across a service's hosts through etcd: publish, rollout, status,
    /// pause, resume, abort, rollback, hosts, serve.
    Fleet {
        #[command(subcommand)]
        action: fleet::FleetAction,
    },
}

/// Runs the CLI with `args` (the program name first), and returns its exit code.
pub fn main(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::New { what } => scaffold::run(what),
        Command::Build(args) => build::run(args),
        Command::Inspect {
            artifact,
            json,
            no_exec,
            in_process,
        } => inspect::run(
            &artifact,
            inspect::Options {
                json,
                no_exec,
                in_process,
            },
        ),
        Command::Keygen { out } => sign::keygen(&out),
        Command::Sign { key, artifacts } => sign::sign(&key, &artifacts),
        Command::Verify { keys, artifacts } => sign::verify(&keys, &artifacts),
        Command::Status { remote, json } => remote::status(&remote, json),
        Command::Reload { remote } => remote::reload(&remote),
        Command::Rollback { remote, to } => remote::rollback(&remote, to),
        Command::Patch { action } => remote::patch(action),
        Command::Canary { action } => canary::run(action),
        Command::Fleet { action } => fleet::run(action),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// Any error, reported with its causes.
type Error = Box<dyn std::error::Error + Send + Sync>;

/// Writes `bytes` to `path` by way of a hidden file in the same directory and a rename, so
/// that a watcher never sees half a file.
fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| format!("cannot rename {} into place: {e}", tmp.display()))?;
    Ok(())
}
