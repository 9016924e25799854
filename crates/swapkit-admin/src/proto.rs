//! The messages: requests, replies, and the reports they carry.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks. A host refuses a request of another version with
/// [`FailureKind::Version`], and a client refuses such a reply.
pub const VERSION: u32 = 1;

/// The longest line either side accepts, in bytes.
pub const MAX_LINE: usize = 1 << 20;

/// A message with the protocol version: `{"v":1, ...body}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// The protocol version.
    pub v: u32,
    /// The message.
    #[serde(flatten)]
    pub body: T,
}

impl<T> Envelope<T> {
    /// `body` at this crate's [`VERSION`].
    pub fn new(body: T) -> Envelope<T> {
        Envelope { v: VERSION, body }
    }
}

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The generations, plugins, call counts, history and triggers.
    Status,
    /// Reload from the host's plugin source. Coalesced with any other trigger in flight: the
    /// reply reports a reload that started after the request arrived.
    Reload,
    /// Go back to a kept selection: the previous one, or the newest that matches `to`
    /// (`VERSION`, `PLUGIN@VERSION` or `generation:N`).
    Rollback {
        /// Which kept selection; `None` for the previous one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// Apply every patch a plugin artifact exports, all or nothing.
    PatchApply {
        /// The artifact, as a path the host can read.
        artifact: PathBuf,
        /// The sticky percentage of keys that see the patch; all of them if `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        percent: Option<f64>,
        /// A name to restore it by; the host makes one if `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// Restore a patch set applied through this endpoint.
    PatchRestore {
        /// The id [`Outcome::Patched`] reported.
        id: String,
    },
    /// The patchable functions of the host and the patches applied.
    PatchList,
    /// Load an artifact as a canary: a second version of one plugin beside the stable one,
    /// for a sticky share of request keys.
    CanaryStart {
        /// The artifact, as a path the host can read.
        artifact: PathBuf,
        /// The share of keys it serves, in percent; 0 if `None` (only rules reach it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        percent: Option<f64>,
        /// Judge it with the host's canary gate (`SwapperBuilder::canary_gate`), which moves
        /// it through its steps, promotes or aborts it. Without it, an operator does.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        gate: bool,
    },
    /// Set the running canary's share of keys.
    CanarySet {
        /// In percent.
        percent: f64,
    },
    /// Make the running canary the only version of its plugin.
    CanaryPromote,
    /// Drop the running canary; the stable version serves every call again.
    CanaryAbort,
}

impl Request {
    /// The request's name, as in `op`.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Reload => "reload",
            Request::Rollback { .. } => "rollback",
            Request::PatchApply { .. } => "patch_apply",
            Request::PatchRestore { .. } => "patch_restore",
            Request::PatchList => "patch_list",
            Request::CanaryStart { .. } => "canary_start",
            Request::CanarySet { .. } => "canary_set",
            Request::CanaryPromote => "canary_promote",
            Request::CanaryAbort => "canary_abort",
        }
    }
}

/// The host's answer: `{"ok": ...}` or `{"error": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The request was carried out.
    Ok(Outcome),
    /// It was not; nothing changed.
    Error(Failure),
}

/// What a request did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The answer to [`Request::Status`].
    Status(Box<StatusReport>),
    /// A reload or rollback published a generation.
    Swapped(Swap),
    /// A patch set was applied.
    Patched(PatchApplied),
    /// A patch set was restored.
    Restored {
        /// Its id.
        id: String,
    },
    /// The answer to [`Request::PatchList`].
    Patches(PatchReport),
    /// A canary started, or its share changed, or it was aborted: the generation that
    /// serves now. (A promote is a [`Outcome::Swapped`].)
    Canary(CanaryStep),
}

/// A step of a canary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryStep {
    /// The generation published.
    pub generation: u64,
    /// What happened, in words: `started 2.0.0 beside 1.0.0 at 1.00%`, `set to 10.00%`,
    /// `aborted`.
    pub what: String,
}

/// A running canary: both versions side by side, since it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryReport {
    /// The plugin.
    pub plugin: String,
    /// The share of keys the canary serves, in percent.
    pub percent: f64,
    /// Seconds since it started.
    pub running_for_s: f64,
    /// The stable version.
    pub stable: VersionReport,
    /// The canary.
    pub canary: VersionReport,
    /// Its gate, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateReport>,
}

/// One version's calls since a canary started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionReport {
    /// Its version.
    pub version: String,
    /// Calls.
    pub calls: u64,
    /// Of which failed (errors, panics and traps).
    pub failures: u64,
    /// Calls timed for latency (a sample).
    pub timed: u64,
    /// Median latency of the timed calls, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<f64>,
    /// 99th percentile latency of the timed calls, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<f64>,
}

/// Where a canary's gate is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    /// The steps, in percent; promotion follows the last.
    pub steps: Vec<f64>,
    /// The step the canary is on, if it is on one (0-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// Failed checks so far.
    pub failed_checks: u32,
    /// Failed checks that abort it.
    pub abort_after: u32,
    /// Seconds left in the current window.
    pub window_left_s: f64,
    /// What the last check found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<String>,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Failure {
    /// The class of failure.
    pub kind: FailureKind,
    /// What was wrong, and what to do.
    pub message: String,
}

/// The class of a [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The line was not a request: bad JSON, an unknown op, a missing field.
    BadRequest,
    /// The request's protocol version is not the host's.
    Version,
    /// The peer's uid is not on the allow list.
    Forbidden,
    /// A load, reload or rollback failed; the current generation keeps serving.
    Load,
    /// A patch could not be applied or restored.
    Patch,
    /// The named thing does not exist.
    NotFound,
    /// The host serves as many connections as it may (per uid, or in all); try again later.
    Busy,
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureKind::BadRequest => "bad request",
            FailureKind::Version => "protocol version",
            FailureKind::Forbidden => "forbidden",
            FailureKind::Load => "load failed",
            FailureKind::Patch => "patch failed",
            FailureKind::NotFound => "not found",
            FailureKind::Busy => "busy",
        })
    }
}

/// A published generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Swap {
    /// The generation now current.
    pub generation: u64,
    /// Plugins given a new instance.
    pub loaded: Vec<PluginVersion>,
    /// Plugins carried over unchanged.
    pub reused: Vec<PluginVersion>,
    /// From reading the artifacts to publication, in milliseconds.
    pub took_ms: f64,
}

/// A plugin's name and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginVersion {
    /// The plugin's name.
    pub name: String,
    /// Its version.
    pub version: String,
}

impl std::fmt::Display for PluginVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// A running host, as [`Request::Status`] sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The host's process id.
    pub pid: u32,
    /// The current generation's number.
    pub generation: u64,
    /// The current generation's plugins, dependencies first.
    pub plugins: Vec<PluginReport>,
    /// Superseded generations still held.
    pub draining: Vec<DrainingReport>,
    /// Selections a rollback can return to, newest first.
    pub history: Vec<KeptReport>,
    /// Generations alive, the current one included.
    pub generations_alive: usize,
    /// Pins held across all generations.
    pub pins_held: usize,
    /// Reloads and rollbacks: how many, how many failed, and the last one.
    pub reloads: ReloadStats,
    /// The probation of the newest swap, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation: Option<ProbationReport>,
    /// The selection a restarted host starts with, if one is persisted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_good: Option<u64>,
    /// What can start a reload: `"admin"`, `"watch:DIR"`, `"signal:HUP"`.
    pub triggers: Vec<String>,
    /// The canary running beside its stable version, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryReport>,
    /// How the last canary ended: promoted, or aborted and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_canary: Option<String>,
}

/// One plugin of the current generation, and what its calls did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginReport {
    /// Name and version.
    #[serde(flatten)]
    pub plugin: PluginVersion,
    /// `native`, `wasm` or `static`.
    pub backend: String,
    /// SHA-256 of the artifact, in hex.
    pub sha256: String,
    /// Calls through typed clients since this instance was loaded.
    pub calls: u64,
    /// Calls that failed with an error status.
    pub errors: u64,
    /// Calls that panicked.
    pub panics: u64,
    /// Calls that trapped, timed out or hit a resource limit (wasm).
    pub traps: u64,
}

/// A superseded generation that has not retired yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainingReport {
    /// Its number.
    pub generation: u64,
    /// Pins held on it.
    pub pins: usize,
    /// Calls in flight in it.
    pub calls: usize,
    /// Seconds since it was superseded.
    pub draining_for_s: f64,
}

/// A selection kept for rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptReport {
    /// The generation it was published as.
    pub generation: u64,
    /// Its plugins.
    pub plugins: Vec<PluginVersion>,
}

/// Counts of swaps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadStats {
    /// Swaps published.
    pub published: u64,
    /// Reloads and rollbacks that failed.
    pub failed: u64,
    /// Rollbacks the host made on its own.
    pub auto_rollbacks: u64,
    /// How long the last published swap took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ms: Option<f64>,
    /// The last failure's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A probation window in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbationReport {
    /// The generation on probation.
    pub generation: u64,
    /// Seconds left.
    pub remaining_s: f64,
    /// Calls into its new plugins so far.
    pub calls: u64,
    /// Of which failed (errors, panics and traps).
    pub failures: u64,
}

/// A patch set applied through the admin endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchApplied {
    /// What to restore it by.
    pub id: String,
    /// The plugin that supplied it.
    pub plugin: PluginVersion,
    /// The functions it patches.
    pub targets: Vec<String>,
}

/// The answer to [`Request::PatchList`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchReport {
    /// Every patchable function linked into the host.
    pub targets: Vec<TargetReport>,
    /// Items of `#[patchable]` modules left without a patch slot, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedReport>,
    /// Patch sets applied through the admin endpoint.
    pub applied: Vec<PatchApplied>,
}

/// One patchable function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    /// Its path, as `target!` names it.
    pub target: String,
    /// Its argument and return types.
    pub signature: String,
    /// Its stack of patches, in the order a call checks them: the first whose rollout admits
    /// the call's key runs. Empty when unpatched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<PatchLayer>,
}

/// An item a `#[patchable]` module left as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedReport {
    /// Its path.
    pub name: String,
    /// Why it has no patch slot.
    pub reason: String,
}

/// One patch on a target's stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchLayer {
    /// The patch's id.
    pub id: String,
    /// Where it came from: `file:line` of an in-process closure, or the plugin, its version
    /// and its artifact.
    pub source: String,
    /// Who it applies to: all keys, a share of keys, keys matching a predicate.
    pub rollout: String,
    /// Calls it has served.
    #[serde(default)]
    pub hits: u64,
    /// Panics caught in it.
    #[serde(default)]
    pub panics: u64,
    /// False once it has panicked.
    #[serde(default = "healthy")]
    pub healthy: bool,
}

fn healthy() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_documented() {
        let r: Envelope<Request> = serde_json::from_str(r#"{"v":1,"op":"status"}"#).unwrap();
        assert_eq!(r, Envelope::new(Request::Status));
        let r: Envelope<Request> =
            serde_json::from_str(r#"{"v":1,"op":"rollback","to":"greeter@1.0.0"}"#).unwrap();
        assert_eq!(
            r.body,
            Request::Rollback {
                to: Some("greeter@1.0.0".into())
            }
        );
        let text = serde_json::to_string(&Envelope::new(Request::Rollback { to: None })).unwrap();
        assert_eq!(text, r#"{"v":1,"op":"rollback"}"#);
    }

    #[test]
    fn unknown_ops_and_missing_fields_are_errors() {
        assert!(serde_json::from_str::<Envelope<Request>>(r#"{"v":1,"op":"explode"}"#).is_err());
        assert!(
            serde_json::from_str::<Envelope<Request>>(r#"{"v":1,"op":"patch_restore"}"#).is_err()
        );
        assert!(serde_json::from_str::<Envelope<Request>>(r#"{"op":"status"}"#).is_err());
    }

    #[test]
    fn replies_round_trip() {
        let reply = Envelope::new(Reply::Error(Failure {
            kind: FailureKind::Forbidden,
            message: "uid 65534 is not allowed".into(),
        }));
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"error":{"kind":"forbidden","message":"uid 65534 is not allowed"}}"#
        );
        assert_eq!(
            serde_json::from_str::<Envelope<Reply>>(&text).unwrap(),
            reply
        );
    }
}
