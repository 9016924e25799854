//! Checking a plugin header before anything in it is trusted: magic, ABI version, build
//! fingerprint and panic strategy are read as plain data, and only then is the manifest
//! entry point called. Native and static plugins both come through here.

use std::mem::{offset_of, size_of};
use std::ptr::addr_of;

use swapkit_abi::lane::{HeaderExt, LaneEntry};
use swapkit_abi::{
    ExtendedHeader, Fingerprint, Manifest, PluginHeader, RawSlice, Status, ABI_VERSION,
    FLAG_EXTENDED, FLAG_PANIC_UNWIND, MAGIC,
};

use super::{BackendKind, Code, Entry, LaneTable};
use crate::error::LoadError;

/// More lanes than this in one header is a corrupt table, not a plugin.
const MAX_LANES: usize = 1 << 16;

impl Code {
    /// Checks `header` and reads the manifest and the lane table.
    ///
    /// # Safety
    /// `header` must point to readable memory at least as large as the frozen header prefix,
    /// which stays mapped for the rest of the process; if the prefix matches this ABI, the
    /// whole header must be a valid [`PluginHeader`] whose entry points follow ABI v1, and, if
    /// it sets [`FLAG_EXTENDED`] and `room` (the bytes readable at `header`, where known)
    /// allows, an [`ExtendedHeader`] whose lanes follow the lane rules of its ABI crate.
    pub unsafe fn from_header(
        header: *const PluginHeader,
        room: Option<usize>,
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
        if bytes.len() > super::MAX_MANIFEST {
            return Err(LoadError::Manifest {
                origin,
                source: format!(
                    "the manifest has {} bytes, more than the {} a manifest may have",
                    bytes.len(),
                    super::MAX_MANIFEST
                )
                .into(),
            });
        }
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
        if let Some(reason) = super::manifest_problem(&manifest) {
            return Err(LoadError::Manifest {
                origin,
                source: reason.into(),
            });
        }
        // SAFETY: forwarded from the caller; the prefix checks passed.
        let lanes = unsafe { lanes(header, flags, room, &origin)? };
        let lanes: std::collections::HashMap<u64, *const ()> = lanes
            .iter()
            .filter(|l| !l.entry.is_null())
            .map(|l| (l.hash, l.entry))
            .rev() // the first entry of a hash wins, as a search from the front found it
            .collect();
        let lanes = LaneTable::build(&manifest, |hash| lanes.get(&hash).copied());
        let name = manifest.name.as_str().into();
        let version = manifest.version.as_str().into();
        Ok(Code {
            lanes,
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

/// The native lanes a checked header lists: none without [`FLAG_EXTENDED`], or with an
/// extension too short to hold them (an older minor version).
///
/// # Safety
/// As for [`Code::from_header`], after its prefix checks passed.
unsafe fn lanes(
    header: *const PluginHeader,
    flags: u32,
    room: Option<usize>,
    origin: &str,
) -> Result<&'static [LaneEntry], LoadError> {
    if flags & FLAG_EXTENDED == 0 {
        return Ok(&[]);
    }
    let bad = |reason: String| LoadError::Manifest {
        origin: origin.to_owned(),
        source: format!("{reason}; rebuild the plugin with export_plugin!").into(),
    };
    let at = offset_of!(ExtendedHeader, ext);
    let fits = |bytes: usize| room.is_none_or(|room| room >= at + bytes);
    if !fits(size_of::<usize>()) {
        return Err(bad(format!(
            "its header sets the extension flag but holds only {} bytes",
            room.unwrap_or_default()
        )));
    }
    let ext = header.cast::<ExtendedHeader>();
    // SAFETY: the extension's size field is readable (checked against `room` where known,
    // else by the caller's contract); plain integers are read through raw pointers.
    let size = unsafe { addr_of!((*ext).ext.size).read_unaligned() };
    if !fits(size) {
        return Err(bad(format!(
            "its header extension claims {size} bytes, past the end of its symbol"
        )));
    }
    if size < size_of::<HeaderExt>() {
        return Ok(&[]);
    }
    // SAFETY: the whole extension this host knows is within its claimed size.
    let (ptr, count) = unsafe {
        (
            addr_of!((*ext).ext.lanes).read_unaligned(),
            addr_of!((*ext).ext.lane_count).read_unaligned(),
        )
    };
    if count == 0 {
        return Ok(&[]);
    }
    if count > MAX_LANES || ptr.is_null() || !ptr.is_aligned() {
        return Err(bad(format!(
            "its lane table is corrupt ({count} entries at {ptr:p})"
        )));
    }
    // SAFETY: a header built by swapkit-guest points at a static table of `count` entries,
    // mapped for the rest of the process.
    Ok(unsafe { std::slice::from_raw_parts(ptr, count) })
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
