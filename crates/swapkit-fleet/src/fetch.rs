//! Fetching a release's artifacts into a host's private cache, each checked against its
//! published hash every time it is used; and the small HTTP server (`swapkit fleet serve`)
//! that hands a directory of artifacts to the fleet.
//!
//! What a hostile party can do to it, and what stops them:
//! - another local user: the cache is a private directory (0700, owned by the host's user,
//!   not a link; made beside the state directory by default), files are written under a
//!   temporary name opened with `O_CREAT|O_EXCL|O_NOFOLLOW` and renamed into place, and a
//!   cached file is hashed again before each use and fetched again if it differs;
//! - a release's URL: a download is streamed under the loader's size cap
//!   ([`swapkit::MAX_ARTIFACT`]), with connect, read and total deadlines; a local path is
//!   refused unless [`FleetConfig::local_artifacts`](crate::FleetConfig::local_artifacts)
//!   names a root it lies under, and it must be a regular file (never a FIFO or a device);
//!   a mismatch on a local file is reported without the file's digest, so a release cannot
//!   make a host disclose the hash of a file it can read;
//! - a slow or silent server or client: the deadlines above, and `serve` answers each
//!   connection on a thread of its own with deadlines of its own.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::model::{Artifact, Release};
use crate::FleetError;

/// How a host fetches artifacts.
#[derive(Debug, Clone)]
pub(crate) struct Fetcher {
    /// The private cache: one directory per content.
    pub cache: PathBuf,
    /// Local paths are allowed only under this root (canonical), if any.
    pub local_root: Option<PathBuf>,
    pub deadlines: Deadlines,
}

/// How long a download may take.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// To connect (DNS and TCP).
    pub connect: Duration,
    /// For each read of the response: a server that sends nothing for this long is dropped.
    pub read: Duration,
    /// For the whole download.
    pub total: Duration,
}

impl Default for Deadlines {
    fn default() -> Deadlines {
        Deadlines {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(30),
            total: Duration::from_secs(300),
        }
    }
}

impl Fetcher {
    /// Fetches every artifact of `release` into the cache (once per content) and returns
    /// their paths, in the release's order. A signature is written beside its artifact as
    /// `<file>.sig`, where the host's trust policy looks for it.
    pub fn fetch_release(&self, release: &Release) -> Result<Vec<PathBuf>, FleetError> {
        swapkit::ensure_private_dir(&self.cache).map_err(|e| io(&self.cache, e))?;
        release.artifacts.iter().map(|a| self.fetch(a)).collect()
    }

    fn fetch(&self, artifact: &Artifact) -> Result<PathBuf, FleetError> {
        if artifact.file.contains('/') || artifact.file.starts_with('.') || artifact.file.is_empty()
        {
            return Err(FleetError::BadRelease(format!(
                "artifact file name `{}` must be a plain name",
                artifact.file
            )));
        }
        if artifact.sha256.len() != 64
            || !artifact
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(FleetError::BadRelease(format!(
                "artifact `{}` has no valid SHA-256 (64 lower-case hex digits)",
                artifact.file
            )));
        }
        // One directory per content: two releases that share a plugin share its file.
        let dir = self.cache.join(&artifact.sha256);
        swapkit::ensure_private_dir(&dir).map_err(|e| io(&dir, e))?;
        let path = dir.join(&artifact.file);
        if !self.cached(&path, &artifact.sha256) {
            let partial = dir.join(format!(".{}.partial", artifact.file));
            let mut file = create_private(&partial)?;
            let written = self.download(&artifact.url, &artifact.sha256, &mut file);
            drop(file);
            if let Err(e) = written {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
            std::fs::rename(&partial, &path).map_err(|e| io(&path, e))?;
        }
        if let Some(signature) = &artifact.signature {
            let sig = dir.join(format!("{}.sig", artifact.file));
            let partial = dir.join(format!(".{}.sig.partial", artifact.file));
            let mut file = create_private(&partial)?;
            file.write_all(signature.as_bytes())
                .map_err(|e| io(&partial, e))?;
            drop(file);
            std::fs::rename(&partial, &sig).map_err(|e| io(&sig, e))?;
        }
        Ok(path)
    }

    /// Whether `path` holds the artifact hashing to `sha256`; a file that does not (changed
    /// since it was fetched, or not a regular file) is removed, to be fetched again.
    fn cached(&self, path: &Path, sha256: &str) -> bool {
        match swapkit::read_artifact(path) {
            Ok(bytes) if hex(&Sha256::digest(&bytes)) == sha256 => true,
            Ok(_) => {
                tracing::warn!(path = %path.display(), "a cached artifact no longer has its published hash; fetching it again");
                let _ = std::fs::remove_file(path);
                false
            }
            Err(swapkit::LoadError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                false
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "a cached artifact cannot be read; fetching it again");
                let _ = std::fs::remove_file(path);
                false
            }
        }
    }

    /// Writes the bytes at `url` (`http://...`, or a path under the local root) to `out`,
    /// checking their hash against `sha256`.
    fn download(&self, url: &str, sha256: &str, out: &mut std::fs::File) -> Result<(), FleetError> {
        let failed = |reason: String| FleetError::Fetch {
            url: url.to_owned(),
            reason,
        };
        let cap = swapkit::MAX_ARTIFACT;
        if url.starts_with("http://") || url.starts_with("https://") {
            let d = self.deadlines;
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_connect(Some(d.connect))
                .timeout_per_read(Some(d.read))
                .timeout_global(Some(d.total))
                .build()
                .into();
            let response = agent.get(url).call().map_err(|e| failed(e.to_string()))?;
            let mut body = response.into_body().into_reader().take(cap + 1);
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0u64;
            loop {
                let n = body.read(&mut buf).map_err(|e| failed(e.to_string()))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                if total > cap {
                    return Err(failed(format!(
                        "larger than {cap} bytes, the most a host loads"
                    )));
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])
                    .map_err(|e| failed(e.to_string()))?;
            }
            let found = hex(&hasher.finalize());
            if found != sha256 {
                return Err(FleetError::HashMismatch {
                    url: url.to_owned(),
                    expected: sha256.to_owned(),
                    found: Some(found),
                });
            }
            Ok(())
        } else {
            let path = Path::new(url.strip_prefix("file://").unwrap_or(url));
            let Some(root) = &self.local_root else {
                return Err(failed(
                    "a release URL that is a local path is refused unless the host names a \
                     root for them (FleetConfig::local_artifacts); publish with --base-url"
                        .into(),
                ));
            };
            let real = std::fs::canonicalize(path).map_err(|e| failed(e.to_string()))?;
            if !real.starts_with(root) {
                return Err(failed(format!(
                    "it lies outside {}, the only directory local artifacts are read from",
                    root.display()
                )));
            }
            let bytes = swapkit::read_artifact(&real).map_err(|e| failed(e.to_string()))?;
            if hex(&Sha256::digest(&bytes)) != sha256 {
                // No digest: the file is the host's, not something fetched.
                return Err(FleetError::HashMismatch {
                    url: url.to_owned(),
                    expected: sha256.to_owned(),
                    found: None,
                });
            }
            out.write_all(&bytes).map_err(|e| failed(e.to_string()))
        }
    }
}

/// Creates `path` for writing, mode 0600, refusing to follow a link or reuse a file: a
/// leftover of a crash is removed first (removing a link removes the link, not its target).
pub(crate) fn create_private(path: &Path) -> Result<std::fs::File, FleetError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path, e)),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| io(path, e))
}

impl Artifact {
    /// The artifact at `path`, as plugin `plugin` at `version`: hosts fetch it from
    /// `base_url` with its file name appended, or without one from its absolute path. Its
    /// SHA-256 is computed here, and its signature (`<path>.sig`) read if there is one.
    pub fn from_file(
        path: &Path,
        plugin: &str,
        version: &str,
        base_url: Option<&str>,
    ) -> Result<Artifact, FleetError> {
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| FleetError::BadRelease(format!("{} has no file name", path.display())))?
            .to_owned();
        let url = match base_url {
            Some(base) => format!("{}/{file}", base.trim_end_matches('/')),
            None => std::fs::canonicalize(path)
                .map_err(|e| io(path, e))?
                .display()
                .to_string(),
        };
        let sig = PathBuf::from(format!("{}.sig", path.display()));
        let signature = match std::fs::read_to_string(&sig) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&sig, e)),
        };
        Ok(Artifact {
            plugin: plugin.to_owned(),
            version: version.to_owned(),
            sha256: sha256_file(path)?,
            file,
            url,
            signature,
        })
    }
}

/// SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> Result<String, FleetError> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn io(path: &Path, e: std::io::Error) -> FleetError {
    FleetError::Io {
        path: path.to_owned(),
        source: e,
    }
}

/// Serves the files of `dir` (not its subdirectories) over HTTP on `addr` until the
/// [`Server`] is dropped: `GET /<file>`. Names with a `/` or starting with `.` are refused,
/// and so is anything but a regular file. Each connection is answered on a thread of its own
/// (at most [`MAX_CONNECTIONS`] at once; more wait to be accepted), with a deadline for each
/// read and write ([`SERVE_IO_DEADLINE`]) and for the whole answer ([`SERVE_DEADLINE`]): a
/// slow or silent client holds its own connection, never another host's download.
pub fn serve(dir: &Path, addr: &str) -> Result<Server, FleetError> {
    let failed = |e: std::io::Error| FleetError::Fetch {
        url: format!("http://{addr}/"),
        reason: format!("cannot listen: {e}"),
    };
    let listener = std::net::TcpListener::bind(addr).map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?.to_string();
    let dir = dir.to_owned();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("swapkit-fleet-serve".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    while open.load(std::sync::atomic::Ordering::Relaxed) >= MAX_CONNECTIONS {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (dir, done) = (dir.clone(), open.clone());
                    let spawned = std::thread::Builder::new()
                        .name("swapkit-fleet-conn".into())
                        .spawn(move || {
                            let _ = answer(stream, &dir);
                            done.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        });
                    if spawned.is_err() {
                        open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
            .map_err(failed)?
    };
    Ok(Server {
        stop,
        thread: Some(thread),
        addr: local,
    })
}

/// The most connections `serve` answers at once.
pub const MAX_CONNECTIONS: usize = 64;
/// The longest `serve` waits on one read or write of a connection.
pub const SERVE_IO_DEADLINE: Duration = Duration::from_secs(10);
/// The longest `serve` spends on one connection.
pub const SERVE_DEADLINE: Duration = Duration::from_secs(300);

/// Answers one HTTP/1.x request on `stream` with a file of `dir`, then closes it.
fn answer(mut stream: std::net::TcpStream, dir: &Path) -> std::io::Result<()> {
    let started = Instant::now();
    stream.set_read_timeout(Some(SERVE_IO_DEADLINE))?;
    stream.set_write_timeout(Some(SERVE_IO_DEADLINE))?;
    // The request head: at most 8 KiB, up to the blank line.
    let mut head = Vec::with_capacity(1024);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() >= 8 << 10 || started.elapsed() > SERVE_IO_DEADLINE {
            return respond(&mut stream, 400, None);
        }
        if stream.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (Some("GET"), Some(target)) = (words.next(), words.next()) else {
        return respond(&mut stream, 405, None);
    };
    let name = target.trim_start_matches('/');
    let file = (!name.contains('/') && !name.starts_with('.') && !name.is_empty())
        .then(|| swapkit::read_artifact(dir.join(name)).ok())
        .flatten();
    let Some(bytes) = file else {
        return respond(&mut stream, 404, None);
    };
    respond(&mut stream, 200, Some((&bytes, started)))
}

/// Writes a response: a status, and for 200 the body in chunks, within [`SERVE_DEADLINE`].
fn respond(
    stream: &mut std::net::TcpStream,
    status: u16,
    body: Option<(&[u8], Instant)>,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let len = body.map_or(0, |(b, _)| b.len());
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    )?;
    if let Some((bytes, started)) = body {
        for chunk in bytes.chunks(64 << 10) {
            if started.elapsed() > SERVE_DEADLINE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the answer took longer than SERVE_DEADLINE",
                ));
            }
            stream.write_all(chunk)?;
        }
    }
    stream.flush()
}

/// A running file server; stops when dropped.
pub struct Server {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: String,
}

impl Server {
    /// The address it listens on (`127.0.0.1:PORT`).
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wakes the accepting thread, which then sees `stop`.
        let _ = std::net::TcpStream::connect(&self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fetcher(cache: &Path, local_root: Option<&Path>) -> Fetcher {
        Fetcher {
            cache: cache.to_owned(),
            local_root: local_root.map(|r| std::fs::canonicalize(r).unwrap()),
            deadlines: Deadlines {
                connect: Duration::from_secs(2),
                read: Duration::from_millis(300),
                total: Duration::from_secs(20),
            },
        }
    }

    fn release(file: &str, bytes: &[u8], url: String) -> Release {
        Release {
            id: "r".into(),
            artifacts: vec![Artifact {
                plugin: "p".into(),
                version: "1.0.0".into(),
                sha256: hex(&Sha256::digest(bytes)),
                file: file.into(),
                url,
                signature: Some("signature text".into()),
            }],
        }
    }

    /// Runs `f` on a thread and insists it ends within `secs` (a hang is the bug).
    fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(secs))
            .expect("it returned instead of hanging")
    }

    /// Another local user pre-created the cache's files: a planted artifact under the
    /// published name, and links where the signature and the partial file are written. The
    /// planted artifact is hashed, found wrong and fetched again; the links are replaced,
    /// their targets untouched; and a cache directory others may write is refused.
    #[test]
    fn a_planted_cache_is_checked_and_its_links_never_followed() {
        let base = tempfile::tempdir().unwrap();
        let www = base.path().join("www");
        std::fs::create_dir(&www).unwrap();
        std::fs::write(www.join("p.so"), b"the real artifact").unwrap();
        let server = serve(&www, "127.0.0.1:0").unwrap();
        let release = release(
            "p.so",
            b"the real artifact",
            format!("http://{}/p.so", server.addr()),
        );
        let cache = base.path().join("cache");
        let dir = cache.join(&release.artifacts[0].sha256);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(dir.join("p.so"), b"planted code").unwrap();
        let victim = base.path().join("highest-versions.json");
        std::fs::write(&victim, b"{}").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("p.so.sig")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(".p.so.sig.partial")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(".p.so.partial")).unwrap();

        let paths = fetcher(&cache, None).fetch_release(&release).unwrap();
        assert_eq!(std::fs::read(&paths[0]).unwrap(), b"the real artifact");
        assert_eq!(
            std::fs::read(&victim).unwrap(),
            b"{}",
            "no link was followed"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("p.so.sig")).unwrap(),
            "signature text"
        );
        assert!(!dir.join("p.so.sig").is_symlink());

        // Changed after it was fetched: fetched again before it is used.
        std::fs::write(&paths[0], b"changed later").unwrap();
        fetcher(&cache, None).fetch_release(&release).unwrap();
        assert_eq!(std::fs::read(&paths[0]).unwrap(), b"the real artifact");

        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = fetcher(&cache, None).fetch_release(&release).unwrap_err();
        assert!(
            err.to_string().contains("may be written by other users"),
            "{err}"
        );
    }

    /// A local path in a release read `/dev/zero` until memory ran out, blocked on a FIFO,
    /// and disclosed the digest of any file the host could read. Now a local path needs a
    /// root it lies under, must be a regular file, and a mismatch carries no digest.
    #[test]
    fn a_local_path_needs_a_root_a_regular_file_and_discloses_no_digest() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("artifacts");
        std::fs::create_dir(&root).unwrap();
        let cache = base.path().join("cache");
        let inside = root.join("p.so");
        std::fs::write(&inside, b"artifact").unwrap();
        let secret = base.path().join("secret");
        std::fs::write(&secret, b"the host's secret").unwrap();

        let ok = release("p.so", b"artifact", inside.display().to_string());
        let err = fetcher(&cache, None).fetch_release(&ok).unwrap_err();
        assert!(err.to_string().contains("local_artifacts"), "{err}");
        fetcher(&cache, Some(&root)).fetch_release(&ok).unwrap();

        for outside in [secret.display().to_string(), "/dev/zero".into()] {
            let r = release("q.so", b"x", outside);
            let err = fetcher(&cache, Some(&root)).fetch_release(&r).unwrap_err();
            assert!(err.to_string().contains("lies outside"), "{err}");
        }
        // A link under the root to a file outside it is outside.
        std::os::unix::fs::symlink(&secret, root.join("link.so")).unwrap();
        let r = release("q.so", b"x", root.join("link.so").display().to_string());
        let err = fetcher(&cache, Some(&root)).fetch_release(&r).unwrap_err();
        assert!(err.to_string().contains("lies outside"), "{err}");

        let fifo = root.join("fifo.so");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let r = release("q.so", b"x", fifo.display().to_string());
        let f = fetcher(&cache, Some(&root));
        let err = within(30, move || f.fetch_release(&r).unwrap_err());
        assert!(err.to_string().contains("not a plugin artifact"), "{err}");

        // A mismatch on a local file: no digest of it in the error.
        std::fs::write(root.join("other.so"), b"the host's secret").unwrap();
        let r = release("q.so", b"x", root.join("other.so").display().to_string());
        let err = fetcher(&cache, Some(&root)).fetch_release(&r).unwrap_err();
        assert!(
            matches!(err, FleetError::HashMismatch { found: None, .. }),
            "{err:?}"
        );
        let digest = hex(&Sha256::digest(b"the host's secret"));
        assert!(!err.to_string().contains(&digest), "{err}");
    }

    /// A server that accepts and then says nothing held the agent forever; one that sends
    /// without end was buffered up to 512 MiB. Now the read deadline ends the first, and the
    /// download stops at the loader's cap, streamed to disk, for the second.
    #[test]
    fn a_silent_server_times_out_and_an_endless_body_stops_at_the_cap() {
        let base = tempfile::tempdir().unwrap();
        let cache = base.path().join("cache");
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        std::thread::spawn(move || {
            let held: Vec<_> = silent.incoming().take(4).collect();
            std::thread::sleep(Duration::from_secs(60));
            drop(held);
        });
        let r = release("p.so", b"x", format!("http://{addr}/p.so"));
        let f = fetcher(&cache, None);
        let err = within(30, move || f.fetch_release(&r).unwrap_err());
        assert!(matches!(err, FleetError::Fetch { .. }), "{err:?}");

        let endless = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = endless.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Some(Ok(mut stream)) = endless.incoming().next() {
                let mut head = [0u8; 1024];
                let _ = stream.read(&mut head);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                let zeros = vec![0u8; 1 << 20];
                while stream.write_all(&zeros).is_ok() {}
            }
        });
        let r = release("p.so", b"x", format!("http://{addr}/p.so"));
        let f = fetcher(&cache, None);
        let err = within(120, move || f.fetch_release(&r).unwrap_err());
        assert!(err.to_string().contains("larger than"), "{err}");
        let dir = cache.join(hex(&Sha256::digest(b"x")));
        assert!(
            std::fs::read_dir(&dir).unwrap().next().is_none(),
            "the partial file is gone"
        );
    }

    /// `fleet serve` answered one request at a time: a client that connected and stalled
    /// stopped every other host's download. Now each connection has its own thread and
    /// deadlines, and a fetch goes through beside stalled clients.
    #[test]
    fn serve_answers_beside_clients_that_stall() {
        let base = tempfile::tempdir().unwrap();
        let www = base.path().join("www");
        std::fs::create_dir(&www).unwrap();
        let big = vec![7u8; 8 << 20];
        std::fs::write(www.join("big.so"), &big).unwrap();
        std::fs::write(www.join("p.so"), b"artifact").unwrap();
        let server = serve(&www, "127.0.0.1:0").unwrap();
        // One says nothing; another asks for a big file and never reads it.
        let _silent = std::net::TcpStream::connect(server.addr()).unwrap();
        let mut unread = std::net::TcpStream::connect(server.addr()).unwrap();
        unread.write_all(b"GET /big.so HTTP/1.1\r\n\r\n").unwrap();
        let r = release(
            "p.so",
            b"artifact",
            format!("http://{}/p.so", server.addr()),
        );
        let f = fetcher(&base.path().join("cache"), None);
        let paths = within(60, move || f.fetch_release(&r).unwrap());
        assert_eq!(std::fs::read(&paths[0]).unwrap(), b"artifact");
        // What it refuses.
        for (request, status) in [
            ("GET /.hidden HTTP/1.1\r\n\r\n", "404"),
            ("GET /a/b HTTP/1.1\r\n\r\n", "404"),
            ("POST /p.so HTTP/1.1\r\n\r\n", "405"),
        ] {
            let mut s = std::net::TcpStream::connect(server.addr()).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{answer}"
            );
        }
    }
}
