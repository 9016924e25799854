//! Loading native artifacts: hashing, the private copy, and `dlopen`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use object::{Object, ObjectSymbol};

use swapkit_abi::{PluginHeader, HEADER_SYMBOL_PREFIX};

use super::copy::{Copy, Scratch};
use crate::backend::{BackendKind, Code};
use crate::error::LoadError;

/// The file extension of native artifacts on this platform.
pub(crate) const EXTENSION: &str = std::env::consts::DLL_EXTENSION;

/// Loads native artifacts, keeping one mapping per distinct content.
pub(crate) struct NativeLoader {
    scratch: Scratch,
    /// Content hash to checked code. Entries are never removed: the mappings they describe are
    /// never unmapped.
    loaded: Mutex<HashMap<[u8; 32], Arc<Code>>>,
}

impl NativeLoader {
    /// A loader whose private copies are sealed memory files, or files in a private
    /// directory under `scratch_parent` where the kernel has none or `files` asks for them.
    pub fn new(scratch_parent: Option<&Path>, files: bool) -> std::io::Result<NativeLoader> {
        let scratch = if files {
            Scratch::dir(scratch_parent)?
        } else {
            Scratch::new(scratch_parent)?
        };
        Ok(NativeLoader {
            scratch,
            loaded: Mutex::new(HashMap::new()),
        })
    }

    /// Unless the same content (`hash`) is already loaded, loads the artifact read from
    /// `path`.
    pub fn load(
        &self,
        path: &Path,
        bytes: Vec<u8>,
        hash: [u8; 32],
    ) -> Result<Arc<Code>, LoadError> {
        if let Some(code) = self.loaded(&hash) {
            return Ok(code);
        }
        self.load_staged(path, self.stage(path, &bytes), hash)
    }

    /// The code of content `hash`, if it is loaded.
    pub fn loaded(&self, hash: &[u8; 32]) -> Option<Arc<Code>> {
        crate::lock::lock(&self.loaded).get(hash).cloned()
    }

    /// Checks the bytes of an artifact read from `path` for a header symbol and writes their
    /// private copy, without mapping it: what can run beside hashing the same bytes (the two
    /// together are most of a cold reload).
    pub fn stage(&self, path: &Path, bytes: &[u8]) -> Result<Staged, LoadError> {
        let (symbol, room) = header_symbol(path, bytes)?;
        let stem = match claims_in_file(bytes, &symbol) {
            Ok(claims) => format!("{}-{}", claims.name, claims.version),
            Err(_) => path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("plugin")
                .to_owned(),
        };
        let copy = self
            .scratch
            .write(&stem, bytes)
            .map_err(|source| LoadError::Scratch {
                path: path.into(),
                scratch: self.scratch.describe(),
                source,
            })?;
        Ok(Staged { copy, symbol, room })
    }

    /// Maps what [`stage`](Self::stage) made of content `hash`, unless that content is
    /// loaded already (then the copy is dropped unmapped).
    pub fn load_staged(
        &self,
        path: &Path,
        staged: Result<Staged, LoadError>,
        hash: [u8; 32],
    ) -> Result<Arc<Code>, LoadError> {
        if let Some(code) = self.loaded(&hash) {
            return Ok(code);
        }
        let staged = staged?;
        let code = Arc::new(open(
            path,
            staged.copy,
            (&staged.symbol, staged.room),
            hash,
        )?);
        let mut loaded = crate::lock::lock(&self.loaded);
        Ok(loaded.entry(hash).or_insert(code).clone())
    }
}

/// An artifact's private copy, written and not mapped, and its header symbol.
pub(crate) struct Staged {
    copy: Copy,
    symbol: String,
    room: Option<usize>,
}

/// Finds the one exported symbol that holds a plugin header, without running any code: its
/// name, and its size where the symbol table gives one.
fn header_symbol(path: &Path, bytes: &[u8]) -> Result<(String, Option<usize>), LoadError> {
    let not_a_library = |source: crate::error::BoxError| LoadError::NotALibrary {
        path: path.into(),
        source,
    };
    let file = object::File::parse(bytes).map_err(|e| not_a_library(e.into()))?;
    if file.kind() != object::ObjectKind::Dynamic {
        return Err(not_a_library(
            format!("it is a {:?} object, not a shared library", file.kind()).into(),
        ));
    }
    let prefix = HEADER_SYMBOL_PREFIX.trim_start_matches('_');
    let mut names = vec![];
    let mut sizes = HashMap::new();
    for sym in file.dynamic_symbols().filter(|s| s.is_definition()) {
        let Ok(name) = sym.name() else { continue };
        let name = name.trim_start_matches('_');
        if !name.starts_with(prefix) {
            continue;
        }
        // The header is read before any check can run, so a symbol too small to hold its
        // frozen prefix is refused here rather than read past its end.
        if sym.size() != 0 && (sym.size() as usize) < std::mem::size_of::<PluginHeader>() {
            let reason = format!(
                "symbol `{name}` is {} bytes, too small for a plugin header",
                sym.size()
            );
            return Err(not_a_library(reason.into()));
        }
        if sym.size() != 0 {
            sizes.insert(name.to_owned(), sym.size() as usize);
        }
        names.push(name.to_owned());
    }
    if let Ok(exports) = file.exports() {
        names.extend(
            exports
                .iter()
                .filter_map(|e| std::str::from_utf8(e.name()).ok())
                .map(|n| n.trim_start_matches('_').to_owned())
                .filter(|n| n.starts_with(prefix)),
        );
    }
    names.sort();
    names.dedup();
    match names.len() {
        0 => Err(LoadError::NoEntrySymbol {
            path: path.into(),
            prefix: HEADER_SYMBOL_PREFIX,
        }),
        1 => {
            let name = names.pop().expect("one name");
            let size = sizes.get(&name).copied();
            Ok((name, size))
        }
        _ => Err(LoadError::ManyEntrySymbols {
            path: path.into(),
            symbols: names.join(", "),
        }),
    }
}

/// A native artifact's header as its bytes hold it: the symbol, checked like a loaded one.
pub(crate) struct FileHeader {
    pub symbol: String,
    pub abi_version: u32,
    pub fingerprint: swapkit_abi::Fingerprint,
}

/// Finds and checks the plugin header in a native library's bytes, without mapping it: the
/// symbol's address is translated to a file offset through the section that holds it, and the
/// header's frozen prefix (plain data, never relocated) is read from there and checked as a
/// load checks it. No code of the library runs.
pub(crate) fn header_in_file(path: &Path, bytes: &[u8]) -> Result<FileHeader, LoadError> {
    use std::mem::{offset_of, size_of};
    let (symbol, _) = header_symbol(path, bytes)?;
    let header = symbol_bytes(bytes, &symbol, size_of::<PluginHeader>()).map_err(|why| {
        LoadError::NotALibrary {
            path: path.into(),
            source: format!("its header symbol `{symbol}` {why}").into(),
        }
    })?;
    let field = |offset: usize, n: usize| &header[offset..offset + n];
    let u32_at = |offset: usize| u32::from_ne_bytes(field(offset, 4).try_into().unwrap());
    let magic: [u8; 8] = field(offset_of!(PluginHeader, magic), 8)
        .try_into()
        .unwrap();
    let abi_version = u32_at(offset_of!(PluginHeader, abi_version));
    let flags = u32_at(offset_of!(PluginHeader, flags));
    let raw = field(
        offset_of!(PluginHeader, fingerprint),
        size_of::<swapkit_abi::Fingerprint>(),
    );
    // SAFETY: `Fingerprint` is `repr(C)` byte arrays, for which every bit pattern is valid,
    // and `raw` holds exactly its size.
    let fingerprint =
        unsafe { std::ptr::read_unaligned(raw.as_ptr().cast::<swapkit_abi::Fingerprint>()) };
    crate::backend::header::check_prefix(
        magic,
        abi_version,
        flags,
        &fingerprint,
        &path.display().to_string(),
    )?;
    Ok(FileHeader {
        symbol,
        abi_version,
        fingerprint,
    })
}

/// The `len` bytes the defined symbol `name` names in a native library's file (data that is
/// never relocated), found through the section that holds it; else why not.
fn symbol_bytes<'a>(bytes: &'a [u8], name: &str, len: usize) -> Result<&'a [u8], String> {
    use object::ObjectSection;
    let file = object::File::parse(bytes).map_err(|e| format!("cannot be read: {e}"))?;
    let sym = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.is_definition() && s.name().map(|n| n.trim_start_matches('_')) == Ok(name))
        .ok_or("is not defined")?;
    if sym.size() != 0 && (sym.size() as usize) < len {
        return Err(format!("is {} bytes, not {len}", sym.size()));
    }
    let section = sym
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
        .ok_or("lies in no section")?;
    let (start, size) = section
        .file_range()
        .ok_or("lies in a section with no bytes in the file")?;
    let within = sym.address().wrapping_sub(section.address());
    let at = start.checked_add(within).filter(|_| within < size);
    at.and_then(|at| bytes.get(at as usize..(at as usize).checked_add(len)?))
        .ok_or_else(|| "lies past the end of the file".into())
}

/// The claims (`swapkit_abi::claims`) of a native library whose header symbol is `header`,
/// read from its bytes.
pub(crate) fn claims_in_file<'a>(
    bytes: &'a [u8],
    header: &str,
) -> Result<swapkit_abi::claims::Claims<'a>, String> {
    use swapkit_abi::claims::{decode, CLAIMS_LEN, CLAIMS_SYMBOL_PREFIX};
    let crate_name = header
        .trim_start_matches(HEADER_SYMBOL_PREFIX.trim_start_matches('_'))
        .to_owned();
    let symbol = format!("{CLAIMS_SYMBOL_PREFIX}{crate_name}");
    let found = symbol_bytes(bytes, &symbol, CLAIMS_LEN).map_err(|why| {
        format!(
            "its claims symbol `{symbol}` {why} (a plugin built with an export_plugin! older \
             than the claims has none: rebuild it)"
        )
    })?;
    decode(found).map_err(|e| format!("its claims symbol `{symbol}`: {e}"))
}

/// Opens the private copy and checks its header.
fn open(
    original: &Path,
    copy: Copy,
    (symbol, room): (&str, Option<usize>),
    hash: [u8; 32],
) -> Result<Code, LoadError> {
    let not_a_library = |source: crate::error::BoxError| LoadError::NotALibrary {
        path: original.into(),
        source,
    };
    // SAFETY: loading a library runs its initialisers. swapkit plugins are trusted code (the
    // native backend is for trusted code only, as documented); a library that is not a
    // plugin was already rejected above by its symbol table.
    let library = unsafe { open_library(copy.path()) }.map_err(|e| not_a_library(e.into()))?;
    // Once the dynamic loader knows the copy's path, that path names this library for good.
    copy.keep();
    let mut name = symbol.as_bytes().to_vec();
    name.push(0);
    // SAFETY: the symbol is a data symbol; we only take its address here.
    let header: *const PluginHeader = match unsafe { library.get::<*const PluginHeader>(&name) } {
        Ok(sym) => *sym,
        Err(_) => {
            return Err(LoadError::NoEntrySymbol {
                path: original.into(),
                prefix: HEADER_SYMBOL_PREFIX,
            })
        }
    };
    // Never unloaded: see the module docs. Forgetting the handle keeps the mapping, and so the
    // header, alive for the rest of the process.
    std::mem::forget(library);
    // SAFETY: the header symbol lives in a mapping that is never unmapped, is at least as
    // large as the frozen prefix (the symbol table says it is a swapkit header, and the
    // prefix is checked before anything else is read), and was built by swapkit-guest.
    unsafe {
        Code::from_header(
            header,
            room,
            BackendKind::Native,
            hash,
            original.display().to_string(),
        )
    }
}

/// Maps the library at `path` and runs its initialisers.
///
/// # Safety
///
/// Loading a library runs its constructors, which can do anything: `path` must be a library
/// the operator meant to load (native plugins are trusted code), and nothing may replace the
/// file between the checks made on it and this call.
#[cfg(unix)]
unsafe fn open_library(path: &Path) -> Result<libloading::Library, libloading::Error> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // RTLD_LOCAL keeps each plugin's symbols to itself, so two versions never interpose;
    // RTLD_NOW surfaces missing symbols here rather than at the first call.
    // SAFETY: forwarded to the caller.
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL).map(Into::into) }
}

/// Maps the library at `path` and runs its initialisers.
///
/// # Safety
///
/// As for the unix version.
#[cfg(not(unix))]
unsafe fn open_library(path: &Path) -> Result<libloading::Library, libloading::Error> {
    // SAFETY: forwarded to the caller.
    unsafe { libloading::Library::new(path) }
}
