//! Loading artifacts: where a reload reads from, how each file's format is told, and which
//! backend loads it. The result is checked [`Code`], outside any generation: nothing here
//! runs a plugin hook.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::backend::native::{NativeLoader, Staged, EXTENSION};
#[cfg(feature = "wasm")]
use crate::backend::wasm::{WasmLimits, WasmLoader};
use crate::backend::{BackendKind, Code};
use crate::error::LoadError;
use crate::files::FileId;
use crate::lock::lock;
use crate::persist::{Kept, StateDir};
use swapkit_trust::{SignatureFile, TrustPolicy};

/// Where a reload reads its artifacts from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Dir(PathBuf),
    /// The artifacts of a directory for the plugins listed, and only those: plugin `x` is
    /// `x.<ext>` or `libx.<ext>` (`.so`, `.dylib`, `.dll` or `.wasm`), named `x` in its manifest.
    DirOnly {
        dir: PathBuf,
        only: Vec<String>,
    },
    Files(Vec<PathBuf>),
}

impl Source {
    /// The artifacts to load, in load order (sorted by name for a directory).
    pub fn paths(&self) -> Result<Vec<PathBuf>, LoadError> {
        match self {
            Source::Files(files) => Ok(files.clone()),
            Source::Dir(dir) => list_artifacts(dir),
            Source::DirOnly { dir, only } => {
                let all = list_artifacts(dir)?;
                let listed: Vec<PathBuf> = all
                    .into_iter()
                    .filter(|p| only.iter().any(|n| *n == plugin_stem(p)))
                    .collect();
                if let Some(missing) = only
                    .iter()
                    .find(|n| !listed.iter().any(|p| plugin_stem(p) == **n))
                {
                    return Err(LoadError::Unlisted {
                        dir: dir.clone(),
                        plugin: missing.clone(),
                        reason: "no artifact for it".into(),
                    });
                }
                Ok(listed)
            }
        }
    }

    /// The directory a watcher follows, if the source is one.
    #[cfg(feature = "ops")]
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Source::Dir(dir) | Source::DirOnly { dir, .. } => Some(dir),
            Source::Files(_) => None,
        }
    }
}

/// The plugin an artifact's file name stands for: its stem, without a `lib` prefix.
fn plugin_stem(path: &Path) -> &str {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    stem.strip_prefix("lib").unwrap_or(stem)
}

/// How the wasm engine is set up when the first wasm artifact arrives.
#[derive(Debug, Clone, Default)]
pub(crate) struct WasmConfig {
    #[cfg(feature = "wasm")]
    pub limits: WasmLimits,
    /// The compile cache directory, if any.
    pub cache: Option<PathBuf>,
    /// The most bytes the compile cache may hold (`None`: 1 GiB).
    #[cfg_attr(not(feature = "wasm"), allow(dead_code))]
    pub cache_cap: Option<u64>,
}

/// Reads artifacts and loads each through the backend its content calls for.
pub(crate) struct Loader {
    /// `None` for a swapper of static plugins, which loads no artifact.
    native: Option<NativeLoader>,
    /// Made on the first wasm artifact, so hosts without wasm plugins pay nothing for it.
    #[cfg(feature = "wasm")]
    wasm: Mutex<Option<Arc<WasmLoader>>>,
    #[cfg_attr(not(feature = "wasm"), allow(dead_code))]
    wasm_config: WasmConfig,
    /// Where every artifact loaded is kept, if anywhere.
    keep: Option<Arc<StateDir>>,
    /// What every artifact is checked against before any of its code runs, if anything.
    trust: Option<TrustPolicy>,
    /// (artifact hash, signature file hash) pairs that passed the policy: the policy never
    /// changes, so the same signature over the same bytes passes again, and a reload that
    /// meets them (every unchanged plugin, every flip back) skips the verification.
    verified: Mutex<std::collections::HashSet<([u8; 32], [u8; 32])>>,
    /// Artifacts read before, by the path they were read from: a reload that finds a file
    /// unchanged reuses its code without reading or hashing it again.
    seen: Mutex<std::collections::HashMap<PathBuf, Seen>>,
}

/// A file read before: what it was, and the code made of its bytes (while any generation,
/// history entry or backend keeps that code).
struct Seen {
    id: FileId,
    /// Whether `id` was taken settled (see [`FileId::settled`]): only then does an equal id
    /// stand for the same bytes. An unsettled one is a hint: the file is probably what was
    /// read, so its next reading hashes before it writes a private copy.
    settled: bool,
    code: std::sync::Weak<Code>,
}

/// How many files are remembered before those whose code is gone are forgotten.
const SEEN_PRUNE_AT: usize = 64;

impl Loader {
    pub fn new(
        native: Option<NativeLoader>,
        wasm_config: WasmConfig,
        keep: Option<Arc<StateDir>>,
        trust: Option<TrustPolicy>,
    ) -> Loader {
        Loader {
            native,
            #[cfg(feature = "wasm")]
            wasm: Mutex::new(None),
            wasm_config,
            keep,
            trust,
            verified: Mutex::new(Default::default()),
            seen: Mutex::new(Default::default()),
        }
    }

    /// Whether artifacts are checked against a trust policy.
    pub fn trusts(&self) -> bool {
        self.trust.is_some()
    }

    /// Whether this loader loads artifacts at all (a static swapper's does not).
    pub fn is_static(&self) -> bool {
        self.native.is_none()
    }

    /// Loads every artifact of `source`.
    pub fn load_source(&self, source: &Source) -> Result<Vec<Arc<Code>>, LoadError> {
        let native = self.native.as_ref().ok_or(LoadError::StaticMode)?;
        let paths = source.paths()?;
        let codes = paths
            .iter()
            .map(|p| self.load_with(native, p, None))
            .collect::<Result<Vec<_>, _>>()?;
        if let Source::DirOnly { dir, .. } = source {
            for (code, file) in codes.iter().zip(&paths) {
                if *code.name != *plugin_stem(file) {
                    return Err(LoadError::Unlisted {
                        dir: dir.clone(),
                        plugin: plugin_stem(file).to_owned(),
                        reason: format!(
                            "its artifact {} holds plugin `{}` {}; publish each listed plugin \
                             under its own name",
                            file.display(),
                            code.name,
                            code.version
                        ),
                    });
                }
            }
        }
        Ok(codes)
    }

    /// Reads and checks one artifact.
    pub fn load(&self, path: &Path) -> Result<Arc<Code>, LoadError> {
        let native = self.native.as_ref().ok_or(LoadError::StaticMode)?;
        self.load_with(native, path, None)
    }

    /// Loads artifacts kept in the state directory: each is opened without following a
    /// link, and must hash to what was recorded for it, before anything else.
    pub fn load_kept(&self, kept: &[Kept]) -> Result<Vec<Arc<Code>>, LoadError> {
        let native = self.native.as_ref().ok_or(LoadError::StaticMode)?;
        kept.iter()
            .map(|k| self.load_with(native, &k.path, Some(&k.sha256)))
            .collect()
    }

    /// Reads, checks and loads one artifact: the bytes, then (if the host has a trust
    /// policy) the signature over them, then the backend, then the signed claims against the
    /// manifest. `expect` is the recorded hash of a kept artifact.
    ///
    /// A file this loader read before, whose [`FileId`] is what it was then, is not read or
    /// hashed again: its code is reused (its signature is still read and checked).
    fn load_with(
        &self,
        native: &NativeLoader,
        path: &Path,
        expect: Option<&[u8; 32]>,
    ) -> Result<Arc<Code>, LoadError> {
        let now = std::time::SystemTime::now();
        let nofollow = expect.is_some();
        let (file, meta) = crate::files::open_capped(path, nofollow, crate::files::MAX_ARTIFACT)?;
        let span = tracing::debug_span!(
            "load",
            path = %path.display(),
            bytes = meta.len(),
            unchanged = tracing::field::Empty
        );
        let _span = span.enter();
        let id = FileId::of(&meta);
        if expect.is_none() {
            if let Some(code) = self.unchanged(path, id)? {
                span.record("unchanged", true);
                return Ok(code);
            }
        }
        let bytes = crate::files::read_opened(path, file, &meta, crate::files::MAX_ARTIFACT)?;
        if bytes.is_empty() {
            return Err(LoadError::Empty { path: path.into() });
        }
        let backend = format(path, &bytes);
        let read_before = id.is_some_and(|id| {
            lock(&self.seen)
                .get(path)
                .is_some_and(|s| s.id == id && s.code.strong_count() > 0)
        });
        let (hash, staged) = hash_and_stage(native, path, backend, &bytes, !read_before);
        if let Some(expected) = expect.filter(|e| **e != hash) {
            return Err(LoadError::KeptChanged {
                path: path.into(),
                expected: crate::backend::hex(expected),
                found: crate::backend::hex(&hash),
            });
        }
        let signature = self.check_signature(path, &hash, backend, nofollow)?;
        let kept = self.keep.as_ref().map(|_| bytes.clone());
        let code = match backend {
            #[cfg(feature = "wasm")]
            BackendKind::Wasm => self.wasm()?.load(path, bytes, hash)?,
            #[cfg(not(feature = "wasm"))]
            BackendKind::Wasm => {
                return Err(LoadError::BackendDisabled {
                    path: path.into(),
                    backend: BackendKind::Wasm,
                    feature: "wasm",
                })
            }
            _ => match staged {
                Some(staged) => native.load_staged(path, staged, hash)?,
                None => native.load(path, bytes, hash)?,
            },
        };
        check_claims(path, &code, &signature)?;
        if let (Some(dir), Some(bytes)) = (&self.keep, kept) {
            let signature = signature.as_ref().map(|(text, _)| text.as_str());
            if let Err(e) = dir.keep(&code, &bytes, signature) {
                tracing::warn!(error = %e, dir = %dir.path().display(), "cannot keep a copy of {path:?} in the state directory; a restart may not find it");
            }
        }
        if let Some(id) = id {
            let mut seen = lock(&self.seen);
            if seen.len() >= SEEN_PRUNE_AT {
                seen.retain(|_, s| s.code.strong_count() > 0);
            }
            seen.insert(
                path.into(),
                Seen {
                    id,
                    settled: id.settled(now),
                    code: Arc::downgrade(&code),
                },
            );
        }
        Ok(code)
    }

    /// The code read from `path` before, if the file is still what it was then (`id`), still
    /// trusted, and kept where the host keeps artifacts; `None` when it must be read.
    fn unchanged(&self, path: &Path, id: Option<FileId>) -> Result<Option<Arc<Code>>, LoadError> {
        let Some(id) = id else { return Ok(None) };
        let code = match lock(&self.seen).get(path) {
            Some(seen) if seen.settled && seen.id == id => seen.code.upgrade(),
            _ => None,
        };
        let Some(code) = code else { return Ok(None) };
        if let Some(dir) = &self.keep {
            if !dir.holds(&code, id.size()) {
                return Ok(None);
            }
        }
        let signature = self.check_signature(path, &code.content_hash, code.backend, false)?;
        check_claims(path, &code, &signature)?;
        if let (Some(dir), Some((text, _))) = (&self.keep, &signature) {
            if let Err(e) = dir.keep_signature(&code, text) {
                tracing::warn!(error = %e, dir = %dir.path().display(), "cannot keep the signature of {path:?} in the state directory; a restart may not find it");
            }
        }
        Ok(Some(code))
    }

    /// Under a trust policy, reads the detached signature of `path` and checks it against the
    /// artifact's `hash` (once per signature and content: passes are remembered).
    fn check_signature(
        &self,
        path: &Path,
        hash: &[u8; 32],
        backend: BackendKind,
        nofollow: bool,
    ) -> Result<Option<(String, SignatureFile)>, LoadError> {
        let Some(policy) = &self.trust else {
            return Ok(None);
        };
        let signature = read_signature(path, nofollow)?;
        let seen = signature.as_ref().map(|(text, _)| {
            let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(text).into();
            (*hash, digest)
        });
        if !seen.is_some_and(|s| lock(&self.verified).contains(&s)) {
            let signer = policy
                .check_content(hash, &backend.to_string(), signature.as_ref().map(|s| &s.1))
                .map_err(|source| LoadError::Untrusted {
                    path: path.into(),
                    source,
                })?;
            tracing::debug!(signer = %signer, "trusted");
            if let Some(seen) = seen {
                lock(&self.verified).insert(seen);
            }
        }
        Ok(signature)
    }

    /// The wasm engine, made on first use.
    #[cfg(feature = "wasm")]
    pub fn wasm(&self) -> Result<Arc<WasmLoader>, LoadError> {
        let mut slot = lock(&self.wasm);
        if let Some(loader) = &*slot {
            return Ok(loader.clone());
        }
        let WasmConfig {
            limits,
            cache,
            cache_cap,
        } = self.wasm_config.clone();
        let cap = cache_cap.unwrap_or(crate::backend::wasm::cache::DEFAULT_CAP);
        let loader = Arc::new(WasmLoader::new(limits, cache, cap)?);
        *slot = Some(loader.clone());
        Ok(loader)
    }

    /// How many wasm modules were compiled rather than read from the cache or reused.
    #[cfg(feature = "wasm")]
    pub fn wasm_compiles(&self) -> usize {
        lock(&self.wasm).as_ref().map_or(0, |l| l.compiles())
    }
}

/// The backend an artifact is for: a wasm module starts with `\0asm` (or is named `.wasm`);
/// anything else goes to the platform's dynamic loader, whose parser says what is wrong
/// with a file that is neither.
fn format(path: &Path, bytes: &[u8]) -> BackendKind {
    let wasm =
        bytes.starts_with(b"\0asm") || path.extension().and_then(|e| e.to_str()) == Some("wasm");
    if wasm {
        BackendKind::Wasm
    } else {
        BackendKind::Native
    }
}

/// Whether a reload of its directory loads `path`: not hidden, with an artifact extension.
/// The watcher asks the same question of the files it sees change.
pub(crate) fn is_artifact(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str());
    !hidden && (ext == Some(EXTENSION) || ext == Some("wasm"))
}

/// Whether a change to `path` matters to a reload of its directory: an artifact, or the
/// detached signature of one (a release may write it after the artifact).
#[cfg(feature = "ops")]
pub(crate) fn is_watched(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e == swapkit_trust::EXTENSION)
    {
        return path
            .file_stem()
            .is_some_and(|stem| is_artifact(Path::new(stem)));
    }
    is_artifact(path)
}

/// The artifacts in `dir`, sorted by name. Hidden files and files with other extensions
/// (such as a `.tmp` being written) are skipped.
fn list_artifacts(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read_dir = |source| LoadError::ReadDir {
        path: dir.into(),
        source,
    };
    let mut paths = vec![];
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let path = entry.map_err(read_dir)?.path();
        if is_artifact(&path) && path.is_file() {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(LoadError::NoArtifacts {
            path: dir.into(),
            ext: EXTENSION,
        });
    }
    paths.sort();
    Ok(paths)
}

/// The default wasm compile cache: under the user's cache directory, never a shared one,
/// because a cache entry is native code the host will run.
pub(crate) fn default_wasm_cache() -> Option<PathBuf> {
    Some(crate::user_cache_dir()?.join("wasm"))
}

/// A checked artifact, as [`inspect`] reads it.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The file.
    pub path: PathBuf,
    /// The backend it runs on.
    pub backend: BackendKind,
    /// SHA-256 of its content, in hex: what a swapper compares to reuse an instance.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// What the plugin says about itself.
    pub manifest: swapkit_abi::Manifest,
}

impl Artifact {
    /// What a signature of this artifact vouches for (see [`swapkit_trust`]): its hash,
    /// plugin name, version, backend and build fingerprint.
    pub fn statement(&self) -> swapkit_trust::Statement {
        let sha256 = crate::backend::unhex(&self.sha256).expect("inspect writes the hash as hex");
        swapkit_trust::Statement {
            plugin: self.manifest.name.clone(),
            version: self.manifest.version.clone(),
            backend: self.backend.to_string(),
            fingerprint: self.manifest.fingerprint.clone(),
            sha256,
        }
    }
}

/// Reads and checks an artifact the way a load does (header, ABI version, build
/// fingerprint, manifest, wasm imports and exports), without running any of its hooks.
///
/// A native library is mapped to read its manifest, which runs its static constructors, as
/// any load would. The error for a broken file says what is wrong with it.
pub fn inspect(path: impl AsRef<Path>) -> Result<Artifact, LoadError> {
    let path = path.as_ref();
    let native = NativeLoader::new(None, false).map_err(|source| LoadError::ScratchDir {
        scratch: std::env::temp_dir(),
        source,
    })?;
    let config = WasmConfig {
        cache: default_wasm_cache(),
        cache_cap: None,
        #[cfg(feature = "wasm")]
        limits: WasmLimits::default(),
    };
    let code = Loader::new(Some(native), config, None, None).load(path)?;
    Ok(Artifact {
        path: path.to_owned(),
        backend: code.backend,
        sha256: crate::backend::hex(&code.content_hash),
        size: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        manifest: code.manifest.clone(),
    })
}

/// What an artifact's bytes say, read without running or compiling any of it: see
/// [`inspect_file`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FileCheck {
    /// The file.
    pub path: PathBuf,
    /// The backend it would run on, by its format.
    pub backend: BackendKind,
    /// SHA-256 of its content, in hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// For a native library, its plugin header, found and checked.
    pub header: Option<HeaderCheck>,
    /// What the artifact says it is (name, version, build fingerprint), read from its bytes
    /// (`swapkit_abi::claims`); why not, for one built before `export_plugin!` wrote them.
    /// `swapkit sign` signs them and `swapkit verify` checks them, running nothing.
    pub claims: Result<FileClaims, String>,
    /// The bytes read, for [`inspect_checked`] (which needs the wasm backend).
    #[cfg_attr(not(feature = "wasm"), allow(dead_code))]
    bytes: ReadBytes,
}

/// An artifact's claims, read from its bytes: see [`FileCheck::claims`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileClaims {
    /// The plugin's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its build fingerprint: `rustc -V`, target, `swapkit-abi` version.
    pub fingerprint: [String; 3],
}

impl FileCheck {
    /// SHA-256 of its content: [`sha256`](Self::sha256) as bytes.
    pub fn digest(&self) -> [u8; 32] {
        crate::backend::unhex(&self.sha256).expect("inspect_file writes the hash as hex")
    }

    /// What a signature of the artifact vouches for, from its bytes alone: its hash, backend
    /// and claims. `Err` says why the file has no claims.
    pub fn statement(&self) -> Result<swapkit_trust::Statement, String> {
        let claims = self.claims.as_ref().map_err(Clone::clone)?;
        Ok(swapkit_trust::Statement {
            plugin: claims.name.clone(),
            version: claims.version.clone(),
            backend: self.backend.to_string(),
            fingerprint: claims.fingerprint.clone(),
            sha256: self.digest(),
        })
    }
}

/// Bytes held for a later step, shown by their length.
#[derive(Clone)]
struct ReadBytes(Arc<[u8]>);

impl std::fmt::Debug for ReadBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// A native library's plugin header, read from the file and checked as a load checks it:
/// magic, ABI version, build fingerprint and panic strategy.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HeaderCheck {
    /// The exported symbol that holds it.
    pub symbol: String,
    /// Its ABI version.
    pub abi_version: u32,
    /// Its build fingerprint: `rustc -V`, target, `swapkit-abi` version.
    pub fingerprint: [String; 3],
}

/// Reads and checks what can be checked of an artifact from its bytes alone, running none of
/// its code: a native library's symbol table and plugin header (not its manifest, which only
/// its code can produce). Use it on a file you do not trust; [`inspect`] maps a native library,
/// which runs its constructors. A wasm module needs compiling to check, which [`inspect`] does
/// inside the sandbox, so here it is only hashed.
pub fn inspect_file(path: impl AsRef<Path>) -> Result<FileCheck, LoadError> {
    let path = path.as_ref();
    let bytes = crate::files::read_artifact(path, false)?;
    if bytes.is_empty() {
        return Err(LoadError::Empty { path: path.into() });
    }
    let backend = format(path, &bytes);
    let header = match backend {
        BackendKind::Wasm => None,
        _ => {
            let found = crate::backend::native::header_in_file(path, &bytes)?;
            let fp = &found.fingerprint;
            Some(HeaderCheck {
                symbol: found.symbol,
                abi_version: found.abi_version,
                fingerprint: [
                    fp.rustc().to_owned(),
                    fp.target().to_owned(),
                    fp.abi_crate().to_owned(),
                ],
            })
        }
    };
    let claims = match &header {
        Some(header) => crate::backend::native::claims_in_file(&bytes, &header.symbol),
        None => wasm_claims(&bytes),
    };
    let claims = claims.map(|c| FileClaims {
        name: c.name.to_owned(),
        version: c.version.to_owned(),
        fingerprint: [
            c.fingerprint.rustc().to_owned(),
            c.fingerprint.target().to_owned(),
            c.fingerprint.abi_crate().to_owned(),
        ],
    });
    Ok(FileCheck {
        path: path.to_owned(),
        backend,
        sha256: crate::backend::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        size: bytes.len() as u64,
        header,
        claims,
        bytes: ReadBytes(bytes.into()),
    })
}

/// The claims in a wasm module's custom section `swapkit.claims`, found by walking its
/// section headers (no code is compiled). The first such section counts.
fn wasm_claims(bytes: &[u8]) -> Result<swapkit_abi::claims::Claims<'_>, String> {
    use swapkit_abi::claims::{decode, CLAIMS_SECTION};
    /// An unsigned LEB128 of at most 32 bits at `at`, and the offset after it.
    fn leb(bytes: &[u8], mut at: usize) -> Option<(usize, usize)> {
        let mut value = 0usize;
        for shift in (0..35).step_by(7) {
            let byte = *bytes.get(at)?;
            at += 1;
            value |= ((byte & 0x7f) as usize) << shift;
            if byte & 0x80 == 0 {
                return Some((value, at));
            }
        }
        None
    }
    let malformed = || "its sections are malformed".to_owned();
    if !bytes.starts_with(b"\0asm") || bytes.len() < 8 {
        return Err("it is not a wasm module".into());
    }
    let mut at = 8;
    while at < bytes.len() {
        let id = bytes[at];
        let (size, start) = leb(bytes, at + 1).ok_or_else(malformed)?;
        let end = start
            .checked_add(size)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(malformed)?;
        if id == 0 {
            let (name_len, name_at) = leb(bytes, start).ok_or_else(malformed)?;
            let name_end = name_at
                .checked_add(name_len)
                .filter(|&e| e <= end)
                .ok_or_else(malformed)?;
            if &bytes[name_at..name_end] == CLAIMS_SECTION.as_bytes() {
                return decode(&bytes[name_end..end])
                    .map_err(|e| format!("its `{CLAIMS_SECTION}` section: {e}"));
            }
        }
        at = end;
    }
    Err(format!(
        "it has no `{CLAIMS_SECTION}` section (a plugin built with an export_plugin! older than \
         the claims has none: rebuild it)"
    ))
}

/// Reads and checks a wasm module as [`inspect`] does, from the bytes [`inspect_file`] read
/// (so what is checked is what was hashed, whatever the file holds now): compiled and probed
/// in the sandbox, none of its code running outside it. A native library is refused
/// ([`LoadError::WouldRun`]): its manifest is produced by its code, which this never runs.
pub fn inspect_checked(check: &FileCheck) -> Result<Artifact, LoadError> {
    if check.backend != BackendKind::Wasm {
        return Err(LoadError::WouldRun {
            path: check.path.clone(),
        });
    }
    #[cfg(feature = "wasm")]
    {
        let loader = crate::backend::wasm::WasmLoader::new(
            WasmLimits::default(),
            default_wasm_cache(),
            crate::backend::wasm::cache::DEFAULT_CAP,
        )?;
        let code = loader.load(&check.path, check.bytes.0.to_vec(), check.digest())?;
        Ok(Artifact {
            path: check.path.clone(),
            backend: code.backend,
            sha256: check.sha256.clone(),
            size: check.size,
            manifest: code.manifest.clone(),
        })
    }
    #[cfg(not(feature = "wasm"))]
    Err(LoadError::BackendDisabled {
        path: check.path.clone(),
        backend: BackendKind::Wasm,
        feature: "wasm",
    })
}

/// From how many bytes a native artifact's private copy is written on a second thread while
/// the first hashes the same bytes: below it, the thread costs more than it saves.
const STAGE_BESIDE_HASH: usize = 128 << 10;

/// The SHA-256 of an artifact's bytes and, for a large native library that is probably new
/// (`new`: not the file this loader read last under this path), its private copy staged
/// beside the hash on a thread of its own (the two are most of a cold reload, about 0.28 ms
/// and 0.2 ms for a 500 KB plugin here). Nothing is mapped or run: the copy is dropped
/// unmapped if the content turns out to be loaded already or fails a check.
fn hash_and_stage(
    native: &NativeLoader,
    path: &Path,
    backend: BackendKind,
    bytes: &[u8],
    new: bool,
) -> ([u8; 32], Option<Result<Staged, LoadError>>) {
    let sha256 =
        |bytes: &[u8]| -> [u8; 32] { <sha2::Sha256 as sha2::Digest>::digest(bytes).into() };
    if !new || backend != BackendKind::Native || bytes.len() < STAGE_BESIDE_HASH {
        return (sha256(bytes), None);
    }
    std::thread::scope(|scope| {
        let stage = std::thread::Builder::new()
            .name("swapkit-stage".into())
            .stack_size(256 << 10)
            .spawn_scoped(scope, || native.stage(path, bytes));
        let hash = sha256(bytes);
        let staged = match stage {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            // No thread to be had: stage here.
            Err(_) => native.stage(path, bytes),
        };
        (hash, Some(staged))
    })
}

/// Checks what a signature claims (plugin, version, build) against the loaded manifest.
fn check_claims(
    path: &Path,
    code: &Code,
    signature: &Option<(String, SignatureFile)>,
) -> Result<(), LoadError> {
    let Some((_, signed)) = signature else {
        return Ok(());
    };
    TrustPolicy::check_claims(
        signed,
        &code.name,
        &code.version,
        &code.manifest.fingerprint,
    )
    .map_err(|source| LoadError::Untrusted {
        path: path.into(),
        source,
    })
}

/// Reads the detached signature of `path`, if there is one: its text and what it says.
fn read_signature(
    path: &Path,
    nofollow: bool,
) -> Result<Option<(String, SignatureFile)>, LoadError> {
    let sig = swapkit_trust::signature_path(path);
    let bytes = match crate::files::read_capped(&sig, nofollow, swapkit_trust::MAX_TEXT as u64) {
        Ok(bytes) => bytes,
        Err(LoadError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let untrusted = |source| LoadError::Untrusted {
        path: path.into(),
        source,
    };
    let text = String::from_utf8(bytes).map_err(|_| {
        untrusted(swapkit_trust::TrustError::Malformed {
            what: "signature file",
            reason: format!("{} is not UTF-8 text", sig.display()),
        })
    })?;
    let parsed = SignatureFile::parse(&text).map_err(untrusted)?;
    Ok(Some((text, parsed)))
}
