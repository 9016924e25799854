//! The plugin header: the one symbol a native or static plugin exports.
//!
//! The header starts with a prefix whose layout is frozen for every ABI version (magic, ABI
//! version, flags, fingerprint), so a host can reject a plugin from another ABI or another
//! toolchain by reading plain data, before it calls a single function in it. Only once the
//! prefix matches does the host read the entry table that follows.

use core::ffi::c_void;

use crate::fingerprint::Fingerprint;

/// The first 8 bytes of every plugin header.
pub const MAGIC: [u8; 8] = *b"SWAPKIT\0";

/// The ABI version this crate speaks. A plugin whose header carries another version is refused.
pub const ABI_VERSION: u32 = 1;

/// Prefix of the exported symbol that holds a plugin's [`PluginHeader`]. The rest of the name
/// is the plugin crate's name, which keeps the symbols of two plugins linked into one static
/// host from colliding.
pub const HEADER_SYMBOL_PREFIX: &str = "swapkit_plugin__";

/// The `interface` number of `call` that addresses the plugin's exported patches instead of
/// an interface; `method` is then the patch's position in the manifest's `patches` list.
pub const PATCH_INTERFACE: u32 = u32::MAX;

/// The `interface` number of `call` that addresses the plugin's live functions and live-type
/// factories; `method` is the position in the manifest's `live` list.
pub const LIVE_INTERFACE: u32 = u32::MAX - 1;

/// The `interface` number of `call` that addresses the live-data hooks: [`METHOD_SAVE`] and
/// [`METHOD_MIGRATE`].
pub const LIFECYCLE_INTERFACE: u32 = u32::MAX - 2;

/// The `interface` number of `call` that drives async methods: [`future::START`],
/// [`future::POLL`] and [`future::DROP`] (see [`future`](crate::future)).
pub const ASYNC_INTERFACE: u32 = u32::MAX - 3;

/// `save`: no input; replies with `Option<LiveData>` (postcard), the state this instance hands
/// to its successor at a reload.
pub const METHOD_SAVE: u32 = 0;

/// `migrate`: input is a `LiveData` (postcard) saved by the predecessor; runs between `load`
/// and `init`. A failure aborts the reload.
pub const METHOD_MIGRATE: u32 = 1;

/// Header flag: the plugin was built with `panic = "unwind"`, so its glue can catch panics.
pub const FLAG_PANIC_UNWIND: u32 = 1;

/// Header flag: an extension ([`HeaderExt`](crate::lane::HeaderExt)) follows the v1 entry
/// points: the header is an [`ExtendedHeader`](crate::lane::ExtendedHeader). A plugin without it
/// has no direct lanes, and every call takes the encoded path.
pub const FLAG_EXTENDED: u32 = 2;

/// A borrowed run of bytes that crosses the boundary.
///
/// When the guest fills one in as a result, the bytes belong to the guest and stay valid until
/// the next call into the same plugin on the same thread; the host copies or decodes them
/// straight away and never frees them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawSlice {
    /// First byte; may dangle when `len` is 0.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl RawSlice {
    /// An empty slice.
    pub const EMPTY: RawSlice = RawSlice {
        ptr: core::ptr::NonNull::<u8>::dangling().as_ptr(),
        len: 0,
    };

    /// Borrows `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Self {
        RawSlice {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// Views the bytes.
    ///
    /// # Safety
    /// `ptr` must point to `len` initialised bytes that stay valid and unchanged for `'a`.
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        if self.len == 0 {
            &[]
        } else {
            // SAFETY: upheld by the caller.
            unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// Log levels accepted by [`HostApi::log`].
pub mod level {
    /// An error.
    pub const ERROR: u32 = 1;
    /// A warning.
    pub const WARN: u32 = 2;
    /// Information.
    pub const INFO: u32 = 3;
    /// Debugging detail.
    pub const DEBUG: u32 = 4;
    /// Tracing detail.
    pub const TRACE: u32 = 5;
}

/// The functions a host offers to a plugin, handed to `load` and kept by the instance.
///
/// The table only grows: `size` says how many bytes of it the host filled in, and a guest must
/// not read a field that lies beyond it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HostApi {
    /// `size_of::<HostApi>()` as the host was built.
    pub size: usize,
    /// Opaque host context, passed back to every host function. It outlives the instance.
    pub ctx: *const c_void,
    /// Writes one log line, attributed to the calling plugin. `msg` is UTF-8.
    pub log: unsafe extern "C" fn(ctx: *const c_void, level: u32, msg: *const u8, len: usize),
    /// Runs one host service; see [`ServiceFn`] and [`crate::service`].
    pub service: ServiceFn,
}

/// Runs host service `op` with the postcard-encoded request in `input`. Returns a
/// [`Status`](crate::Status); `out` receives the encoded reply, or a UTF-8 message on failure.
/// The reply bytes belong to the host and stay valid until the next service call on the same
/// thread.
pub type ServiceFn = unsafe extern "C" fn(
    ctx: *const c_void,
    op: u32,
    input: *const u8,
    len: usize,
    out: *mut RawSlice,
) -> u32;

// SAFETY: `ctx` points to host data that is `Sync` and outlives every instance given this
// table; the host functions are thread-safe.
unsafe impl Send for HostApi {}
// SAFETY: as above.
unsafe impl Sync for HostApi {}

/// Returns the manifest, postcard-encoded, in `out`. Returns a [`Status`](crate::Status).
pub type ManifestFn = unsafe extern "C" fn(out: *mut RawSlice) -> u32;
/// Runs `on_load`: builds an instance and stores its handle in `instance`. On failure `out`
/// holds a UTF-8 message and no instance exists.
pub type LoadFn = unsafe extern "C" fn(
    host: *const HostApi,
    instance: *mut *mut c_void,
    out: *mut RawSlice,
) -> u32;
/// Runs `on_init` on an instance. On failure `out` holds a UTF-8 message.
pub type InitFn = unsafe extern "C" fn(instance: *mut c_void, out: *mut RawSlice) -> u32;
/// Runs `on_free` and then drops the instance. Called exactly once per instance.
pub type FreeFn = unsafe extern "C" fn(instance: *mut c_void, out: *mut RawSlice) -> u32;
/// Calls method `method` of the plugin's exported interface number `interface`, with the
/// postcard-encoded argument tuple in `input`. The encoded result, or an error message, comes
/// back in `out`.
pub type CallFn = unsafe extern "C" fn(
    instance: *mut c_void,
    interface: u32,
    method: u32,
    input: *const u8,
    input_len: usize,
    out: *mut RawSlice,
) -> u32;

/// The entry points of ABI v1.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EntryPoints {
    /// See [`ManifestFn`].
    pub manifest: ManifestFn,
    /// See [`LoadFn`].
    pub load: LoadFn,
    /// See [`InitFn`].
    pub init: InitFn,
    /// See [`FreeFn`].
    pub free: FreeFn,
    /// See [`CallFn`].
    pub call: CallFn,
}

/// The exported plugin header.
#[repr(C)]
#[derive(Debug)]
pub struct PluginHeader {
    /// Always [`MAGIC`].
    pub magic: [u8; 8],
    /// The ABI the plugin was built against; [`ABI_VERSION`] for this crate.
    pub abi_version: u32,
    /// Bit set of `FLAG_*` constants.
    pub flags: u32,
    /// Who built the plugin: compiler, target and ABI crate version.
    pub fingerprint: Fingerprint,
    /// Valid only when `magic` and `abi_version` match.
    pub entry: EntryPoints,
}

// SAFETY: the header is immutable data and function pointers.
unsafe impl Sync for PluginHeader {}
