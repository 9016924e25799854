//! Backends: how a plugin's code gets into the process. Both backends here end in the same
//! place, a `'static` [`PluginHeader`], and from there every plugin goes through one code path
//! ([`Code`] and [`Instance`]), so the runtime above never knows which backend is in use.
//!
//! This module and its children hold all of swapkit's `unsafe`: the checks that make a header
//! trustworthy, and the calls across the ABI.

pub(crate) mod native;
pub(crate) mod statics;
pub(crate) mod wasm;

use std::ffi::c_void;
use std::ptr::addr_of;
use std::sync::Arc;

use swapkit_abi::{
    wire, Fingerprint, HostApi, LiveData, Manifest, PluginHeader, RawSlice, Status, ABI_VERSION,
    FLAG_PANIC_UNWIND, LIFECYCLE_INTERFACE, MAGIC, METHOD_MIGRATE, METHOD_SAVE,
};

use swapkit_sync::HazardCell;

use crate::error::LoadError;
use crate::log::{host_log, GuestCtx, LogSink};
use crate::services::host_service;
use crate::Vault;

/// Which backend a plugin came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// A `cdylib` loaded with the dynamic loader.
    Native,
    /// A crate linked into the host.
    Static,
    /// A `wasm32-unknown-unknown` module run by wasmtime.
    Wasm,
}

/// Reply codes the host makes up for failures no guest reported: they lie outside the ABI's
/// [`Status`] range, so they never collide with a guest's.
pub(crate) mod host_status {
    /// The wasm instance trapped.
    pub const TRAP: u32 = 0x1_0000;
    /// The call ran out of CPU time.
    pub const TIMEOUT: u32 = 0x1_0001;
    /// The instance hit its memory or table cap.
    pub const MEMORY: u32 = 0x1_0002;
    /// Every wasm instance of the pool was busy.
    pub const EXHAUSTED: u32 = 0x1_0003;
    /// The call was made while this thread was decoding an earlier result of the same native
    /// plugin, whose result buffer it would overwrite.
    pub const REENTRANT: u32 = 0x1_0004;
}

thread_local! {
    /// The native plugin whose result this thread is decoding, if any: its per-thread result
    /// buffer must not be written until the decoding ends.
    static READING: std::cell::Cell<*const PluginHeader> = const { std::cell::Cell::new(std::ptr::null()) };
}

/// Puts back the plugin whose result was being decoded before, even if decoding panics.
struct DoneReading(*const PluginHeader);

impl Drop for DoneReading {
    #[inline(always)]
    fn drop(&mut self) {
        let _ = READING.try_with(|r| r.set(self.0));
    }
}

/// Where a plugin's entry points are.
#[derive(Debug)]
pub(crate) enum Entry {
    /// A header in a native or static library mapped for the rest of the process.
    Native(&'static PluginHeader),
    /// A compiled wasm module.
    Wasm(Arc<wasm::WasmModule>),
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Native => "native",
            BackendKind::Static => "static",
            BackendKind::Wasm => "wasm",
        })
    }
}

/// A plugin's code, checked and described: its entry table and manifest.
#[derive(Debug)]
pub(crate) struct Code {
    pub entry: Entry,
    pub manifest: Manifest,
    pub backend: BackendKind,
    /// SHA-256 of the artifact; for a static plugin, of its crate name and version.
    pub content_hash: [u8; 32],
    /// The artifact's path, or `static:<crate>`.
    pub origin: String,
    pub name: Arc<str>,
    pub version: Arc<str>,
}

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
            return Err(LoadError::Manifest { origin, reason });
        }
        let manifest: Manifest = wire::from_bytes(bytes).map_err(|e| LoadError::Manifest {
            origin: origin.clone(),
            reason: e.to_string(),
        })?;
        if manifest.name.is_empty() || manifest.abi_version != ABI_VERSION {
            let reason = format!(
                "name `{}`, ABI version {}",
                manifest.name, manifest.abi_version
            );
            return Err(LoadError::Manifest { origin, reason });
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

/// Lower-case hex of `bytes`: content hashes in status reports, file names and logs.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A live plugin instance: the guest object made by `on_load`, freed by `on_free` on drop.
pub(crate) struct Instance {
    pub code: Arc<Code>,
    /// The plugin declares dependencies, so a call into it records its generation for the
    /// dependency calls it makes (see `services.rs`).
    pub scoped: bool,
    /// What calls into it did.
    pub stats: crate::stats::Stats,
    imp: Imp,
}

enum Imp {
    Native {
        header: &'static PluginHeader,
        handle: *mut c_void,
        /// The context behind the host table the guest copied. The guest may keep the table
        /// past `free` (a thread it left running), so the table points at this cell, which is
        /// leaked (a few dozen bytes per native load, beside a code mapping that is never
        /// unmapped either); the context in it is taken out after `free`, and freed once no
        /// host function is inside it. Host functions called later find it empty.
        ctx: &'static HazardCell<GuestCtx>,
    },
    Wasm(Box<wasm::WasmInstance>),
}

// SAFETY: a native guest instance is `Send + Sync` (the `Plugin` trait requires it); the
// handle is only an address, and the host only passes it back to the same plugin's entry
// points. A wasm instance's stores are each used by one thread at a time.
unsafe impl Send for Instance {}
// SAFETY: as above.
unsafe impl Sync for Instance {}

/// What a guest entry point reported.
pub(crate) struct Reply<'a> {
    pub status: u32,
    /// Valid until the next call into this plugin on this thread.
    pub bytes: &'a [u8],
}

impl Reply<'_> {
    fn message(&self) -> String {
        String::from_utf8_lossy(self.bytes).into_owned()
    }
}

impl Instance {
    /// Runs `on_load`, making a new instance of `code`.
    pub fn load(
        code: Arc<Code>,
        sink: Option<LogSink>,
        vault: Vault,
    ) -> Result<Instance, LoadError> {
        let ctx = GuestCtx::new(&code, sink, vault);
        let _span =
            tracing::debug_span!("on_load", plugin = %code.name, version = %code.version).entered();
        let header = match &code.entry {
            Entry::Native(header) => *header,
            Entry::Wasm(module) => {
                let instance = wasm::WasmInstance::load(module.clone(), Arc::new(ctx))
                    .map_err(|(status, message)| hook_error(&code, "on_load", status, message))?;
                return Ok(Instance {
                    scoped: !code.manifest.dependencies.is_empty(),
                    stats: Default::default(),
                    code,
                    imp: Imp::Wasm(Box::new(instance)),
                });
            }
        };
        let ctx: &'static HazardCell<GuestCtx> =
            Box::leak(Box::new(HazardCell::new(Arc::new(ctx))));
        let api = HostApi {
            size: std::mem::size_of::<HostApi>(),
            ctx: std::ptr::from_ref(ctx).cast(),
            log: host_log,
            service: host_service,
        };
        let mut handle: *mut c_void = std::ptr::null_mut();
        let mut out = RawSlice::EMPTY;
        // SAFETY: `load` is a checked v1 entry point; `api` is valid for the call and its
        // context outlives the instance (it is owned by the Instance built below).
        let status = unsafe { (header.entry.load)(&api, &mut handle, &mut out) };
        let reply = Reply {
            status,
            // SAFETY: the out buffer is valid until the next call on this thread.
            bytes: unsafe { out.as_slice() },
        };
        if let Err(e) = hook_result(&code, "on_load", &reply) {
            // A failed load may still have handed its table to a thread.
            drop(ctx.swap(None));
            return Err(e);
        }
        if handle.is_null() {
            drop(ctx.swap(None));
            let message = "returned success without an instance".to_owned();
            return Err(LoadError::Hook {
                plugin: code.name.to_string(),
                version: code.version.to_string(),
                hook: "on_load",
                message,
            });
        }
        Ok(Instance {
            scoped: !code.manifest.dependencies.is_empty(),
            stats: Default::default(),
            code,
            imp: Imp::Native {
                header,
                handle,
                ctx,
            },
        })
    }

    /// Runs `on_init`.
    pub fn init(&self) -> Result<(), LoadError> {
        let _span =
            tracing::debug_span!("on_init", plugin = %self.code.name, version = %self.code.version)
                .entered();
        match &self.imp {
            Imp::Native { header, handle, .. } => {
                let mut out = RawSlice::EMPTY;
                // SAFETY: `handle` is a live instance of this plugin; `out` is writable.
                let status = unsafe { (header.entry.init)(*handle, &mut out) };
                let reply = Reply {
                    status,
                    // SAFETY: the out buffer is valid until the next call on this thread.
                    bytes: unsafe { out.as_slice() },
                };
                hook_result(&self.code, "on_init", &reply)
            }
            Imp::Wasm(instance) => instance
                .init()
                .map_err(|(status, message)| hook_error(&self.code, "on_init", status, message)),
        }
    }

    /// Runs the `save` hook: the live data this instance hands to its successor.
    pub fn save(&self) -> Result<Option<LiveData>, LoadError> {
        let _span =
            tracing::debug_span!("save", plugin = %self.code.name, version = %self.code.version)
                .entered();
        self.call(LIFECYCLE_INTERFACE, METHOD_SAVE, &[], |reply| {
            if reply.status != Status::Ok as u32 {
                return Err(hook_error(
                    &self.code,
                    "save",
                    reply.status,
                    reply.message(),
                ));
            }
            wire::from_bytes(reply.bytes).map_err(|e| {
                let message = format!("the saved state did not decode: {e}");
                hook_error(&self.code, "save", Status::HookFailed as u32, message)
            })
        })
    }

    /// Runs the `migrate` hook with the live data of the predecessor.
    pub fn migrate(&self, from: &LiveData) -> Result<(), LoadError> {
        let _span = tracing::info_span!("migrate", plugin = %self.code.name, version = %self.code.version, from_schema = from.schema).entered();
        let input = wire::to_vec(from).map_err(|e| {
            let message = format!("the saved state did not encode: {e}");
            hook_error(&self.code, "migrate", Status::HookFailed as u32, message)
        })?;
        self.call(LIFECYCLE_INTERFACE, METHOD_MIGRATE, &input, |reply| {
            hook_result(&self.code, "migrate", &reply)
        })
    }

    /// Calls method `method` of exported interface `interface` with encoded arguments, and
    /// hands the reply to `then` while its bytes are valid. A host-side failure (a wasm trap,
    /// a timeout) arrives as a reply with a [`host_status`] code and a message.
    #[inline]
    pub fn call<T>(
        &self,
        interface: u32,
        method: u32,
        input: &[u8],
        then: impl FnOnce(Reply<'_>) -> T,
    ) -> T {
        match &self.imp {
            Imp::Native { header, handle, .. } => {
                let me: *const PluginHeader = *header;
                let outer = READING.try_with(|r| r.get()).unwrap_or(std::ptr::null());
                if std::ptr::eq(outer, me) {
                    return reentrant(then);
                }
                let mut out = RawSlice::EMPTY;
                // SAFETY: `handle` is a live instance (the Instance is alive, so `free` has
                // not run); `input` is valid for the call; `out` is writable.
                let status = unsafe {
                    (header.entry.call)(
                        *handle,
                        interface,
                        method,
                        input.as_ptr(),
                        input.len(),
                        &mut out,
                    )
                };
                let _ = READING.try_with(|r| r.set(me));
                let _done = DoneReading(outer);
                then(Reply {
                    status,
                    // SAFETY: the guest's out buffer stays valid until its next call on this
                    // thread; `then` runs before any other call to this plugin on this thread,
                    // since `READING` refuses those until it returns.
                    bytes: unsafe { out.as_slice() },
                })
            }
            Imp::Wasm(instance) => instance.call(interface, method, input, then),
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _span =
            tracing::debug_span!("on_free", plugin = %self.code.name, version = %self.code.version)
                .entered();
        let Imp::Native {
            header,
            handle,
            ctx,
        } = &self.imp
        else {
            // A wasm instance frees each of its pool's instances, then their stores.
            return;
        };
        let mut out = RawSlice::EMPTY;
        // SAFETY: this is the one and only `free` of a live instance; no call is in flight,
        // because every caller holds the Instance alive for the length of its call.
        let status = unsafe { (header.entry.free)(*handle, &mut out) };
        // The guest's host table may outlive the instance (a thread the plugin left running):
        // retire its context now that `free` has returned, whatever it returned.
        drop(ctx.swap(None));
        if status != Status::Ok as u32 {
            // SAFETY: the out buffer is valid until the next call on this thread.
            let message = String::from_utf8_lossy(unsafe { out.as_slice() }).into_owned();
            tracing::error!(plugin = %self.code.name, version = %self.code.version, status, %message, "on_free failed");
        }
    }
}

/// The reply of a call refused because this thread is decoding a result of the same plugin.
#[cold]
#[inline(never)]
fn reentrant<T>(then: impl FnOnce(Reply<'_>) -> T) -> T {
    then(Reply {
        status: host_status::REENTRANT,
        bytes: b"reentrant",
    })
}

#[cold]
fn hook_error(code: &Code, hook: &'static str, status: u32, message: String) -> LoadError {
    let (plugin, version) = (code.name.to_string(), code.version.to_string());
    match status {
        s if s == Status::Panic as u32 => LoadError::HookPanic {
            plugin,
            version,
            hook,
            message,
        },
        host_status::TRAP | host_status::TIMEOUT | host_status::MEMORY => LoadError::Hook {
            plugin,
            version,
            hook,
            message: format!("trapped: {message}"),
        },
        _ => LoadError::Hook {
            plugin,
            version,
            hook,
            message,
        },
    }
}

fn hook_result(code: &Code, hook: &'static str, reply: &Reply<'_>) -> Result<(), LoadError> {
    if reply.status == Status::Ok as u32 {
        Ok(())
    } else {
        Err(hook_error(code, hook, reply.status, reply.message()))
    }
}
