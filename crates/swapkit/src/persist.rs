//! The state directory: a content-addressed copy of every artifact loaded, and the last
//! known-good selection, so that a restarted host starts where the last one was known to work
//! even if the plugin directory was replaced meanwhile.
//!
//! Layout: `artifacts/<sha256>.<ext>` and `known-good.json`. Both are written to a temporary
//! file in the same directory, synced, then renamed over the old one: a crash leaves either
//! the old file or the new one, never a torn one.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::native::EXTENSION;
use crate::backend::{hex, unhex, BackendKind, Code};

const KNOWN_GOOD: &str = "known-good.json";
const ARTIFACTS: &str = "artifacts";

/// The persisted selection.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KnownGood {
    pub v: u32,
    pub generation: u64,
    pub plugins: Vec<KnownPlugin>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KnownPlugin {
    pub name: String,
    pub version: String,
    pub sha256: String,
    /// Relative to the state directory.
    pub file: String,
}

/// A kept artifact to load: its path, and the SHA-256 the state directory recorded for it.
pub(crate) struct Kept {
    pub path: PathBuf,
    pub sha256: [u8; 32],
}

pub(crate) struct StateDir {
    dir: PathBuf,
}

fn extension(backend: BackendKind) -> &'static str {
    if backend == BackendKind::Wasm {
        "wasm"
    } else {
        EXTENSION
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, renamed over it.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // The rename itself is durable once the directory is synced.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl StateDir {
    /// Opens (making it if needed) a state directory that only this user may write: what it
    /// keeps is run on resume.
    pub fn open(dir: &Path) -> std::io::Result<StateDir> {
        crate::private_dir::ensure(dir)?;
        crate::private_dir::ensure(&dir.join(ARTIFACTS))?;
        Ok(StateDir {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn relative(hash: &[u8; 32], backend: BackendKind) -> String {
        format!("{ARTIFACTS}/{}.{}", hex(hash), extension(backend))
    }

    /// Keeps a copy of an artifact just loaded, and its signature file if it has one,
    /// unless they are already there.
    pub fn keep(&self, code: &Code, bytes: &[u8], signature: Option<&str>) -> std::io::Result<()> {
        let path = self
            .dir
            .join(Self::relative(&code.content_hash, code.backend));
        if let Some(text) = signature {
            self.keep_signature(code, text)?;
        }
        // A regular file with the same content is already kept; anything else under this
        // name (a link, a planted or torn file) is replaced.
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            let same = meta.is_file()
                && meta.len() == bytes.len() as u64
                && std::fs::read(&path).is_ok_and(|kept| kept == bytes);
            if same {
                return Ok(());
            }
            tracing::warn!(path = %path.display(), "replacing a kept artifact that is not what its name says");
        }
        write_atomic(&path, bytes)
    }

    /// Keeps the signature file of an artifact kept here, unless it is already there.
    pub fn keep_signature(&self, code: &Code, text: &str) -> std::io::Result<()> {
        let path = self
            .dir
            .join(Self::relative(&code.content_hash, code.backend));
        let sig = swapkit_trust::signature_path(&path);
        let same = std::fs::symlink_metadata(&sig).is_ok_and(|m| m.is_file())
            && std::fs::read(&sig).is_ok_and(|kept| kept == text.as_bytes());
        if !same {
            write_atomic(&sig, text.as_bytes())?;
        }
        Ok(())
    }

    /// Whether a regular file of `size` bytes is kept under `code`'s name: what a reload that
    /// reuses `code` without reading its artifact asks before it skips [`keep`](Self::keep).
    /// (Its content is checked against its name when a restart loads it.)
    pub fn holds(&self, code: &Code, size: u64) -> bool {
        let path = self
            .dir
            .join(Self::relative(&code.content_hash, code.backend));
        std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Records `codes`, published as `generation`, as the selection to start with.
    pub fn save(&self, generation: u64, codes: &[Arc<Code>]) -> std::io::Result<()> {
        let known = KnownGood {
            v: 1,
            generation,
            plugins: codes
                .iter()
                .map(|c| KnownPlugin {
                    name: c.name.to_string(),
                    version: c.version.to_string(),
                    sha256: hex(&c.content_hash),
                    file: Self::relative(&c.content_hash, c.backend),
                })
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&known).map_err(std::io::Error::other)?;
        write_atomic(&self.dir.join(KNOWN_GOOD), &text)
    }

    /// The persisted selection: `Ok(None)` if there is none, an error if it is unreadable.
    /// Each plugin's file must be the one its hash names (`artifacts/<sha256>.<ext>`), so a
    /// selection cannot point one plugin at another's file.
    pub fn load(&self) -> Result<Option<(KnownGood, Vec<Kept>)>, String> {
        let path = self.dir.join(KNOWN_GOOD);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let known: KnownGood = serde_json::from_slice(&text)
            .map_err(|e| format!("{} does not parse: {e}", path.display()))?;
        if known.v != 1 {
            return Err(format!(
                "{} has format v{}; expected v1",
                path.display(),
                known.v
            ));
        }
        let kept = known
            .plugins
            .iter()
            .map(|p| {
                let sha256 = unhex(&p.sha256).ok_or_else(|| {
                    format!(
                        "{} records `{}` as the hash of {}, which is not a SHA-256",
                        path.display(),
                        p.sha256,
                        p.name
                    )
                })?;
                let named = [EXTENSION, "wasm"]
                    .iter()
                    .any(|ext| p.file == format!("{ARTIFACTS}/{}.{ext}", hex(&sha256)));
                if !named {
                    return Err(format!(
                        "{} names file {} for {}, which is not the file of its hash {}",
                        path.display(),
                        p.file,
                        p.name,
                        p.sha256
                    ));
                }
                Ok(Kept {
                    path: self.dir.join(&p.file),
                    sha256,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((known, kept)))
    }

    /// Deletes kept artifacts that none of `keep` (content hashes) names.
    pub fn prune(&self, keep: &HashSet<[u8; 32]>) {
        let keep: HashSet<String> = keep.iter().map(|h| hex(h)).collect();
        let Ok(entries) = std::fs::read_dir(self.dir.join(ARTIFACTS)) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if stem.len() == 64 && !keep.contains(stem) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_files_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known-good.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("known-good.json")]);
    }

    #[test]
    fn a_torn_or_foreign_selection_is_an_error_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert!(state.load().unwrap().is_none());
        std::fs::write(dir.path().join(KNOWN_GOOD), b"{\"v\":1,\"gener").unwrap();
        let error = |state: &StateDir| state.load().err().expect("refused");
        assert!(error(&state).contains("does not parse"));
        let hash = "ab".repeat(32);
        for (sha, file, expect) in [
            ("00", "../../etc/passwd".to_owned(), "not a SHA-256"),
            (
                hash.as_str(),
                "../../etc/passwd".to_owned(),
                "not the file of its hash",
            ),
            (
                hash.as_str(),
                format!("artifacts/{}.wasm", "cd".repeat(32)),
                "not the file of its hash",
            ),
        ] {
            let text = format!(
                r#"{{"v":1,"generation":3,"plugins":[{{"name":"a","version":"1","sha256":"{sha}","file":"{file}"}}]}}"#
            );
            std::fs::write(dir.path().join(KNOWN_GOOD), text).unwrap();
            assert!(error(&state).contains(expect), "{}", error(&state));
        }
    }
}
