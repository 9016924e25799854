//! The wasm32 entry points. `export_plugin!` exports them, under `#[cfg(target_arch =
//! "wasm32")]`, as plain module functions; they run the same glue as a native plugin's header.
//!
//! One wasm instance holds one plugin instance, in a global. The host function `log` becomes
//! an import, `swapkit.log`, wrapped in a host table so the glue is unchanged. Results are
//! published through a fixed two-word slot (`swapkit_out_slot`: pointer and length), and the
//! host writes arguments into a guest buffer it asks for with `swapkit_input`.
//!
//! `wasm32-unknown-unknown` aborts on panic, so a panic cannot be caught here: the panic hook
//! sends its message to the host through `swapkit.panic`, and the abort that follows traps.
//! The host reports the message and throws the trapped instance away.

use core::ffi::c_void;
use std::cell::{Cell, RefCell, UnsafeCell};

use swapkit_abi::lane::WASM_ARGS;
use swapkit_abi::{HostApi, RawSlice, Status, ABI_VERSION};

use crate::glue::{self, Exports};

#[link(wasm_import_module = "swapkit")]
unsafe extern "C" {
    #[link_name = "log"]
    fn host_log(level: u32, ptr: *const u8, len: usize);
    #[link_name = "panic"]
    fn host_panic(ptr: *const u8, len: usize);
    /// Runs a host service; returns `status << 32 | reply length`. The host keeps the reply
    /// until `reply` copies it out.
    #[link_name = "service"]
    fn host_service(op: u32, ptr: *const u8, len: usize) -> u64;
    /// Copies the pending service reply to `ptr`, which has room for its length.
    #[link_name = "reply"]
    fn host_reply(ptr: *mut u8);
}

/// The `log` entry of the host table on wasm, where the host is reached through imports.
///
/// # Safety
///
/// `msg` must be valid for `len` bytes (ABI.md, the host table).
unsafe extern "C" fn log_shim(_ctx: *const c_void, level: u32, msg: *const u8, len: usize) {
    // SAFETY: forwarded from the glue, which passes a valid message.
    unsafe { host_log(level, msg, len) }
}

/// The `service` entry of the host table on wasm.
///
/// # Safety
///
/// `input` must be valid for `len` bytes and `out` writable (ABI.md, the service host
/// function).
unsafe extern "C" fn service_shim(
    _ctx: *const c_void,
    op: u32,
    input: *const u8,
    len: usize,
    out: *mut RawSlice,
) -> u32 {
    // SAFETY: `input` holds `len` bytes for the call.
    let packed = unsafe { host_service(op, input, len) };
    let (status, reply_len) = ((packed >> 32) as u32, packed as u32 as usize);
    REPLY.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        b.resize(reply_len, 0);
        // SAFETY: the buffer has room for the pending reply, whose length the host gave.
        unsafe { host_reply(b.as_mut_ptr()) };
        // SAFETY: the glue passes a writable `out`; the bytes stay until the next service call.
        unsafe { out.write(RawSlice::from_slice(&b)) };
    });
    status
}

static API: HostApi = HostApi {
    size: core::mem::size_of::<HostApi>(),
    ctx: core::ptr::null(),
    log: log_shim,
    service: service_shim,
};

/// Where a result is published: `[pointer, length]`.
struct Slot(UnsafeCell<[u32; 2]>);
// SAFETY: wasm32-unknown-unknown runs one thread per instance.
unsafe impl Sync for Slot {}
static OUT: Slot = Slot(UnsafeCell::new([0, 0]));

thread_local! {
    static INSTANCE: Cell<*mut c_void> = const { Cell::new(core::ptr::null_mut()) };
    /// Words, not bytes, so the buffer is 8-aligned: a lane's staged slices and structs are
    /// read in place.
    static INPUT: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    /// `swapkit_lanes`' table: the number of lanes, then their method hashes.
    static LANES: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    static REPLY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn publish(out: RawSlice, status: u32) -> u32 {
    // SAFETY: single-threaded; nothing else holds a reference into the slot.
    unsafe { *OUT.0.get() = [out.ptr as usize as u32, out.len as u32] };
    status
}

fn install_panic_hook() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = match info.payload().downcast_ref::<&str>() {
                Some(s) => (*s).to_owned(),
                None => match info.payload().downcast_ref::<String>() {
                    Some(s) => s.clone(),
                    None => info.to_string(),
                },
            };
            // SAFETY: a valid UTF-8 message.
            unsafe { host_panic(message.as_ptr(), message.len()) }
        }))
    });
}

/// `swapkit_abi_version`.
pub fn abi_version() -> u32 {
    ABI_VERSION
}

/// `swapkit_out_slot`: the address of the result slot.
pub fn out_slot() -> u32 {
    OUT.0.get() as usize as u32
}

/// `swapkit_input(len)`: a buffer of at least `len` bytes for the next call's arguments.
pub fn input(len: u32) -> u32 {
    INPUT.with(|b| {
        let mut b = b.borrow_mut();
        b.resize((len as usize).div_ceil(8), 0);
        b.as_ptr() as usize as u32
    })
}

/// `swapkit_manifest`.
pub fn manifest<P: Exports>() -> u32 {
    install_panic_hook();
    let mut out = RawSlice::EMPTY;
    // SAFETY: `out` is writable.
    let status = unsafe { glue::manifest::<P>(&mut out) };
    publish(out, status)
}

/// `swapkit_load`: builds this instance's plugin object.
pub fn load<P: Exports>() -> u32 {
    install_panic_hook();
    if !INSTANCE.get().is_null() {
        return refuse("the plugin is already loaded in this instance");
    }
    let mut out = RawSlice::EMPTY;
    let mut handle = core::ptr::null_mut();
    // SAFETY: `API` is static, and `handle` and `out` are writable.
    let status = unsafe { glue::load::<P>(&API, &mut handle, &mut out) };
    if status == Status::Ok as u32 {
        INSTANCE.set(handle);
    }
    publish(out, status)
}

/// `swapkit_init`.
pub fn init<P: Exports>() -> u32 {
    let handle = INSTANCE.get();
    if handle.is_null() {
        return refuse("on_init before on_load");
    }
    let mut out = RawSlice::EMPTY;
    // SAFETY: `handle` came from `load::<P>` and is live.
    let status = unsafe { glue::init::<P>(handle, &mut out) };
    publish(out, status)
}

/// `swapkit_free`.
pub fn free<P: Exports>() -> u32 {
    let handle = INSTANCE.replace(core::ptr::null_mut());
    if handle.is_null() {
        return refuse("on_free before on_load");
    }
    let mut out = RawSlice::EMPTY;
    // SAFETY: `handle` came from `load::<P>`, and is freed once: the global is cleared.
    let status = unsafe { glue::free::<P>(handle, &mut out) };
    publish(out, status)
}

/// `swapkit_call(interface, method, len)`: the arguments are the first `len` bytes of the
/// input buffer.
pub fn call<P: Exports>(interface: u32, method: u32, len: u32) -> u32 {
    let handle = INSTANCE.get();
    if handle.is_null() {
        return refuse("a call before on_load");
    }
    INPUT.with(|b| {
        let b = b.borrow();
        let len = (len as usize).min(b.len() * 8);
        let mut out = RawSlice::EMPTY;
        // SAFETY: `handle` is live; the input stays borrowed, unchanged, for the call.
        let status =
            unsafe { glue::call::<P>(handle, interface, method, b.as_ptr().cast(), len, &mut out) };
        publish(out, status)
    })
}

/// `swapkit_lanes`: the address of `[count, hash, ..]` (`u64`s), the method hashes this
/// plugin serves through `swapkit_lane`.
pub fn lanes<P: Exports>() -> u32 {
    LANES.with(|t| {
        let mut t = t.borrow_mut();
        if t.is_empty() {
            t.push(P::LANES.len() as u64);
            t.extend(P::LANES.iter().map(|l| l.hash));
        }
        t.as_ptr() as usize as u32
    })
}

/// `swapkit_lane(interface, method, args..)`: a direct-lane call. Its arguments are wasm
/// values, or addresses of what the host staged in the input buffer; its result is a value, or
/// the address and length of bytes in the result buffer. A call with no lane, or before
/// `on_load`, traps: only a host that read `swapkit_lanes` makes one.
pub fn lane<P: Exports>(interface: u32, method: u32, args: [u64; WASM_ARGS]) -> u64 {
    let handle = INSTANCE.get();
    if handle.is_null() {
        core::arch::wasm32::unreachable();
    }
    // SAFETY: `handle` came from `load::<P>` and points at the plugin object (the instance
    // keeps it first); the host staged the arguments for this method.
    let word = unsafe { (*(handle as *const P)).lane_wasm(interface, method, &args) };
    match word {
        Some(word) => word,
        None => core::arch::wasm32::unreachable(),
    }
}

fn refuse(message: &'static str) -> u32 {
    publish(
        RawSlice::from_slice(message.as_bytes()),
        Status::HookFailed as u32,
    )
}
