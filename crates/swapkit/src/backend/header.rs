//! Checking a plugin header before anything in it is trusted: magic, ABI version, build
//! fingerprint and panic strategy are read as plain data, and only then is the manifest
//! entry point called. Native and static plugins both come through here.

use std::ptr::addr_of;

use swapkit_abi::{
    Fingerprint, Manifest, PluginHeader, RawSlice, Status, ABI_VERSION, FLAG_PANIC_UNWIND, MAGIC,
};

use super::{BackendKind, Code, Entry};
use crate::error::LoadError;

impl Code {
    /// Checks `header` and reads the manifest.
    ///
    /// # Safety
    /// `header` must point to readable memory at least as large as the frozen header prefix,
    /// which stays mapped for the rest of the process; if the prefix matches this ABI, the
    /// whole header must be a valid [`PluginHeader`] whose entry points follow ABI v1.
    pub unsafe fn from_header(
        header: *const PluginHeader,
        backend: BackendKind,
        content_hash: [u8; 32],
        origin: String,
    ) -> Result<Code, LoadError> {
        // SAFETY: the caller guarantees the prefix is readable; only plain data (byte arrays,
        // integers) is read through raw pointers, and no reference to the whole header, with
        // its function pointers, is made before the prefix checks pass.
        let (magic, abi_version, flags, fingerprint) = unsafe {
            (
                addr_of!((*header).magic).read_unaligned(),
                addr_of!((*header).abi_version).read_unaligned(),
                addr_of!((*header).flags).read_unaligned(),
                addr_of!((*header).fingerprint).read_unaligned(),
            )
        };
        check_prefix(magic, abi_version, flags, &fingerprint, &origin)?;
        // SAFETY: the prefix says ABI v1 from our toolchain, so by the caller's contract the
        // header is a valid v1 header that lives for the rest of the process.
        let header: &'static PluginHeader = unsafe { &*header };
        let mut out = RawSlice::EMPTY;
        // SAFETY: `manifest` is a v1 entry point; `out` is writable.
        let status = unsafe { (header.entry.manifest)(&mut out) };
        // SAFETY: the guest's out buffer is valid until its next call on this thread.
        let bytes = unsafe { out.as_slice() };
        if status != Status::Ok as u32 {
            let reason = format!(
                "manifest entry returned status {status}: {}",
                String::from_utf8_lossy(bytes)
            );
            return Err(LoadError::Manifest {
                origin,
                source: reason.into(),
            });
        }
        let manifest = Manifest::decode(bytes).map_err(|e| LoadError::Manifest {
            origin: origin.clone(),
            source: e.into(),
        })?;
        if manifest.name.is_empty() || manifest.abi_version != ABI_VERSION {
            let reason = format!(
                "name `{}`, ABI version {}",
                manifest.name, manifest.abi_version
            );
            return Err(LoadError::Manifest {
                origin,
                source: reason.into(),
            });
        }
        let name = manifest.name.as_str().into();
        let version = manifest.version.as_str().into();
        Ok(Code {
            entry: Entry::Native(header),
            manifest,
            backend,
            content_hash,
            origin,
            name,
            version,
        })
    }
}

/// The checks of a header's frozen prefix, done before anything else in it is trusted: the
/// same whether the prefix was read from a mapped library or from the file's bytes.
pub(crate) fn check_prefix(
    magic: [u8; 8],
    abi_version: u32,
    flags: u32,
    fingerprint: &Fingerprint,
    origin: &str,
) -> Result<(), LoadError> {
    let origin = origin.to_owned();
    if magic != MAGIC {
        return Err(LoadError::BadMagic { origin });
    }
    if abi_version != ABI_VERSION {
        return Err(LoadError::AbiVersion {
            origin,
            found: abi_version,
            expected: ABI_VERSION,
        });
    }
    if let Some((field, found, expected)) = fingerprint.mismatch(&Fingerprint::CURRENT) {
        return Err(LoadError::Fingerprint {
            field,
            found: found.into(),
            expected: expected.into(),
            origin,
        });
    }
    if flags & FLAG_PANIC_UNWIND == 0 {
        return Err(LoadError::PanicAbort { origin });
    }
    Ok(())
}
