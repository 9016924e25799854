//! The host end of the ABI: the functions a guest calls back into (`log`, and `service` for
//! the Vault, host functions, live things and dependency calls), for both backends, and the
//! per-instance context they find their plugin in.

mod log;
mod services;

#[cfg(feature = "wasm")]
pub(crate) use log::MAX_LINE;
pub(crate) use log::{host_log, LogBudget};
pub use log::{GuestLog, LogSink};
pub(crate) use services::{enter, find_live, host_service};
#[cfg(feature = "wasm")]
pub(crate) use {log::emit, services::serve_contained};

use std::sync::Arc;

use crate::Vault;

/// What the host table's `ctx` points at: one per instance.
pub(crate) struct GuestCtx {
    pub plugin: Arc<str>,
    pub version: Arc<str>,
    pub sink: Option<LogSink>,
    /// The swapper's Vault, for the `service` host function.
    pub vault: Vault,
    /// What the plugin's manifest declares it depends on.
    pub dependencies: Vec<swapkit_abi::Dependency>,
    /// How many more lines this instance may log now.
    pub log_budget: LogBudget,
}

impl GuestCtx {
    /// The context of an instance of `code`.
    pub fn new(code: &crate::backend::Code, sink: Option<LogSink>, vault: Vault) -> GuestCtx {
        GuestCtx {
            plugin: code.name.clone(),
            version: code.version.clone(),
            sink,
            vault,
            dependencies: code.manifest.dependencies.clone(),
            log_budget: LogBudget::default(),
        }
    }

    /// The context of a module being probed, before it is known: no sink, an empty Vault.
    #[cfg(feature = "wasm")]
    pub fn probe() -> GuestCtx {
        GuestCtx {
            plugin: "?".into(),
            version: "?".into(),
            sink: None,
            vault: Vault::new(),
            dependencies: vec![],
            log_budget: LogBudget::default(),
        }
    }
}
