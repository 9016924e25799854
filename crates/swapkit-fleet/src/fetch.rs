//! Fetching a release's artifacts into a host's cache, each checked against its published
//! hash before anything reads it; and the small HTTP server (`swapkit fleet serve`) that
//! hands a directory of artifacts to the fleet.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::model::{Artifact, Release};
use crate::FleetError;

/// The most an artifact may weigh: a bigger download is refused, not buffered.
const MAX_ARTIFACT: u64 = 512 << 20;

/// Fetches every artifact of `release` into `cache` (once per content) and returns their
/// paths, in the release's order. A signature is written beside its artifact as
/// `<file>.sig`, where the host's trust policy looks for it.
pub fn fetch_release(release: &Release, cache: &Path) -> Result<Vec<PathBuf>, FleetError> {
    release.artifacts.iter().map(|a| fetch(a, cache)).collect()
}

fn fetch(artifact: &Artifact, cache: &Path) -> Result<PathBuf, FleetError> {
    if artifact.file.contains('/') || artifact.file.starts_with('.') || artifact.file.is_empty() {
        return Err(FleetError::BadRelease(format!(
            "artifact file name `{}` must be a plain name",
            artifact.file
        )));
    }
    if artifact.sha256.len() != 64 || !artifact.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FleetError::BadRelease(format!(
            "artifact `{}` has no valid SHA-256",
            artifact.file
        )));
    }
    // One directory per content: two releases that share a plugin share its file.
    let dir = cache.join(&artifact.sha256);
    let path = dir.join(&artifact.file);
    if !path.exists() {
        let bytes = download(&artifact.url)?;
        let found = hex(&Sha256::digest(&bytes));
        if found != artifact.sha256 {
            return Err(FleetError::HashMismatch {
                url: artifact.url.clone(),
                expected: artifact.sha256.clone(),
                found,
            });
        }
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        // Written under a temporary name and renamed: a crash leaves no half file behind
        // under the real name.
        let partial = dir.join(format!(".{}.partial", artifact.file));
        std::fs::write(&partial, &bytes).map_err(|e| io(&partial, e))?;
        std::fs::rename(&partial, &path).map_err(|e| io(&path, e))?;
    }
    if let Some(signature) = &artifact.signature {
        let sig = dir.join(format!("{}.sig", artifact.file));
        std::fs::write(&sig, signature).map_err(|e| io(&sig, e))?;
    }
    Ok(path)
}

/// The bytes at `url`: `http://...`, or a path.
fn download(url: &str) -> Result<Vec<u8>, FleetError> {
    let failed = |reason: String| FleetError::Fetch {
        url: url.to_owned(),
        reason,
    };
    if url.starts_with("http://") || url.starts_with("https://") {
        let response = ureq::get(url).call().map_err(|e| failed(e.to_string()))?;
        let mut bytes = vec![];
        response
            .into_body()
            .into_reader()
            .take(MAX_ARTIFACT + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| failed(e.to_string()))?;
        if bytes.len() as u64 > MAX_ARTIFACT {
            return Err(failed(format!("larger than {MAX_ARTIFACT} bytes")));
        }
        Ok(bytes)
    } else {
        let path = url.strip_prefix("file://").unwrap_or(url);
        std::fs::read(path).map_err(|e| failed(e.to_string()))
    }
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io(path: &Path, e: std::io::Error) -> FleetError {
    FleetError::Io {
        path: path.to_owned(),
        source: e,
    }
}

/// Serves the files of `dir` (not its subdirectories) over HTTP on `addr` until the process
/// ends: `GET /<file>`. Names with a `/` or starting with `.` are refused.
pub fn serve(dir: &Path, addr: &str) -> Result<Server, FleetError> {
    let server = tiny_http::Server::http(addr).map_err(|e| FleetError::Fetch {
        url: format!("http://{addr}/"),
        reason: format!("cannot listen: {e}"),
    })?;
    let server = std::sync::Arc::new(server);
    let local = server
        .server_addr()
        .to_ip()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let dir = dir.to_owned();
    let serving = server.clone();
    let thread = std::thread::spawn(move || {
        for request in serving.incoming_requests() {
            let name = request.url().trim_start_matches('/').to_owned();
            let file = (!name.contains('/') && !name.starts_with('.') && !name.is_empty())
                .then(|| dir.join(&name))
                .and_then(|p| std::fs::File::open(p).ok());
            let _ = match file {
                Some(f) => request.respond(tiny_http::Response::from_file(f)),
                None => request.respond(tiny_http::Response::empty(404)),
            };
        }
    });
    Ok(Server {
        server,
        thread: Some(thread),
        addr: local,
    })
}

/// A running file server; stops when dropped.
pub struct Server {
    server: std::sync::Arc<tiny_http::Server>,
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
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
