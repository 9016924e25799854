//! The guest side of the boundary: the `extern "C"` entry points that `export_plugin!` puts in
//! a plugin's header.
//!
//! Every entry point runs its work inside `catch_unwind`, so no unwind ever crosses into the
//! host, and reports through a [`Status`] plus an `out` slice. The bytes behind `out` live in a
//! per-thread buffer owned by this copy of the guest; they stay valid until the next call on
//! the same thread, which gives the host time to decode them without a free call.

use core::ffi::c_void;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use core::mem::MaybeUninit;

use swapkit_abi::lane::{Glue, LaneEntry, LaneResult, LaneRet, WASM_ARGS};
use swapkit_abi::{
    wire, DispatchError, EntryPoints, ExportDecl, ExtendedHeader, Fingerprint, HostApi,
    InterfaceDecl, LiveData, LiveKind, Manifest, PatchDecl, PluginHeader, RawSlice, Status,
    ABI_VERSION, ASYNC_INTERFACE, FLAG_EXTENDED, FLAG_PANIC_UNWIND, LIFECYCLE_INTERFACE,
    LIVE_INTERFACE, MAGIC, METHOD_MIGRATE, METHOD_SAVE, PATCH_INTERFACE,
};

use crate::{Host, Plugin};

/// What `export_plugin!` implements for the plugin type.
pub trait Exports: Plugin {
    /// The plugin's name.
    const NAME: &'static str;
    /// The plugin's version.
    const VERSION: &'static str;
    /// The crate the plugin is built from.
    const CRATE_NAME: &'static str;
    /// Plugins this one depends on, each with the `(name, hash)` of the interfaces it uses.
    const DEPENDENCIES: &'static [(&'static str, &'static [(&'static str, u64)])];
    /// The exported patches, in the order `call` numbers them.
    const PATCHES: &'static [PatchExport];
    /// The live functions and factories, in the order `call` numbers them.
    const LIVE: &'static [LiveExport];
    /// False when `export_plugin!` says `reloadable: false`.
    const RELOADABLE: bool = true;
    /// The exported interfaces, in dispatch order.
    fn interfaces() -> Vec<InterfaceDecl>;
    /// The native lanes of every exported interface, under their method hashes.
    const LANES: &'static [LaneEntry];
    /// Runs method `method` of interface number `interface` through its wasm lane; `None` if
    /// it has none.
    ///
    /// # Safety
    /// `args` came from the host's staging for this method, which is still in place.
    unsafe fn lane_wasm(&self, interface: u32, method: u32, args: &[u64; WASM_ARGS])
        -> Option<u64>;
    /// Starts async method `method` of interface number `interface`: its future, not yet
    /// polled; `None` if the method is not async.
    fn start(
        &self,
        interface: u32,
        method: u32,
        input: &[u8],
    ) -> Option<Result<swapkit_abi::future::BoxedCall<'_>, DispatchError>>;
    /// Routes a call to the implementation of interface number `interface`.
    fn dispatch(
        &self,
        interface: u32,
        method: u32,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), DispatchError>;
}

/// One exported patch, made by `#[swapkit_guest::patch]`.
#[derive(Debug, Clone, Copy)]
pub struct PatchExport {
    /// The target's full name in the host.
    pub target: &'static str,
    /// The normalised signature text.
    pub signature: &'static str,
    /// FNV-1a of `signature`.
    pub hash: u64,
    /// Decodes the arguments, runs the replacement and encodes its result.
    pub invoke: fn(&[u8], &mut Vec<u8>) -> Result<(), DispatchError>,
}

/// One live function or live-type factory, made by `#[swapkit_guest::live]`.
#[derive(Debug, Clone, Copy)]
pub struct LiveExport {
    /// The name callers use.
    pub name: &'static str,
    /// Whether it is a factory.
    pub kind: LiveKind,
    /// The normalised signature text.
    pub signature: &'static str,
    /// FNV-1a of `signature`.
    pub hash: u64,
    /// Decodes the arguments, runs the function and encodes its result.
    pub invoke: fn(&[u8], &mut Vec<u8>) -> Result<(), DispatchError>,
}

/// The header of plugin type `P`, with its lanes in the extension.
pub const fn header<P: Exports>() -> ExtendedHeader {
    ExtendedHeader {
        header: PluginHeader {
            magic: MAGIC,
            abi_version: ABI_VERSION,
            flags: FLAG_EXTENDED
                | if cfg!(panic = "unwind") {
                    FLAG_PANIC_UNWIND
                } else {
                    0
                },
            fingerprint: Fingerprint::CURRENT,
            entry: EntryPoints {
                manifest: manifest::<P>,
                load: load::<P>,
                init: init::<P>,
                free: free::<P>,
                call: call::<P>,
            },
        },
        ext: swapkit_abi::lane::extension(P::LANES),
    }
}

/// An instance as the host holds it: the plugin and its host table. The plugin comes first,
/// so the handle points at it: a lane reaches the plugin object with no offset to add.
#[repr(C)]
struct Instance<P> {
    plugin: P,
    host: Host,
    /// Its async calls that are pending (they borrow `plugin`: dropped before it, in `free`).
    calls: crate::future::Calls,
}

/// Results above this size are not kept between calls, so one large answer does not pin its
/// memory on the thread for good.
const KEEP_CAPACITY: usize = 256 * 1024;

/// What this copy of the guest keeps per thread.
struct PerThread {
    /// The buffer behind the `out` slice of the last call on this thread.
    out: Cell<Vec<u8>>,
    /// How many entry points are running on this thread: a panic while one is, is caught
    /// at the boundary and reported to the host, so the panic hook keeps quiet about it.
    /// (A wasm guest's panics abort, and its hook reports them; it keeps no count.)
    #[cfg(not(target_family = "wasm"))]
    depth: Cell<u32>,
}

thread_local! {
    static OUT: PerThread = const {
        PerThread {
            out: Cell::new(Vec::new()),
            #[cfg(not(target_family = "wasm"))]
            depth: Cell::new(0),
        }
    };
    /// The message of a lane that failed: kept apart from the result buffer, so a lane that
    /// returns a value never writes the buffer an outer frame may still be reading.
    static MESSAGE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// How many lanes are running on this thread, for the panic hook. A thread-local of its
    /// own, with nothing to drop, so reaching it is one lookup with no state to check.
    static LANE_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Runs `work` with the thread's result buffer, emptied, and puts it back after: the bytes it
/// wrote stay valid until the next call on this thread. A nested call gets a buffer of its
/// own; after the thread-locals are gone, the buffer is leaked so its bytes stay valid.
pub(crate) fn with_result_buffer<T>(work: impl FnOnce(&mut Vec<u8>) -> T) -> T {
    let mut buf = OUT.try_with(|t| t.out.take()).unwrap_or_default();
    if buf.capacity() > KEEP_CAPACITY {
        buf = Vec::new();
    }
    buf.clear();
    let result = work(&mut buf);
    let mut keep = Some(buf);
    let _ = OUT.try_with(|t| t.out.set(keep.take().unwrap_or_default()));
    if let Some(orphan) = keep {
        orphan.leak();
    }
    result
}

/// The guest glue around a native lane.
#[derive(Debug)]
pub struct LaneGlue;

// SAFETY: `native` catches every panic of the body and reports it with a message.
unsafe impl Glue for LaneGlue {
    #[inline]
    fn native<R: LaneResult>(out: *mut RawSlice, body: impl FnOnce() -> R) -> LaneRet<R::Raw> {
        // One thread-local lookup: a plugin is a shared library, where each costs a call.
        #[cfg(not(target_family = "wasm"))]
        let depth: *const Cell<u32> = LANE_DEPTH.with(|d| d as *const Cell<u32>);
        // SAFETY: this thread's own thread-local (with nothing to drop, so never destroyed
        // while the thread runs this call).
        #[cfg(not(target_family = "wasm"))]
        unsafe {
            (*depth).set((*depth).get() + 1)
        };
        let result = catch_unwind(AssertUnwindSafe(body));
        // SAFETY: as above.
        #[cfg(not(target_family = "wasm"))]
        unsafe {
            (*depth).set((*depth).get() - 1)
        };
        match result {
            Ok(value) if R::BYTES => LaneRet {
                status: Status::Ok as u32,
                value: MaybeUninit::new(with_result_buffer(|buf| value.into_raw(buf))),
            },
            Ok(value) => LaneRet {
                status: Status::Ok as u32,
                value: MaybeUninit::new(value.into_raw(&mut Vec::new())),
            },
            Err(payload) => lane_panic(out, &*payload),
        }
    }

    #[inline]
    unsafe fn native_async<'a, I, F, R>(
        instance: *mut c_void,
        handle: *mut u64,
        out: *mut RawSlice,
        make: impl FnOnce(&'a I) -> F,
    ) -> LaneRet<R::Raw>
    where
        I: 'a,
        F: std::future::Future<Output = R> + Send + 'a,
        R: LaneResult + serde::Serialize,
    {
        // SAFETY: by the contract, `instance` is a live instance `load::<I>` made.
        let inst = unsafe { &*(instance as *const Instance<I>) };
        #[cfg(not(target_family = "wasm"))]
        let depth: *const Cell<u32> = LANE_DEPTH.with(|d| d as *const Cell<u32>);
        // SAFETY: this thread's own thread-local, as in `native`.
        #[cfg(not(target_family = "wasm"))]
        unsafe {
            (*depth).set((*depth).get() + 1)
        };
        let started = catch_unwind(AssertUnwindSafe(|| {
            inst.calls.start_lane(&inst.host, make(&inst.plugin))
        }));
        // SAFETY: as above.
        #[cfg(not(target_family = "wasm"))]
        unsafe {
            (*depth).set((*depth).get() - 1)
        };
        match started {
            Ok(Ok(crate::future::Started::Ready(value))) => LaneRet {
                status: Status::Ok as u32,
                value: MaybeUninit::new(if R::BYTES {
                    with_result_buffer(|buf| value.into_raw(buf))
                } else {
                    value.into_raw(&mut Vec::new())
                }),
            },
            Ok(Ok(crate::future::Started::Pending(h))) => {
                // SAFETY: the host passes a writable `handle`.
                unsafe { handle.write(h) };
                LaneRet {
                    status: swapkit_abi::future::LANE_PENDING,
                    value: MaybeUninit::uninit(),
                }
            }
            Ok(Err(message)) => lane_message(out, &message),
            Err(payload) => lane_panic(out, &*payload),
        }
    }

    #[inline]
    fn wasm_result<R: LaneResult>(result: R) -> u64 {
        if R::BYTES {
            with_result_buffer(|buf| result.into_wasm(buf))
        } else {
            result.into_wasm(&mut Vec::new())
        }
    }
}

/// The reply of a lane that panicked: the message through `out`, from the message buffer.
#[cold]
#[inline(never)]
fn lane_panic<R: Copy>(out: *mut RawSlice, payload: &(dyn std::any::Any + Send)) -> LaneRet<R> {
    lane_message(out, &panic_message(payload))
}

/// The reply of a lane whose body panicked with `message`.
#[cold]
#[inline(never)]
fn lane_message<R: Copy>(out: *mut RawSlice, message: &str) -> LaneRet<R> {
    let mut buf = MESSAGE.try_with(Cell::take).unwrap_or_default();
    buf.clear();
    buf.extend_from_slice(message.as_bytes());
    let slice = RawSlice::from_slice(&buf);
    let mut keep = Some(buf);
    let _ = MESSAGE.try_with(|m| m.set(keep.take().unwrap_or_default()));
    if let Some(orphan) = keep {
        orphan.leak();
    }
    // SAFETY: the host passes a writable `out`.
    unsafe { out.write(slice) };
    LaneRet {
        status: Status::Panic as u32,
        value: MaybeUninit::uninit(),
    }
}

/// Installs, once per copy of the guest, a panic hook that says nothing about a panic an
/// entry point will catch: the host turns it into an error naming the plugin, version and
/// method, and logs it through `tracing`. Left to the default hook, every caught panic would
/// print to stderr, with a full backtrace (and its symbolisation, tens of MiB of RSS) under
/// `RUST_BACKTRACE`. Any other panic (a thread the plugin spawned) goes to the hook that was
/// there before: for a native plugin, its own copy of `std`'s default; for a plugin linked
/// statically, the host's.
#[cfg(not(target_family = "wasm"))]
fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let caught = OUT.try_with(|t| t.depth.get() > 0).unwrap_or(false)
                || LANE_DEPTH.try_with(|d| d.get() > 0).unwrap_or(false);
            if !caught {
                previous(info);
            }
        }));
    });
}

/// Runs `work` with the thread's out buffer, catches any panic, and publishes the buffer's
/// bytes through `out`.
///
/// The buffer is taken out of the thread-local while `work` runs, so a re-entrant call on the
/// same thread gets a buffer of its own instead of a borrow conflict. A call made after this
/// thread's thread-locals were destroyed (from another thread-local's destructor) gets a
/// buffer that is leaked, so its bytes stay valid as the ABI requires: `with` would panic
/// there, and a panic cannot unwind out of an `extern "C"` function.
///
/// # Safety
/// `out` must be valid for a write.
unsafe fn respond(
    out: *mut RawSlice,
    work: impl FnOnce(&mut Vec<u8>) -> Result<(), (Status, String)>,
) -> u32 {
    let mut buf = OUT
        .try_with(|t| {
            #[cfg(not(target_family = "wasm"))]
            t.depth.set(t.depth.get() + 1);
            t.out.take()
        })
        .unwrap_or_default();
    if buf.capacity() > KEEP_CAPACITY {
        buf = Vec::new();
    }
    buf.clear();
    let status = match catch_unwind(AssertUnwindSafe(|| work(&mut buf))) {
        Ok(Ok(())) => Status::Ok,
        Ok(Err((status, message))) => failed(&mut buf, status, &message),
        Err(payload) => failed(&mut buf, Status::Panic, &panic_message(&*payload)),
    };
    let slice = RawSlice::from_slice(&buf);
    // Moving the vector does not move its heap bytes, so `slice` stays valid.
    let mut keep = Some(buf);
    let _ = OUT.try_with(|t| {
        #[cfg(not(target_family = "wasm"))]
        t.depth.set(t.depth.get().saturating_sub(1));
        t.out.set(keep.take().unwrap_or_default())
    });
    if let Some(orphan) = keep {
        // The thread-local is gone: keep the bytes alive for good (only in thread teardown).
        orphan.leak();
    }
    // SAFETY: the caller guarantees `out` is writable.
    unsafe { out.write(slice) };
    status as u32
}

/// `save` and `migrate`.
fn lifecycle<P: Plugin>(
    inst: &Instance<P>,
    method: u32,
    input: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(), (Status, String)> {
    let hook = |e: crate::Error| (Status::HookFailed, e.message().to_owned());
    match method {
        METHOD_SAVE => {
            let state = inst.plugin.save(&inst.host).map_err(hook)?;
            wire::encode_into(&state, buf).map_err(|e| (Status::EncodeFailed, e.to_string()))
        }
        METHOD_MIGRATE => {
            let from: LiveData =
                wire::from_bytes(input).map_err(|e| (Status::BadInput, e.to_string()))?;
            inst.plugin.migrate(&inst.host, from).map_err(hook)
        }
        other => Err((
            Status::UnknownMethod,
            format!("no lifecycle method number {other}"),
        )),
    }
}

#[cold]
fn failed(buf: &mut Vec<u8>, status: Status, message: &str) -> Status {
    buf.clear();
    buf.extend_from_slice(message.as_bytes());
    status
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// The `manifest` entry point.
///
/// # Safety
///
/// The host's side of the contract in ABI.md ("Entry points"): `out` is writable.
pub(crate) unsafe extern "C" fn manifest<P: Exports>(out: *mut RawSlice) -> u32 {
    // SAFETY: the host passes a writable `out`.
    unsafe {
        respond(out, |buf| {
            let fp = Fingerprint::CURRENT;
            let manifest = Manifest {
                name: P::NAME.into(),
                version: P::VERSION.into(),
                abi_version: ABI_VERSION,
                crate_name: P::CRATE_NAME.into(),
                fingerprint: [fp.rustc().into(), fp.target().into(), fp.abi_crate().into()],
                interfaces: P::interfaces(),
                dependencies: P::DEPENDENCIES
                    .iter()
                    .map(|(plugin, interfaces)| swapkit_abi::Dependency {
                        plugin: (*plugin).into(),
                        interfaces: interfaces.iter().map(|(n, h)| ((*n).into(), *h)).collect(),
                    })
                    .collect(),
                patches: P::PATCHES
                    .iter()
                    .map(|p| PatchDecl {
                        target: p.target.into(),
                        signature: p.signature.into(),
                        hash: p.hash,
                    })
                    .collect(),
                live: P::LIVE
                    .iter()
                    .map(|l| ExportDecl {
                        name: l.name.into(),
                        kind: l.kind,
                        signature: l.signature.into(),
                        hash: l.hash,
                    })
                    .collect(),
                options: swapkit_abi::Options {
                    reloadable: P::RELOADABLE,
                },
            };
            manifest
                .encode(buf)
                .map_err(|e| (Status::EncodeFailed, e.to_string()))
        })
    }
}

/// The `load` entry point.
///
/// # Safety
///
/// The host's side of the contract in ABI.md ("Entry points"): `api` is a valid host table
/// whose context outlives the instance, and `instance` and `out` are writable.
pub(crate) unsafe extern "C" fn load<P: Exports>(
    api: *const HostApi,
    instance: *mut *mut c_void,
    out: *mut RawSlice,
) -> u32 {
    #[cfg(not(target_family = "wasm"))]
    install_quiet_hook();
    // SAFETY: the host passes a valid table, whose context outlives the instance, and writable
    // `instance` and `out` pointers.
    unsafe {
        let host = Host::from_raw(api);
        respond(out, |_| match P::on_load(&host) {
            Ok(plugin) => {
                let boxed = Box::new(Instance {
                    plugin,
                    host,
                    calls: Default::default(),
                });
                instance.write(Box::into_raw(boxed).cast());
                Ok(())
            }
            Err(e) => Err((Status::HookFailed, e.message().to_owned())),
        })
    }
}

/// The `init` entry point.
///
/// # Safety
///
/// The host's side of the contract in ABI.md: `instance` was made by `load::<P>` and is not
/// freed, and `out` is writable.
pub(crate) unsafe extern "C" fn init<P: Exports>(instance: *mut c_void, out: *mut RawSlice) -> u32 {
    // SAFETY: the host passes a live instance made by `load::<P>` and a writable `out`.
    unsafe {
        let inst = &*(instance as *const Instance<P>);
        respond(out, |_| {
            inst.plugin
                .on_init(&inst.host)
                .map_err(|e| (Status::HookFailed, e.message().to_owned()))
        })
    }
}

/// The `free` entry point.
///
/// # Safety
///
/// The host's side of the contract in ABI.md: `instance` was made by `load::<P>`, is passed
/// here exactly once, after its last call returned, and `out` is writable.
pub(crate) unsafe extern "C" fn free<P: Exports>(instance: *mut c_void, out: *mut RawSlice) -> u32 {
    // SAFETY: the host passes a live instance made by `load::<P>`, exactly once, after its last
    // call has returned; ownership comes back to us here.
    unsafe {
        let mut inst = Box::from_raw(instance as *mut Instance<P>);
        respond(out, move |_| {
            let host = inst.host;
            inst.calls.clear();
            inst.plugin.on_free(&host);
            drop(inst);
            Ok(())
        })
    }
}

/// The `call` entry point.
///
/// # Safety
///
/// The host's side of the contract in ABI.md: `instance` was made by `load::<P>` and is not
/// freed, `input` is valid for `input_len` bytes for the call, and `out` is writable.
pub(crate) unsafe extern "C" fn call<P: Exports>(
    instance: *mut c_void,
    interface: u32,
    method: u32,
    input: *const u8,
    input_len: usize,
    out: *mut RawSlice,
) -> u32 {
    // SAFETY: the host passes a live instance made by `load::<P>`, `input_len` readable bytes
    // at `input` that stay valid for the call, and a writable `out`.
    unsafe {
        let inst = &*(instance as *const Instance<P>);
        let input = RawSlice {
            ptr: input,
            len: input_len,
        }
        .as_slice();
        respond(out, |buf| {
            let result = match interface {
                PATCH_INTERFACE => match P::PATCHES.get(method as usize) {
                    Some(patch) => (patch.invoke)(input, buf),
                    None => Err(DispatchError::UnknownMethod(method)),
                },
                LIVE_INTERFACE => match P::LIVE.get(method as usize) {
                    Some(live) => (live.invoke)(input, buf),
                    None => Err(DispatchError::UnknownMethod(method)),
                },
                LIFECYCLE_INTERFACE => return lifecycle(inst, method, input, buf),
                ASYNC_INTERFACE => {
                    return inst
                        .calls
                        .drive(&inst.host, method, input, buf, |i, m, args| {
                            inst.plugin.start(i, m, args)
                        })
                }
                _ => inst.plugin.dispatch(interface, method, input, buf),
            };
            result.map_err(|e| (e.status(), e.to_string()))
        })
    }
}
