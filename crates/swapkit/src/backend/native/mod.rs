//! The native backend: a plugin `cdylib` loaded with the platform's dynamic loader.
//!
//! # What is freed, and what is not
//!
//! A native plugin's code mapping is never unmapped. Rust `cdylib`s register thread-local
//! destructors with the C runtime, and `dlclose` on such a library is either a no-op or, where
//! it does unmap, leaves those destructors pointing at freed code; there is no sound way to
//! unload it. So swapkit never calls `dlclose`. Everything a generation owns is still dropped:
//! each plugin instance gets its `on_free` and is dropped inside the plugin, and the host's
//! records of it are freed. The cost is one mapping per distinct artifact content ever loaded,
//! shared by every later load of the same content (a rollback to a version seen before maps
//! nothing new). Use the wasm backend where code must be truly unloaded.
//!
//! # Why a private copy
//!
//! Each artifact is loaded from a private copy in a scratch directory, written from the very
//! bytes that were hashed. The dynamic loader caches libraries by path, so loading the original
//! path twice would return the first version; the copy lets a rebuild in place be reloaded and
//! two versions coexist, and means what runs is exactly what was checked.

//!
//! # Calls
//!
//! A call goes straight through the header's `call` entry point. The guest writes its reply
//! into a buffer of its own, per thread, valid until its next call on that thread; so while
//! this thread decodes a reply of a plugin, a nested call into the same plugin (from a
//! `Deserialize` impl) is refused rather than allowed to overwrite the bytes being decoded.

mod copy;
mod loader;

pub(crate) use loader::{claims_in_file, header_in_file, NativeLoader, Staged, EXTENSION};

use std::ffi::c_void;
use std::sync::Arc;

use swapkit_abi::lane::{LaneArgs, LaneResult};
use swapkit_abi::{HostApi, PluginHeader, RawSlice, Status};
use swapkit_sync::HazardCell;

use super::host::{host_log, host_service, GuestCtx};
use super::{host_status, LaneFailure, Reply};

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

/// A live native instance: the guest object `on_load` made.
pub(crate) struct NativeInstance {
    header: &'static PluginHeader,
    handle: *mut c_void,
    /// The context behind the host table the guest copied. The guest may keep the table past
    /// `free` (a thread it left running), so the table points at this cell, which is leaked
    /// (a few dozen bytes per native load, beside a code mapping that is never unmapped
    /// either); the context in it is taken out after `free`, and freed once no host function
    /// is inside it. Host functions called later find it empty.
    ctx: &'static HazardCell<GuestCtx>,
}

impl NativeInstance {
    /// Runs `on_load`. On failure, the status and message the guest replied with.
    pub fn load(
        header: &'static PluginHeader,
        ctx: GuestCtx,
    ) -> Result<NativeInstance, (u32, String)> {
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
        // context outlives the instance (the cell is leaked).
        let status = unsafe { (header.entry.load)(&api, &mut handle, &mut out) };
        let reply = Reply {
            status,
            // SAFETY: the out buffer is valid until the next call on this thread.
            bytes: unsafe { out.as_slice() },
        };
        let failed = if !reply.is_ok() {
            Some((status, reply.message()))
        } else if handle.is_null() {
            let message = "returned success without an instance".to_owned();
            Some((swapkit_abi::Status::HookFailed as u32, message))
        } else {
            None
        };
        if let Some(failure) = failed {
            // A failed load may still have handed its table to a thread.
            drop(ctx.swap(None));
            return Err(failure);
        }
        Ok(NativeInstance {
            header,
            handle,
            ctx,
        })
    }

    /// Runs `on_init`.
    pub fn init(&self) -> Result<(), (u32, String)> {
        let mut out = RawSlice::EMPTY;
        // SAFETY: `handle` is a live instance of this plugin; `out` is writable.
        let status = unsafe { (self.header.entry.init)(self.handle, &mut out) };
        let reply = Reply {
            status,
            // SAFETY: the out buffer is valid until the next call on this thread.
            bytes: unsafe { out.as_slice() },
        };
        reply.into_result()
    }

    /// See [`Instance::call`](super::Instance::call).
    #[inline]
    pub fn call<T>(
        &self,
        interface: u32,
        method: u32,
        input: &[u8],
        then: impl FnOnce(Reply<'_>) -> T,
    ) -> T {
        let me: *const PluginHeader = self.header;
        let outer = READING.try_with(|r| r.get()).unwrap_or(std::ptr::null());
        if std::ptr::eq(outer, me) {
            return reentrant(then);
        }
        let mut out = RawSlice::EMPTY;
        // SAFETY: `handle` is a live instance (its Instance is alive, so `free` has not run);
        // `input` is valid for the call; `out` is writable.
        let status = unsafe {
            (self.header.entry.call)(
                self.handle,
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
            // SAFETY: the guest's out buffer stays valid until its next call on this thread;
            // `then` runs before any other call to this plugin on this thread, since `READING`
            // refuses those until it returns.
            bytes: unsafe { out.as_slice() },
        })
    }

    /// Calls the native lane `entry` with `args`.
    ///
    /// # Safety
    /// `entry` is a lane of this plugin whose signature `A` and `R` give.
    #[inline(always)]
    pub unsafe fn lane<A: LaneArgs, R: LaneResult>(
        &self,
        entry: *const (),
        args: A,
    ) -> Result<R, LaneFailure> {
        // SAFETY: by this function's contract, of this instance's own header and handle.
        unsafe { lane_at(self.header, self.handle, entry, args) }
    }

    /// What a generation keeps of this instance to call its lanes without reaching the
    /// instance first: its header and its guest handle (see [`lane_at`]).
    pub fn lane_target(&self) -> (&'static PluginHeader, *mut c_void) {
        (self.header, self.handle)
    }

    /// Refuses a lane whose result is bytes while an outer frame of this thread is decoding
    /// this plugin's result buffer, which the lane would write over; a value never touches it.
    #[inline(always)]
    fn bytes_free<R: LaneResult>(&self) -> Result<(), LaneFailure> {
        bytes_free::<R>(self.header)
    }

    /// Starts the async lane `entry` with `args`: the plugin polls the method's future once.
    ///
    /// # Safety
    /// `entry` is an async lane of this plugin whose signature `A` and `R` give.
    #[inline(always)]
    pub unsafe fn async_lane<A: LaneArgs, R: LaneResult>(
        &self,
        entry: *const (),
        args: A,
    ) -> Result<super::LaneStart<R>, LaneFailure> {
        self.bytes_free::<R>()?;
        let mut out = RawSlice::EMPTY;
        let mut call = 0u64;
        // SAFETY: by this function's contract; `handle` is a live instance, and `call` and
        // `out` are writable.
        let ret = unsafe { args.call_native_async::<R>(entry, self.handle, &mut call, &mut out) };
        if ret.status == Status::Ok as u32 {
            // SAFETY: `Ok` means the guest wrote the value, as for a lane.
            unsafe { R::from_raw(ret.value.assume_init()) }
                .map(super::LaneStart::Ready)
                .map_err(LaneFailure::Result)
        } else if ret.status == swapkit_abi::future::LANE_PENDING {
            Ok(super::LaneStart::Pending(call))
        } else {
            Err(lane_failed(ret.status, out))
        }
    }

    /// Runs `on_free`.
    ///
    /// # Safety
    /// Called at most once, with no call into the instance in flight, and the instance is not
    /// used afterwards: the owning [`Instance`](super::Instance)'s drop is the one caller.
    pub unsafe fn free(&mut self) -> Result<(), (u32, String)> {
        let mut out = RawSlice::EMPTY;
        // SAFETY: by this function's contract, this is the one and only `free` of a live
        // instance, and no call is in flight.
        let status = unsafe { (self.header.entry.free)(self.handle, &mut out) };
        // The guest's host table may outlive the instance (a thread the plugin left running):
        // retire its context now that `free` has returned, whatever it returned.
        drop(self.ctx.swap(None));
        let reply = Reply {
            status,
            // SAFETY: the out buffer is valid until the next call on this thread.
            bytes: unsafe { out.as_slice() },
        };
        reply.into_result()
    }
}

/// Calls the native lane `entry` of the instance `handle` of the plugin of `header`, with
/// `args`: [`NativeInstance::lane`] from what a generation copied of the instance
/// ([`NativeInstance::lane_target`]).
///
/// # Safety
/// `entry` is a lane, whose signature `A` and `R` give, of the plugin of `header`; `handle`
/// is a live instance of it (one its generation holds, so `free` has not run).
#[inline(always)]
pub(crate) unsafe fn lane_at<A: LaneArgs, R: LaneResult>(
    header: &'static PluginHeader,
    handle: *mut c_void,
    entry: *const (),
    args: A,
) -> Result<R, LaneFailure> {
    bytes_free::<R>(header)?;
    let mut out = RawSlice::EMPTY;
    // SAFETY: by this function's contract; `out` is writable.
    let ret = unsafe { args.call_native::<R>(entry, handle, &mut out) };
    if ret.status == Status::Ok as u32 {
        // SAFETY: `Ok` means the guest wrote the value; a bytes result lies in its buffer,
        // unwritten since it returned.
        unsafe { R::from_raw(ret.value.assume_init()) }.map_err(LaneFailure::Result)
    } else {
        Err(lane_failed(ret.status, out))
    }
}

/// Refuses a lane whose result is bytes while an outer frame of this thread is decoding the
/// result buffer of the plugin of `header`, which the lane would write over; a value never
/// touches it.
#[inline(always)]
fn bytes_free<R: LaneResult>(header: &'static PluginHeader) -> Result<(), LaneFailure> {
    let me: *const PluginHeader = header;
    if R::BYTES && READING.try_with(|r| std::ptr::eq(r.get(), me)) == Ok(true) {
        return Err(LaneFailure::Status(
            host_status::REENTRANT,
            DECODING.to_owned(),
        ));
    }
    Ok(())
}

/// The failure of a lane that replied `status`, with its message in `out`.
#[cold]
#[inline(never)]
fn lane_failed(status: u32, out: RawSlice) -> LaneFailure {
    // SAFETY: the guest's message buffer is valid until its next lane fails on this thread.
    let message = String::from_utf8_lossy(unsafe { out.as_slice() }).into_owned();
    LaneFailure::Status(status, message)
}

/// Why a call is refused while this thread decodes a result of the same native plugin.
const DECODING: &str = "called while this thread was still decoding an earlier result of the \
     same plugin (a Deserialize impl that calls plugins?), whose result buffer the call would \
     overwrite; decode into plain data first, then make the call";

/// The reply of a call refused because this thread is decoding a result of the same plugin.
#[cold]
#[inline(never)]
fn reentrant<T>(then: impl FnOnce(Reply<'_>) -> T) -> T {
    then(Reply {
        status: host_status::REENTRANT,
        bytes: DECODING.as_bytes(),
    })
}
