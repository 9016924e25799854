//! Log lines from plugins: the `log` host function of ABI v1.
//!
//! Every line becomes a `tracing` event (target `swapkit::guest`) carrying the plugin's name
//! and version, and is also handed to the host's [`LogSink`], if it set one.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use swapkit_abi::level;
use swapkit_sync::HazardCell;

use super::GuestCtx;

/// A host callback that receives every log line a plugin writes.
pub type LogSink = Arc<dyn Fn(&GuestLog<'_>) + Send + Sync>;

/// One log line written by a plugin.
#[derive(Debug, Clone, Copy)]
pub struct GuestLog<'a> {
    /// The plugin's name.
    pub plugin: &'a str,
    /// The plugin's version.
    pub version: &'a str,
    /// The level.
    pub level: tracing::Level,
    /// The text.
    pub message: &'a str,
}

/// The `log` host function of native instances. A line logged after the instance was freed
/// (by a thread the plugin left running) is dropped.
///
/// # Safety
/// `ctx` must be the pointer the instance's host table was made with (a leaked
/// `HazardCell<GuestCtx>`), and `msg` must point to `len` readable bytes.
pub(crate) unsafe extern "C" fn host_log(
    ctx: *const c_void,
    raw_level: u32,
    msg: *const u8,
    len: usize,
) {
    // An unwind must never cross back into the guest, so a panicking sink is contained here.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: upheld by the caller: the guest passes back the pointer it was given, to a
        // cell that is never freed.
        let cell = unsafe { &*(ctx as *const HazardCell<GuestCtx>) };
        let Some(ctx) = cell.enter() else {
            return;
        };
        // SAFETY: upheld by the caller.
        let bytes = unsafe { swapkit_abi::RawSlice { ptr: msg, len }.as_slice() };
        emit(&ctx, raw_level, &String::from_utf8_lossy(bytes));
    }));
}

/// Turns one guest log line into a `tracing` event and hands it to the sink.
pub(crate) fn emit(ctx: &GuestCtx, raw_level: u32, message: &str) {
    let level = match raw_level {
        level::ERROR => tracing::Level::ERROR,
        level::WARN => tracing::Level::WARN,
        level::INFO => tracing::Level::INFO,
        level::DEBUG => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let (plugin, version) = (&*ctx.plugin, &*ctx.version);
    match level {
        tracing::Level::ERROR => {
            tracing::error!(target: "swapkit::guest", plugin, version, "{message}")
        }
        tracing::Level::WARN => {
            tracing::warn!(target: "swapkit::guest", plugin, version, "{message}")
        }
        tracing::Level::INFO => {
            tracing::info!(target: "swapkit::guest", plugin, version, "{message}")
        }
        tracing::Level::DEBUG => {
            tracing::debug!(target: "swapkit::guest", plugin, version, "{message}")
        }
        _ => tracing::trace!(target: "swapkit::guest", plugin, version, "{message}"),
    }
    if let Some(sink) = &ctx.sink {
        // A panicking sink must not unwind into a guest or a wasm host function.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            sink(&GuestLog {
                plugin,
                version,
                level,
                message,
            })
        }));
    }
}
