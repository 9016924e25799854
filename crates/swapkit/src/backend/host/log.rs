//! Log lines from plugins: the `log` host function of ABI v1.
//!
//! Every line becomes a `tracing` event (target `swapkit::guest`) carrying the plugin's name
//! and version, and is also handed to the host's [`LogSink`], if it set one.
//!
//! A plugin cannot flood the host through its log: a line is cut at [`MAX_LINE`] bytes (before
//! it is even copied out of a wasm guest's memory), and each instance may write [`BURST`] lines
//! at once and [`PER_SECOND`] a second after that. Lines past the rate are dropped and
//! counted; the count is reported, as a warning from the plugin, with its next line admitted.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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

/// The longest log line a plugin may write, in bytes; the rest is cut, and the line says how
/// many bytes were.
pub(crate) const MAX_LINE: usize = 4096;
/// How many lines an instance may log at once.
pub(crate) const BURST: u32 = 200;
/// How many lines a second an instance may log after a burst.
pub(crate) const PER_SECOND: u32 = 100;

/// One instance's log budget: a token bucket, and the lines dropped since the last report.
#[derive(Debug)]
pub(crate) struct LogBudget(Mutex<Bucket>);

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    dropped: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget(Mutex::new(Bucket {
            tokens: f64::from(BURST),
            last: Instant::now(),
            dropped: 0,
        }))
    }
}

impl LogBudget {
    /// Takes a line's token. `Some(n)` admits the line, `n` being the lines dropped since the
    /// last line admitted; `None` drops it.
    fn admit(&self) -> Option<u64> {
        let mut b = crate::lock::lock(&self.0);
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * f64::from(PER_SECOND);
        b.tokens = (b.tokens + refill).min(f64::from(BURST));
        b.last = now;
        if b.tokens < 1.0 {
            b.dropped += 1;
            return None;
        }
        b.tokens -= 1.0;
        Some(std::mem::take(&mut b.dropped))
    }
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
        let shown = len.min(MAX_LINE);
        // SAFETY: upheld by the caller: `msg` points to `len` readable bytes, and `shown` is
        // no more than `len`.
        let bytes = unsafe {
            swapkit_abi::RawSlice {
                ptr: msg,
                len: shown,
            }
            .as_slice()
        };
        emit(
            &ctx,
            raw_level,
            &String::from_utf8_lossy(bytes),
            len - shown,
        );
    }));
}

/// Turns one guest log line, of which `cut` bytes were cut off, into a `tracing` event and
/// hands it to the sink, if the instance's log budget admits it.
pub(crate) fn emit(ctx: &GuestCtx, raw_level: u32, message: &str, cut: usize) {
    let Some(dropped) = ctx.log_budget.admit() else {
        return;
    };
    if dropped > 0 {
        let notice = format!(
            "[swapkit] {dropped} log lines of this plugin were dropped: more than {PER_SECOND} a \
             second after a burst of {BURST}"
        );
        line(ctx, level::WARN, &notice);
    }
    if cut > 0 {
        line(
            ctx,
            raw_level,
            &format!("{message}… [{cut} more bytes cut]"),
        );
    } else {
        line(ctx, raw_level, message);
    }
}

fn line(ctx: &GuestCtx, raw_level: u32, message: &str) {
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
    if let Some(sink) = &ctx.services.sink {
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
