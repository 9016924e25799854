//! The on-disk compile cache: compiled modules keyed by content and engine.
//!
//! A cache entry is native code that wasmtime maps and runs, so it must come from this host:
//! each entry carries an HMAC-SHA256 over its key (content hash and engine compatibility hash)
//! and its compiled bytes, made with a per-host secret kept outside the cache (`<cache>.key`,
//! mode 0600). An entry planted by someone without the secret, or copied under another
//! module's key, fails the check and is recompiled, never run. The cache directory is made
//! 0700 and refused (the cache is then off) if another user owns it or may write it. The
//! least recently used entries are evicted past a size cap.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::Module;

use super::WasmLoader;
use crate::error::LoadError;

const CACHE_MAGIC: &[u8] = b"SWKCWAS2";
const MAC_LEN: usize = 32;

/// The default size cap of the cache directory.
pub(crate) const DEFAULT_CAP: u64 = 1 << 30;

/// An opened, private compile cache.
pub(crate) struct Cache {
    dir: PathBuf,
    key: [u8; 32],
    cap: u64,
}

impl Cache {
    /// Opens the cache at `dir`, making it and its key if needed. `None`, with a warning, if
    /// the directory or the key is not private to this user: the host then compiles every
    /// module, which is slower but safe.
    pub fn open(dir: &Path, cap: u64) -> Option<Cache> {
        let opened = crate::private_dir::ensure(dir).and_then(|()| key(dir));
        match opened {
            Ok(key) => Some(Cache {
                dir: dir.to_owned(),
                key,
                cap,
            }),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "the wasm compile cache is off: compiling every load");
                None
            }
        }
    }

    fn entry(&self, hash: &[u8; 32], compat: u64) -> PathBuf {
        let hex = crate::backend::hex(&hash[..16]);
        self.dir.join(format!("{hex}-{compat:016x}.cwasm"))
    }

    fn mac(&self, hash: &[u8; 32], compat: u64, compiled: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(CACHE_MAGIC);
        mac.update(hash);
        mac.update(&compat.to_le_bytes());
        mac.update(compiled);
        mac
    }

    /// The compiled bytes of an entry, `None` when there is none, or why it is unusable.
    fn read(&self, hash: &[u8; 32], compat: u64) -> Result<Option<Vec<u8>>, String> {
        let entry = self.entry(hash, compat);
        let data = match crate::files::read_artifact(&entry, true) {
            Ok(d) => d,
            Err(LoadError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.to_string()),
        };
        let payload = data
            .strip_prefix(CACHE_MAGIC)
            .filter(|rest| rest.len() >= MAC_LEN)
            .ok_or("not a swapkit cache entry of this version")?;
        let (tag, compiled) = payload.split_at(MAC_LEN);
        self.mac(hash, compat, compiled)
            .verify_slice(tag)
            .map_err(|_| "its authentication code does not verify: this host did not write it")?;
        // Most recently used now: eviction goes by modification time.
        if let Ok(file) = std::fs::File::options().write(true).open(&entry) {
            let _ = file.set_modified(SystemTime::now());
        }
        // The compiled bytes, moved to the front of the buffer they were read into (a copy
        // into a new one cost an allocation of its size and its page faults on every read).
        let mut data = data;
        data.drain(..CACHE_MAGIC.len() + MAC_LEN);
        Ok(Some(data))
    }

    /// Writes an entry atomically (a private temporary file renamed into place), then evicts
    /// the least recently used entries past the cap.
    fn write(&self, hash: &[u8; 32], compat: u64, compiled: &[u8]) -> std::io::Result<()> {
        let tag = self.mac(hash, compat, compiled).finalize().into_bytes();
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(CACHE_MAGIC)?;
        tmp.write_all(&tag)?;
        tmp.write_all(compiled)?;
        tmp.persist(self.entry(hash, compat)).map_err(|e| e.error)?;
        self.evict();
        Ok(())
    }

    /// Deletes the least recently used entries until the cache is within its cap.
    fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        if total <= self.cap {
            return;
        }
        files.sort();
        for (_, len, path) in files {
            if total <= self.cap {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                tracing::debug!(entry = %path.display(), "evicted from the wasm compile cache");
            }
        }
    }
}

/// The per-host secret of the cache at `dir`: `<dir>.key`, beside the directory rather than
/// in it, made (0600, never replaced) on first use, and refused unless only this user owns
/// and may read it.
fn key(dir: &Path) -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut name = dir.as_os_str().to_owned();
    name.push(".key");
    let path = PathBuf::from(name);
    let mut fresh = [0u8; 32];
    getrandom::fill(&mut fresh).map_err(|e| std::io::Error::other(e.to_string()))?;
    // Written whole to a private temporary file, then linked into place: a host starting at
    // the same moment either makes the key or reads a complete one, never a partial one.
    let dir_of_key = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".swapkit-key-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(dir_of_key)?;
    tmp.write_all(&fresh)?;
    tmp.as_file().sync_all()?;
    match std::fs::hard_link(tmp.path(), &path) {
        Ok(()) => return Ok(fresh),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    drop(tmp);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_file() || meta.uid() != me || meta.mode() & 0o077 != 0 || meta.len() != 32 {
        return Err(std::io::Error::other(format!(
            "the cache key {} must be a 32-byte file of uid {me} with mode 0600",
            path.display()
        )));
    }
    let mut key = [0u8; 32];
    file.read_exact(&mut key)?;
    Ok(key)
}

impl WasmLoader {
    /// The compiled module: from the cache when an authentic entry exists, else compiled
    /// (and cached).
    pub(super) fn module(
        &self,
        path: &Path,
        bytes: &[u8],
        hash: &[u8; 32],
    ) -> Result<Module, LoadError> {
        if let Some(cache) = &self.cache {
            match cache.read(hash, self.compat) {
                Ok(Some(compiled)) => {
                    // SAFETY: the bytes are what `Module::serialize` wrote on this host for
                    // this engine configuration: the entry's key holds the compatibility
                    // hash, and its authentication code, made with this host's secret over
                    // the key and the bytes, proves both. wasmtime checks its own header and
                    // version as well.
                    match unsafe { Module::deserialize(&self.shared.engine, &compiled) } {
                        Ok(module) => return Ok(module),
                        Err(e) => {
                            tracing::warn!(module = %path.display(), error = %e, "ignoring a wasm cache entry wasmtime refused; recompiling")
                        }
                    }
                }
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(module = %path.display(), %reason, "ignoring a bad wasm cache entry; recompiling");
                }
            }
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::WasmCompile {
                path: path.into(),
                source: "the file does not start with the wasm magic number `\\0asm`".into(),
            });
        }
        bounded(path, bytes, &self.shared.limits)?;
        let _span = tracing::debug_span!("compile", path = %path.display()).entered();
        let module = self
            .compiler
            .compile(
                &self.shared.engine,
                bytes,
                self.shared.limits.max_compile_time,
            )
            .map_err(|failed| failed.into_error(path))?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        if let Some(cache) = &self.cache {
            let written = module
                .serialize()
                .map_err(std::io::Error::other)
                .and_then(|compiled| cache.write(hash, self.compat, &compiled));
            if let Err(e) = written {
                tracing::warn!(module = %path.display(), error = %e, "could not write the wasm compile cache");
            }
        }
        Ok(module)
    }
}

/// Refuses a module that is bigger than the limits allow, or holds a function that is, before
/// the compiler spends time and memory on it: one pass over the section headers and the
/// function bodies' lengths, which it does not read.
fn bounded(path: &Path, bytes: &[u8], limits: &super::WasmLimits) -> Result<(), LoadError> {
    let refuse = |reason: String| LoadError::WasmTooCostly {
        path: path.into(),
        reason,
    };
    if bytes.len() > limits.max_module_bytes {
        return Err(refuse(format!(
            "the module has {} bytes, more than the {} a module may have to be compiled \
             (WasmLimits::max_module_bytes)",
            bytes.len(),
            limits.max_module_bytes
        )));
    }
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        // A malformed module is the compiler's to report, with its own words.
        let Ok(payload) = payload else { return Ok(()) };
        if let wasmparser::Payload::CodeSectionEntry(body) = payload {
            let len = body.range().len();
            if len > limits.max_function_bytes {
                return Err(refuse(format!(
                    "a function of the module has {len} bytes of code, more than the {} one \
                     function may have (WasmLimits::max_function_bytes); the compiler's cost \
                     grows faster than a function's size",
                    limits.max_function_bytes
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_private_and_reused_and_entries_are_evicted_oldest_first() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("wasm");
        let cache = Cache::open(&dir, 50).unwrap();
        let again = Cache::open(&dir, 50).unwrap();
        assert_eq!(cache.key, again.key, "one key per cache");
        use std::os::unix::fs::PermissionsExt;
        let key_mode = std::fs::metadata(base.path().join("wasm.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        // A key others may read is refused, and the cache is off.
        std::fs::set_permissions(
            base.path().join("wasm.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(Cache::open(&dir, 50).is_none());
        // Eviction keeps the newest entries within the cap.
        for (i, hash) in [[1u8; 32], [2; 32], [3; 32]].iter().enumerate() {
            cache.write(hash, 7, &[i as u8; 4]).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(
            left.len(),
            1,
            "an entry is 44 bytes, the cap 50: only the newest stays"
        );
        assert_eq!(cache.read(&[3; 32], 7).unwrap(), Some(vec![2; 4]));
        assert_eq!(cache.read(&[1; 32], 7).unwrap(), None);
    }

    #[test]
    fn an_entry_under_another_key_or_tampered_does_not_verify() {
        let base = tempfile::tempdir().unwrap();
        let cache = Cache::open(&base.path().join("c"), DEFAULT_CAP).unwrap();
        cache.write(&[1; 32], 7, b"benign").unwrap();
        // Copied under another module's name.
        std::fs::copy(cache.entry(&[1; 32], 7), cache.entry(&[2; 32], 7)).unwrap();
        assert!(cache
            .read(&[2; 32], 7)
            .unwrap_err()
            .contains("does not verify"));
        // Patched in place.
        let entry = cache.entry(&[1; 32], 7);
        let mut bytes = std::fs::read(&entry).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&entry, bytes).unwrap();
        assert!(cache
            .read(&[1; 32], 7)
            .unwrap_err()
            .contains("does not verify"));
    }
}
