//! The on-disk compile cache: compiled modules keyed by content and engine, checked by a
//! checksum before wasmtime reads them.

use std::path::Path;
use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};
use wasmtime::Module;

use super::WasmLoader;
use crate::error::LoadError;

impl WasmLoader {
    /// The compiled module: from the cache when a valid entry exists, else compiled (and
    /// cached).
    pub(super) fn module(
        &self,
        path: &Path,
        bytes: &[u8],
        hash: &[u8; 32],
    ) -> Result<Module, LoadError> {
        let entry = self.cache.as_ref().map(|dir| {
            let hex = crate::backend::hex(&hash[..16]);
            dir.join(format!("{hex}-{:016x}.cwasm", self.compat))
        });
        if let Some(entry) = &entry {
            match self.read_cached(entry) {
                Ok(Some(module)) => return Ok(module),
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(entry = %entry.display(), %reason, "ignoring a bad wasm cache entry; recompiling");
                }
            }
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::WasmCompile {
                path: path.into(),
                source: "the file does not start with the wasm magic number `\\0asm`".into(),
            });
        }
        let _span = tracing::debug_span!("compile", path = %path.display()).entered();
        let module = Module::from_binary(&self.shared.engine, bytes).map_err(|e| {
            LoadError::WasmCompile {
                path: path.into(),
                source: format!("{e:#}").into(),
            }
        })?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        if let Some(entry) = &entry {
            if let Err(e) = write_cached(entry, &module) {
                tracing::warn!(entry = %entry.display(), error = %e, "could not write the wasm compile cache");
            }
        }
        Ok(module)
    }

    /// A cached module, `None` when there is no entry, or why the entry is unusable.
    fn read_cached(&self, entry: &Path) -> Result<Option<Module>, String> {
        let data = match std::fs::read(entry) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let payload = data
            .strip_prefix(CACHE_MAGIC)
            .filter(|rest| rest.len() >= 32)
            .ok_or("not a swapkit cache entry")?;
        let (sum, compiled) = payload.split_at(32);
        if Sha256::digest(compiled).as_slice() != sum {
            return Err("checksum mismatch".into());
        }
        // SAFETY: the bytes are exactly what `Module::serialize` wrote for this engine
        // configuration (the key holds the compatibility hash, and the checksum proves the
        // entry is intact), and wasmtime checks its own header and version as well.
        unsafe { Module::deserialize(&self.shared.engine, compiled) }
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

const CACHE_MAGIC: &[u8] = b"SWKCWASM";

/// Writes a cache entry atomically: a temporary file renamed into place.
fn write_cached(entry: &Path, module: &Module) -> std::io::Result<()> {
    let compiled = module.serialize().map_err(std::io::Error::other)?;
    let dir = entry.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    use std::io::Write;
    tmp.write_all(CACHE_MAGIC)?;
    tmp.write_all(&Sha256::digest(&compiled))?;
    tmp.write_all(&compiled)?;
    tmp.persist(entry).map_err(|e| e.error)?;
    Ok(())
}
