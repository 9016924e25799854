//! The admin endpoint: the protocol of `swapkit-admin` on a Unix socket.
//!
//! The socket is bound under a temporary name, given mode 0600, and only then renamed into
//! place, so there is no moment at which another user could connect. Each connection's peer
//! uid is read from the kernel (SO_PEERCRED) and checked against the allow list before any
//! request is read; each request is logged with the peer's uid and pid.
//!
//! One allowed peer cannot lock the others out: each uid may hold [`PER_UID`] connections,
//! all together [`MAX_CONNECTIONS`]; a request not whole within the idle timeout (silence and a
//! byte now and then alike) closes its connection, and a reply the peer does not read within
//! [`WRITE`] closes it too. Artifacts named in requests are read as any artifact is: regular
//! files only, under a size cap (see `load.rs`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use swapkit_admin::{
    CanaryReport, CanaryStep, DrainingReport, Envelope, Failure, FailureKind, GateReport,
    KeptReport, Outcome, PatchApplied, PatchLayer, PatchReport, PluginReport, PluginVersion,
    ProbationReport, ReloadStats, Reply, Request, SkippedReport, StatusReport, Swap, TargetReport,
    VersionReport, MAX_LINE, VERSION,
};

use super::Shared;
use crate::canary::Plan;
use crate::error::LoadError;
use crate::history::RollbackTarget;
use crate::lock::lock;
use crate::patch::{PatchSetGuard, Rollout};
use crate::reload::{ReloadReport, Reloader};
use crate::trigger::Trigger;

/// At most this many connections are served at once; more are refused.
const MAX_CONNECTIONS: usize = 32;
/// At most this many of them from one uid.
const PER_UID: usize = 8;
/// A connection silent this long is closed (the default of `admin_idle_timeout`).
pub(crate) const IDLE: Duration = Duration::from_secs(60);
/// A reply not taken by the peer within this long closes the connection.
const WRITE: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
struct Peer {
    uid: u32,
    pid: Option<i32>,
}

struct Applied {
    report: PatchApplied,
    _guard: PatchSetGuard,
}

struct Context {
    inner: Weak<Reloader>,
    shared: Arc<Shared>,
    allow: Vec<u32>,
    patches: Mutex<BTreeMap<String, Applied>>,
    next_patch: AtomicUsize,
    /// Open connections per uid.
    open: Mutex<BTreeMap<u32, usize>>,
    idle: Duration,
}

/// A place among the open connections, given back when dropped.
struct Admitted {
    context: Arc<Context>,
    uid: u32,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = lock(&self.context.open);
        if let Some(n) = open.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

impl Context {
    /// A place for a connection of `uid`, or why there is none.
    fn admit(self: &Arc<Context>, uid: u32) -> Result<Admitted, String> {
        let mut open = lock(&self.open);
        let total: usize = open.values().sum();
        let mine = open.get(&uid).copied().unwrap_or(0);
        if mine >= PER_UID {
            return Err(format!(
                "uid {uid} already holds {mine} admin connections, the most one uid may; close \
                 one (idle ones close after {:?})",
                self.idle
            ));
        }
        if total >= MAX_CONNECTIONS {
            return Err(format!(
                "{total} admin connections are open, the most this host serves; try again"
            ));
        }
        *open.entry(uid).or_default() += 1;
        Ok(Admitted {
            context: self.clone(),
            uid,
        })
    }
}

pub(crate) struct Server {
    path: PathBuf,
    listener: Option<UnixListener>,
    stop: Arc<AtomicBool>,
    context: Arc<Context>,
}

fn failure(kind: FailureKind, message: impl Into<String>) -> Failure {
    Failure {
        kind,
        message: message.into(),
    }
}

impl Server {
    pub fn bind(
        path: &Path,
        allow: Vec<u32>,
        idle: Duration,
        inner: Weak<Reloader>,
        shared: Arc<Shared>,
    ) -> Result<Server, LoadError> {
        let error = |source: crate::error::BoxError| LoadError::Ops {
            what: "admin socket",
            at: path.display().to_string(),
            source,
        };
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(error(
                    "another process is serving on it; stop it or choose another path".into(),
                ));
            }
            // A stale socket left by a host that died.
            std::fs::remove_file(path)
                .map_err(|e| error(format!("cannot remove the stale socket: {e}").into()))?;
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("admin");
        let staging = dir.join(format!(".{name}.{}.binding", std::process::id()));
        let _ = std::fs::remove_file(&staging);
        let listener = UnixListener::bind(&staging).map_err(|e| error(e.into()))?;
        let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
            .and_then(|_| std::fs::rename(&staging, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&staging);
            return Err(error(e.into()));
        }
        tracing::info!(socket = %path.display(), allow = ?allow, "admin socket listening");
        Ok(Server {
            path: path.to_owned(),
            listener: Some(listener),
            stop: Arc::new(AtomicBool::new(false)),
            context: Arc::new(Context {
                inner,
                shared,
                allow,
                patches: Mutex::new(BTreeMap::new()),
                next_patch: AtomicUsize::new(1),
                open: Mutex::new(BTreeMap::new()),
                idle,
            }),
        })
    }

    pub fn spawn(&self) -> Result<JoinHandle<()>, LoadError> {
        let listener = self
            .listener
            .as_ref()
            .expect("spawned once")
            .try_clone()
            .map_err(|source| LoadError::Thread {
                what: "admin socket",
                source,
            })?;
        let stop = self.stop.clone();
        let context = self.context.clone();
        std::thread::Builder::new()
            .name("swapkit-admin".into())
            .spawn(move || accept(listener, stop, context))
            .map_err(|source| LoadError::Thread {
                what: "admin socket",
                source,
            })
    }

    /// Stops accepting, removes the socket, and restores the patches applied through it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop: shutting the listening socket down makes a blocked accept
        // return, even if someone removed the socket file; the connection is a fallback.
        if let Some(listener) = &self.listener {
            use std::os::fd::AsRawFd;
            // SAFETY: the fd is open (we own the listener); shutdown has no other effect.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        let _ = UnixStream::connect(&self.path);
        self.listener = None;
        let _ = std::fs::remove_file(&self.path);
        let applied = std::mem::take(&mut *lock(&self.context.patches));
        if !applied.is_empty() {
            tracing::info!(
                count = applied.len(),
                "restoring patches applied through the admin socket"
            );
        }
    }
}

fn accept(listener: UnixListener, stop: Arc<AtomicBool>, context: Arc<Context>) {
    loop {
        let stream = listener.accept().map(|(s, _)| s);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        // A refusal below is one short line: the write timeout bounds it for a peer that
        // does not read.
        let _ = stream.set_write_timeout(Some(WRITE));
        let Some(peer) = allowed(&stream, &context) else {
            continue;
        };
        let admitted = match context.admit(peer.uid) {
            Ok(admitted) => admitted,
            Err(message) => {
                tracing::warn!(uid = peer.uid, pid = ?peer.pid, reason = %message, "admin connection refused");
                let _ = reply(&stream, &Reply::Error(failure(FailureKind::Busy, message)));
                continue;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("swapkit-admin-conn".into())
            .spawn(move || {
                serve(&stream, peer, &admitted.context);
                drop(admitted);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start an admin connection thread");
        }
    }
}

fn reply(mut stream: &UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(&Envelope::new(reply)).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    stream.flush()
}

/// The peer of a new connection, if its uid is allowed; a refusal is answered and logged.
fn allowed(stream: &UnixStream, context: &Context) -> Option<Peer> {
    let peer = match peer(stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "admin connection refused: cannot read the peer's credentials");
            return None;
        }
    };
    if !context.allow.contains(&peer.uid) {
        tracing::warn!(uid = peer.uid, pid = ?peer.pid, "admin connection refused: uid not allowed");
        let message = format!(
            "uid {} is not allowed to administer this process; the host allows uids {:?} (SwapperBuilder::admin_allow_uid)",
            peer.uid, context.allow
        );
        let _ = reply(
            stream,
            &Reply::Error(failure(FailureKind::Forbidden, message)),
        );
        return None;
    }
    Some(peer)
}

/// Reads from a connection until a deadline: each read may wait only for the time left, so a
/// peer that sends a byte now and then cannot stretch one request past the deadline.
struct Until<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl Read for Until<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&mut &*self.stream).read(buf)
    }
}

fn serve(stream: &UnixStream, peer: Peer, context: &Context) {
    let mut reader = BufReader::new(Until {
        stream,
        deadline: Instant::now(),
    });
    loop {
        // The whole request, from the end of the last reply to its newline, within the idle
        // timeout: silence and drip-feeding alike.
        reader.get_mut().deadline = Instant::now() + context.idle;
        let mut line = Vec::new();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.len() > MAX_LINE {
            let _ = reply(
                stream,
                &Reply::Error(failure(
                    FailureKind::BadRequest,
                    format!("request longer than {MAX_LINE} bytes"),
                )),
            );
            return;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let answer = handle(&line, peer, context);
        if reply(stream, &answer).is_err() {
            return;
        }
    }
}

fn handle(line: &[u8], peer: Peer, context: &Context) -> Reply {
    // The version is checked before the body, so a newer client's unknown op reads as a
    // version problem, not a malformed request.
    #[derive(serde::Deserialize)]
    struct Versioned {
        v: Option<u32>,
    }
    match serde_json::from_slice::<Versioned>(line) {
        Ok(Versioned { v: Some(v) }) if v != VERSION => {
            let message = format!("this host speaks admin protocol v{VERSION}, the request is v{v}; use a swapkit CLI of the host's release");
            tracing::warn!(uid = peer.uid, pid = ?peer.pid, "admin request of protocol v{v} refused");
            return Reply::Error(failure(FailureKind::Version, message));
        }
        _ => {}
    }
    let request = match serde_json::from_slice::<Envelope<Request>>(line) {
        Ok(r) => r.body,
        Err(e) => {
            tracing::warn!(uid = peer.uid, pid = ?peer.pid, error = %e, "malformed admin request");
            let message = format!(
                "{e}; a request is one JSON line like {{\"v\":{VERSION},\"op\":\"status\"}}"
            );
            return Reply::Error(failure(FailureKind::BadRequest, message));
        }
    };
    tracing::info!(uid = peer.uid, pid = ?peer.pid, op = request.op(), request = ?request, "admin request");
    let Some(inner) = context.inner.upgrade() else {
        return Reply::Error(failure(FailureKind::Load, "the swapper is shutting down"));
    };
    let (uid, pid) = (peer.uid, peer.pid);
    let result = match request {
        Request::Status => Ok(Outcome::Status(Box::new(status(&inner, &context.shared)))),
        Request::Reload => context
            .shared
            .request_reload(Trigger::AdminReload { uid, pid })
            .map(|r| Outcome::Swapped(swap(&r)))
            .map_err(|e| failure(FailureKind::Load, e)),
        Request::Rollback { to } => to
            .as_deref()
            .unwrap_or("")
            .parse::<RollbackTarget>()
            .and_then(|target| inner.rollback_to(&target, &Trigger::AdminRollback { uid, pid }))
            .map(|r| Outcome::Swapped(swap(&r)))
            .map_err(|e| failure(kind_of(&e), e.to_string())),
        Request::PatchApply {
            artifact,
            percent,
            id,
        } => apply(&inner, context, &artifact, percent, id),
        Request::PatchRestore { id } => {
            let removed = lock(&context.patches).remove(&id);
            match removed {
                Some(applied) => {
                    drop(applied);
                    Ok(Outcome::Restored { id })
                }
                None => Err(failure(FailureKind::NotFound, format!("no patch set `{id}` was applied through this socket; `swapkit patch list` shows them"))),
            }
        }
        Request::PatchList => Ok(Outcome::Patches(patch_list(context))),
        Request::CanaryStart {
            artifact,
            percent,
            gate,
        } => canary_start(&inner, &artifact, percent.unwrap_or(0.0), gate),
        Request::CanarySet { percent } => inner
            .set_canary(percent, None)
            .map(|generation| {
                Outcome::Canary(CanaryStep {
                    generation,
                    what: format!("set to {percent:.2}%"),
                })
            })
            .map_err(|e| failure(kind_of(&e), e.to_string())),
        Request::CanaryPromote => inner
            .promote_canary(None)
            .map(|r| Outcome::Swapped(swap(&r)))
            .map_err(|e| failure(kind_of(&e), e.to_string())),
        Request::CanaryAbort => inner
            .abort_canary(
                None,
                Some(&format!("asked for on the admin socket (uid {uid})")),
            )
            .map(|generation| {
                Outcome::Canary(CanaryStep {
                    generation,
                    what: "aborted".into(),
                })
            })
            .map_err(|e| failure(kind_of(&e), e.to_string())),
    };
    drop(inner);
    match result {
        Ok(outcome) => Reply::Ok(outcome),
        Err(f) => {
            tracing::warn!(uid = peer.uid, kind = ?f.kind, reason = %f.message, "admin request failed");
            Reply::Error(f)
        }
    }
}

fn kind_of(e: &LoadError) -> FailureKind {
    match e {
        LoadError::NoMatch { .. } | LoadError::NoHistory | LoadError::NoCanary => {
            FailureKind::NotFound
        }
        LoadError::BadRollbackTarget { .. } => FailureKind::BadRequest,
        _ => FailureKind::Load,
    }
}

/// Starts a canary of `artifact`, judged by the host's canary gate if `gate` asks for it.
fn canary_start(
    inner: &Arc<Reloader>,
    artifact: &Path,
    percent: f64,
    gate: bool,
) -> Result<Outcome, Failure> {
    let mut plan = Plan::new(artifact.to_owned(), None);
    plan.percent = percent;
    if gate {
        let Some(policy) = inner.canary_gate.clone() else {
            return Err(failure(
                FailureKind::BadRequest,
                "this host has no canary gate to judge it by (SwapperBuilder::canary_gate); \
                 start it without --gate and step it by hand",
            ));
        };
        plan.gate = Some(policy);
    }
    let report = inner
        .start_canary(plan)
        .map_err(|e| failure(kind_of(&e), e.to_string()))?;
    Ok(Outcome::Canary(CanaryStep {
        generation: report.generation,
        what: format!(
            "started {} {} beside {} at {:.2}%{}",
            report.plugin,
            report.canary,
            report.stable,
            report.percent,
            if gate { ", gated" } else { "" }
        ),
    }))
}

/// The running canary, for the status report.
fn canary_report(inner: &Reloader) -> Option<CanaryReport> {
    let c = inner.canary_status()?;
    let version = |v: &crate::canary::VersionStatus| VersionReport {
        version: v.version.clone(),
        calls: v.counts.calls,
        failures: v.counts.failures(),
        timed: v.timed,
        p50_us: v.p50.map(|d| d.as_secs_f64() * 1e6),
        p99_us: v.p99.map(|d| d.as_secs_f64() * 1e6),
    };
    Some(CanaryReport {
        plugin: c.plugin.clone(),
        percent: c.percent,
        running_for_s: c.running_for.as_secs_f64(),
        stable: version(&c.stable),
        canary: version(&c.canary),
        gate: c.gate.map(|g| GateReport {
            steps: g.steps,
            step: g.step,
            failed_checks: g.failed_checks.0,
            abort_after: g.failed_checks.1,
            window_left_s: g.window_left.as_secs_f64(),
            last_check: g.last_check,
        }),
    })
}

fn apply(
    inner: &Reloader,
    context: &Context,
    artifact: &Path,
    percent: Option<f64>,
    id: Option<String>,
) -> Result<Outcome, Failure> {
    let id = id.unwrap_or_else(|| {
        format!(
            "admin-{}",
            context.next_patch.fetch_add(1, Ordering::SeqCst)
        )
    });
    if lock(&context.patches).contains_key(&id) {
        return Err(failure(
            FailureKind::Patch,
            format!("a patch set `{id}` is already applied; restore it first or pick another id"),
        ));
    }
    let patches = crate::patch::plugin::patches_from(inner, artifact)
        .map_err(|e| failure(FailureKind::Patch, e.to_string()))?;
    let plugin = PluginVersion {
        name: patches.plugin().to_owned(),
        version: patches.version().to_owned(),
    };
    let rollout = match percent {
        Some(p) => Rollout::percent(p),
        None => Rollout::all(),
    };
    let guard = patches
        .id(id.clone())
        .rollout(rollout)
        .apply()
        .map_err(|e| failure(FailureKind::Patch, e.to_string()))?;
    let report = PatchApplied {
        id: id.clone(),
        plugin,
        targets: guard.targets().into_iter().map(str::to_owned).collect(),
    };
    lock(&context.patches).insert(
        id,
        Applied {
            report: report.clone(),
            _guard: guard,
        },
    );
    Ok(Outcome::Patched(report))
}

fn patch_list(context: &Context) -> PatchReport {
    PatchReport {
        targets: crate::patch::registry()
            .into_iter()
            .map(|t| TargetReport {
                target: t.name.to_owned(),
                signature: t.signature.to_owned(),
                patches: t
                    .patches
                    .into_iter()
                    .map(|p| PatchLayer {
                        id: p.id,
                        source: p.source.to_string(),
                        rollout: p.rollout,
                        hits: p.hits,
                        panics: p.panics,
                        healthy: p.healthy,
                    })
                    .collect(),
            })
            .collect(),
        skipped: crate::patch::skipped()
            .into_iter()
            .map(|s| SkippedReport {
                name: s.name.to_owned(),
                reason: s.reason.to_owned(),
            })
            .collect(),
        applied: lock(&context.patches)
            .values()
            .map(|a| a.report.clone())
            .collect(),
    }
}

fn swap(report: &ReloadReport) -> Swap {
    let versions = |v: &[(String, String)]| {
        v.iter()
            .map(|(name, version)| PluginVersion {
                name: name.clone(),
                version: version.clone(),
            })
            .collect()
    };
    Swap {
        generation: report.generation,
        loaded: versions(&report.loaded),
        reused: versions(&report.reused),
        took_ms: report.took.as_secs_f64() * 1e3,
    }
}

/// The status report: generations, plugins with their call counts, history, probation.
pub(crate) fn status(inner: &Reloader, shared: &Shared) -> StatusReport {
    let status = inner.status();
    // One snapshot: the current generation's plugins and counts, and the draining ones.
    let generations_alive = 1 + status.draining.len();
    let pins_held =
        status.current.pin_count + status.draining.iter().map(|g| g.pin_count).sum::<usize>();
    let plugins = status
        .current
        .plugins
        .iter()
        .map(|p| PluginReport {
            plugin: PluginVersion {
                name: p.name.clone(),
                version: p.version.clone(),
            },
            backend: p.backend.to_string(),
            sha256: p.content_hash.clone(),
            calls: p.counts.calls,
            errors: p.counts.errors,
            panics: p.counts.panics,
            traps: p.counts.traps,
        })
        .collect();
    let history = inner
        .kept()
        .into_iter()
        .map(|k| KeptReport {
            generation: k.generation,
            plugins: k
                .plugins
                .into_iter()
                .map(|(name, version)| PluginVersion { name, version })
                .collect(),
        })
        .collect();
    let probation = shared
        .probation_counts(inner)
        .map(|(p, c)| ProbationReport {
            generation: p.generation,
            remaining_s: p
                .until
                .saturating_duration_since(std::time::Instant::now())
                .as_secs_f64(),
            calls: c.calls,
            failures: c.failures(),
        });
    let state = shared.lock();
    StatusReport {
        pid: std::process::id(),
        generation: status.current.id,
        plugins,
        draining: status
            .draining
            .iter()
            .map(|g| DrainingReport {
                generation: g.id,
                pins: g.pin_count,
                calls: g.calls,
                draining_for_s: match g.state {
                    crate::GenerationState::Draining { since, .. } => since.as_secs_f64(),
                    crate::GenerationState::Current => 0.0,
                },
            })
            .collect(),
        history,
        generations_alive,
        pins_held,
        reloads: ReloadStats {
            published: state.counts.published,
            failed: state.counts.failed,
            auto_rollbacks: state.counts.auto_rollbacks,
            last_ms: state.counts.last_took.map(|d| d.as_secs_f64() * 1e3),
            last_error: state.counts.last_error.clone(),
        },
        probation,
        known_good: state.known_good,
        triggers: state.triggers.iter().map(ToString::to_string).collect(),
        canary: canary_report(inner),
        last_canary: inner.last_canary(),
    }
}

/// The uid and pid of the process at the other end of `stream`.
#[cfg(target_os = "linux")]
fn peer(stream: &UnixStream) -> std::io::Result<Peer> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; the fd is open.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Peer {
        uid: cred.uid,
        pid: Some(cred.pid),
    })
}

/// The uid of the process at the other end of `stream`.
#[cfg(not(target_os = "linux"))]
fn peer(stream: &UnixStream) -> std::io::Result<Peer> {
    use std::os::fd::AsRawFd;
    let (mut uid, mut gid) = (0, 0);
    // SAFETY: both out pointers are valid; the fd is open.
    if unsafe { libc::getpeereid(stream.as_raw_fd(), &mut uid, &mut gid) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Peer { uid, pid: None })
}
