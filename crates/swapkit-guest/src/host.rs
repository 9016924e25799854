//! The guest's handle on the host functions of ABI v1.

use swapkit_abi::{level, HostApi};

/// A log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// An error.
    Error,
    /// A warning.
    Warn,
    /// Information.
    Info,
    /// Debugging detail.
    Debug,
    /// Tracing detail.
    Trace,
}

/// The host functions this instance may call. It is `Copy`: keep one in the plugin type to
/// log from methods.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    api: HostApi,
}

impl Host {
    /// # Safety
    /// `api` must point to a valid table whose context outlives the instance.
    pub(crate) unsafe fn from_raw(api: *const HostApi) -> Host {
        // SAFETY: upheld by the caller; the table is copied so the host may free its own.
        Host {
            api: unsafe { *api },
        }
    }

    /// Writes a log line through the host, attributed to this plugin and its version.
    pub fn log(&self, level: Level, message: &str) {
        let raw = match level {
            Level::Error => level::ERROR,
            Level::Warn => level::WARN,
            Level::Info => level::INFO,
            Level::Debug => level::DEBUG,
            Level::Trace => level::TRACE,
        };
        // SAFETY: the host guarantees `log` and `ctx` stay valid for the instance's lifetime,
        // and `message` is valid UTF-8 for the length passed.
        unsafe { (self.api.log)(self.api.ctx, raw, message.as_ptr(), message.len()) }
    }

    /// Logs at [`Level::Error`].
    pub fn error(&self, message: &str) {
        self.log(Level::Error, message)
    }

    /// Logs at [`Level::Warn`].
    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message)
    }

    /// Logs at [`Level::Info`].
    pub fn info(&self, message: &str) {
        self.log(Level::Info, message)
    }

    /// Logs at [`Level::Debug`].
    pub fn debug(&self, message: &str) {
        self.log(Level::Debug, message)
    }
}
