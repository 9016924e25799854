//! `swapkit inspect`: what a load would check, in words.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use swapkit::abi::{LiveKind, Manifest};

use crate::Error;

/// How `inspect` may look at an artifact.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Print JSON.
    pub json: bool,
    /// Read only the file's bytes: never map a native library, even in a child process.
    pub no_exec: bool,
    /// Map a native library in this process (what the child does).
    pub in_process: bool,
}

/// How long the child reading a native manifest may take.
const CHILD_DEADLINE: Duration = Duration::from_secs(60);

/// Inspects `path` without running any of its code in this process: its bytes are checked
/// first (a native library's symbol table and plugin header); a wasm module is then probed in
/// the sandbox; a native library's manifest, which only its code can produce, is read by a
/// child process, where its constructors run.
pub(crate) fn run(path: &Path, options: Options) -> Result<(), Error> {
    let json = options.json;
    if options.in_process {
        return match swapkit::inspect(path) {
            Ok(artifact) => print(&Report::of(&artifact), IN_PROCESS, json),
            Err(e) => failed(path, e, IN_PROCESS, json),
        };
    }
    let check = match swapkit::inspect_file(path) {
        Ok(check) => check,
        Err(e) => return failed(path, e, BYTES, json),
    };
    match (&check.header, options.no_exec) {
        // The bytes just read and hashed, never the file again: a file swapped for a native
        // library between two reads must not be mapped here.
        (None, _) => match swapkit::inspect_checked(&check) {
            Ok(artifact) => print(&Report::of(&artifact), SANDBOX, json),
            Err(e) => failed(path, e, SANDBOX, json),
        },
        (Some(header), true) => header_only(&check, header, json),
        (Some(_), false) => in_child(path, json),
    }
}

const BYTES: &str = "read from the file's bytes: no code of it ran";
const SANDBOX: &str = "compiled and probed in the wasm sandbox: no code of it ran outside it";
const IN_PROCESS: &str = "mapped in this process: its constructors ran here";

/// What is printed of an inspected artifact.
pub(crate) struct Report {
    pub path: std::path::PathBuf,
    pub backend: String,
    pub sha256: String,
    pub size: u64,
    pub manifest: Manifest,
}

impl Report {
    /// What a signature of the artifact vouches for.
    pub fn statement(&self) -> Result<swapkit::trust::Statement, Error> {
        let mut sha256 = [0u8; 32];
        if self.sha256.len() != 64 {
            return Err(format!("no SHA-256 in the report of {}", self.path.display()).into());
        }
        for (i, byte) in sha256.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&self.sha256[2 * i..2 * i + 2], 16)?;
        }
        Ok(swapkit::trust::Statement {
            plugin: self.manifest.name.clone(),
            version: self.manifest.version.clone(),
            backend: self.backend.clone(),
            fingerprint: self.manifest.fingerprint.clone(),
            sha256,
        })
    }

    fn of(artifact: &swapkit::Artifact) -> Report {
        Report {
            path: artifact.path.clone(),
            backend: artifact.backend.to_string(),
            sha256: artifact.sha256.clone(),
            size: artifact.size,
            manifest: artifact.manifest.clone(),
        }
    }
}

/// Reports a failure, as JSON on stdout too when asked; the exit status fails either way.
fn failed(
    path: &Path,
    error: swapkit::LoadError,
    checked: &'static str,
    json: bool,
) -> Result<(), Error> {
    if json {
        let mut value = error_json(path, &error);
        value["checked"] = checked.into();
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Err(Failed { error, checked }.into())
}

/// Inspects a native library through [`child_report`] and prints what it says.
fn in_child(path: &Path, json: bool) -> Result<(), Error> {
    match child_report(path)? {
        Ok((report, checked)) => print(&report, &checked, json),
        Err((value, message)) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
            Err(message.into())
        }
    }
}

/// What `sign`, `verify` and `fleet publish` need of an artifact, from one read of its bytes
/// and nothing else: its hash, backend and claims (`swapkit_abi::claims`), as a signature
/// states them. No code of it runs, no library is mapped and no module compiled, here or in
/// a child.
pub(crate) fn claimed(path: &Path) -> Result<swapkit::trust::Statement, Error> {
    let check = swapkit::inspect_file(path)?;
    check.statement().map_err(|why| {
        format!(
            "{}: cannot read what it claims to be: {why}",
            path.display()
        )
        .into()
    })
}

/// The child's answer: the report and how it was read, or its error as JSON and a message.
type ChildAnswer = Result<(Report, String), (serde_json::Value, String)>;

/// Reads a native library's manifest in a child process (this program, inspecting in
/// process), so that its constructors run there: in `/`, with no environment, no input, a
/// CPU-time limit, and a deadline after which it is killed. `Err` if the child failed to answer.
fn child_report(path: &Path) -> Result<ChildAnswer, Error> {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let exe = std::env::current_exe()?;
    // In `/`, not the caller's directory, where a library's constructor would find the
    // files the caller works on (a signing key, say).
    let real = std::fs::canonicalize(path)?;
    let mut command = Command::new(exe);
    command
        .args(["inspect", "--in-process", "--json"])
        .arg(&real)
        .current_dir("/")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (setrlimit) run between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let cpu = libc::rlimit {
                rlim_cur: 30,
                rlim_max: 30,
            };
            let core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CPU, &cpu);
            libc::setrlimit(libc::RLIMIT_CORE, &core);
            Ok(())
        })
    };
    let mut child = command.spawn()?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut bytes = vec![];
        let _ = std::io::Read::read_to_end(&mut stdout, &mut bytes);
        bytes
    });
    let err = std::thread::spawn(move || {
        let mut bytes = vec![];
        let _ = std::io::Read::read_to_end(&mut stderr, &mut bytes);
        bytes
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > CHILD_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the child process (pid {pid}) reading {}'s manifest did not finish in {:?} and \
                 was killed: the library's constructors or manifest entry hang",
                path.display(),
                CHILD_DEADLINE
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let checked = format!(
        "header read from the file's bytes; manifest read by a child process (pid {pid}), \
         where the library's constructors ran, not in this process"
    );
    if let Some(signal) = status.signal() {
        return Err(format!(
            "the child process (pid {pid}) reading {}'s manifest was killed by signal {signal}: \
             the library crashed it{}",
            path.display(),
            stderr_tail(&err)
        )
        .into());
    }
    let mut value: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
        format!(
            "the child process (pid {pid}) reading {}'s manifest answered no report ({e}){}",
            path.display(),
            stderr_tail(&err)
        )
    })?;
    value["checked"] = checked.clone().into();
    if !status.success() {
        let message = value["error"]["message"].as_str().unwrap_or("failed");
        let message = format!("{message} ({checked})");
        return Ok(Err((value, message)));
    }
    let report = Report {
        path: path.to_owned(),
        backend: value["backend"].as_str().unwrap_or("native").to_owned(),
        sha256: value["sha256"].as_str().unwrap_or_default().to_owned(),
        size: value["size"].as_u64().unwrap_or_default(),
        manifest: swapkit::abi::Manifest {
            // Not among the manifest's serialized fields (it follows them on the wire only
            // when set), so the report carries it beside them.
            options: serde_json::from_value(value["options"].take()).unwrap_or_default(),
            ..serde_json::from_value(value["manifest"].take())?
        },
    };
    Ok(Ok((report, checked)))
}

/// The last lines the child wrote to stderr, if any, to add to an error.
fn stderr_tail(err: &[u8]) -> String {
    let text = String::from_utf8_lossy(err);
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    if tail.is_empty() {
        String::new()
    } else {
        let lines: Vec<&str> = tail.into_iter().rev().collect();
        format!("; it wrote: {}", lines.join(" / "))
    }
}

/// What `--no-exec` can say of a native library: its header, from the file's bytes.
fn header_only(
    check: &swapkit::FileCheck,
    header: &swapkit::HeaderCheck,
    json: bool,
) -> Result<(), Error> {
    if json {
        let value = serde_json::json!({
            "path": check.path,
            "backend": check.backend.to_string(),
            "sha256": check.sha256,
            "size": check.size,
            "header": {
                "symbol": header.symbol,
                "abi_version": header.abi_version,
                "fingerprint": header.fingerprint,
            },
            "manifest": null,
            "checked": BYTES,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let fp = &header.fingerprint;
    println!("{}", check.path.display());
    println!("  backend      {}", check.backend);
    println!("  sha256       {}", check.sha256);
    println!("  size         {} bytes", check.size);
    println!("  header       `{}`", header.symbol);
    println!(
        "  abi          v{} (this swapkit speaks v{})",
        header.abi_version,
        swapkit::abi::ABI_VERSION
    );
    println!(
        "  fingerprint  {} | {} | swapkit-abi {} (matches this build)",
        fp[0], fp[1], fp[2]
    );
    println!("  manifest     not read: only the library's code can produce it (drop --no-exec to read it in a child process)");
    println!("  checked      {BYTES}");
    Ok(())
}

fn print(report: &Report, checked: &str, json: bool) -> Result<(), Error> {
    let m = &report.manifest;
    if json {
        let value = serde_json::json!({
            "path": report.path,
            "backend": report.backend,
            "sha256": report.sha256,
            "size": report.size,
            "signature": signature_json(&report.path),
            "manifest": m,
            "options": m.options,
            "checked": checked,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("{}", report.path.display());
    println!("  plugin       {} {}", m.name, m.version);
    println!("  crate        {}", m.crate_name);
    println!("  backend      {}", report.backend);
    println!("  sha256       {}", report.sha256);
    println!("  size         {} bytes", report.size);
    println!(
        "  abi          v{} (this swapkit speaks v{})",
        m.abi_version,
        swapkit::abi::ABI_VERSION
    );
    println!(
        "  fingerprint  {} | {} | swapkit-abi {} (matches this build)",
        m.fingerprint[0], m.fingerprint[1], m.fingerprint[2]
    );
    println!("  signature    {}", signature_text(report));
    if !m.options.reloadable {
        println!("  reloadable   no: a host never replaces or removes it while it runs");
    }
    println!(
        "  interfaces   {}",
        if m.interfaces.is_empty() { "none" } else { "" }
    );
    for i in &m.interfaces {
        println!("    {} (hash {:016x})", i.name, i.hash);
        // The text the hash is taken over: compare it with the host's to explain a mismatch.
        println!("      signature: {}", i.signature);
        for method in &i.methods {
            println!("      {method}");
        }
    }
    if !m.dependencies.is_empty() {
        println!("  dependencies");
        for d in &m.dependencies {
            let uses: Vec<&str> = d.interfaces.iter().map(|(n, _)| n.as_str()).collect();
            println!(
                "    {} (uses {})",
                d.plugin,
                if uses.is_empty() {
                    "-".into()
                } else {
                    uses.join(", ")
                }
            );
        }
    }
    if !m.live.is_empty() {
        println!("  live exports");
        for l in &m.live {
            let kind = match l.kind {
                LiveKind::Function => "fn",
                LiveKind::Factory => "factory",
            };
            println!("    {kind} {} {}", l.name, l.signature);
        }
    }
    if !m.patches.is_empty() {
        println!("  patches");
        for p in &m.patches {
            println!("    {} {}", p.target, p.signature);
        }
    }
    println!("  checked      {checked}");
    Ok(())
}

/// `{"path", "error": {"kind", "message", "causes"}}` for an artifact that did not inspect.
fn error_json(path: &Path, e: &swapkit::LoadError) -> serde_json::Value {
    let debug = format!("{e:?}");
    let kind: String = debug.chars().take_while(|c| c.is_alphanumeric()).collect();
    let mut causes = vec![];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    serde_json::json!({
        "path": path,
        "error": { "kind": kind, "message": e.to_string(), "causes": causes },
    })
}

/// A failed inspection: the load error, and how the artifact was looked at.
#[derive(Debug)]
struct Failed {
    error: swapkit::LoadError,
    checked: &'static str,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.error, self.checked)
    }
}

impl std::error::Error for Failed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// The artifact's detached signature, if any. Whether its key is trusted is the host's
/// policy (`swapkit verify --key` checks it).
fn signature_of(path: &Path) -> Option<Result<swapkit::trust::SignatureFile, String>> {
    let sig = swapkit::trust::signature_path(path);
    let text = std::fs::read_to_string(&sig).ok()?;
    Some(swapkit::trust::SignatureFile::parse(&text).map_err(|e| e.to_string()))
}

fn signature_text(report: &Report) -> String {
    match signature_of(&report.path) {
        None => "none: the artifact is unsigned (a host with a trust policy refuses it)".into(),
        Some(Err(e)) => format!("unreadable: {e}"),
        Some(Ok(sig)) => {
            let matches = report.statement().is_ok_and(|s| s == sig.statement);
            format!(
                "by key {}, {} (`swapkit verify --key PUB` checks it)",
                sig.key,
                if matches {
                    "for this content, plugin and version"
                } else {
                    "but for other content or another plugin or version"
                }
            )
        }
    }
}

fn signature_json(path: &Path) -> serde_json::Value {
    match signature_of(path) {
        None => "unsigned".into(),
        Some(Err(e)) => serde_json::json!({ "error": e }),
        Some(Ok(sig)) => serde_json::json!({ "key": sig.key.to_string() }),
    }
}
