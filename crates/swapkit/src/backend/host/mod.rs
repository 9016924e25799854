//! The host end of the ABI: the functions a guest calls back into (`log`, and `service` for
//! the Vault, host functions, live things and dependency calls), for both backends, and the
//! per-instance context they find their plugin in.

mod futures;
mod log;
mod services;

pub(crate) use futures::{forget, polling, remember, Tickets};
#[cfg(feature = "wasm")]
pub(crate) use log::MAX_LINE;
pub(crate) use log::{host_log, LogBudget};
pub use log::{GuestLog, LogSink};
pub(crate) use services::{enter, enter_routed, find_live, host_service, HOST_STACK};
#[cfg(feature = "wasm")]
pub(crate) use {log::emit, services::serve_contained};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::sandbox::{Policy, Sandbox};
use crate::Vault;

/// What the host offers every instance it makes: where logs go, the Vault, and the rules
/// requests are checked against.
#[derive(Clone)]
pub(crate) struct Services {
    pub sink: Option<LogSink>,
    pub vault: Vault,
    pub sandbox: Arc<Sandbox>,
    /// The native stack a nested call into a plugin must find left (see `services::open`).
    pub nested_stack: usize,
    /// The values the host hands to plugins' `on_load` (`Host::load_data`).
    pub load_data: Arc<LoadData>,
}

/// The values a host hands to its plugins for `on_load`, encoded: one for every plugin, and
/// one per plugin name that takes precedence over it.
#[derive(Default)]
pub(crate) struct LoadData {
    pub all: Option<Vec<u8>>,
    pub by_plugin: std::collections::HashMap<String, Vec<u8>>,
}

impl LoadData {
    /// What `plugin` gets.
    pub fn get(&self, plugin: &str) -> Option<&[u8]> {
        self.by_plugin
            .get(plugin)
            .or(self.all.as_ref())
            .map(Vec::as_slice)
    }
}

impl Services {
    /// Services with `sink`, `vault` and `sandbox`, for guests whose wasm stack may reach
    /// `wasm_stack` bytes.
    pub fn new(
        sink: Option<LogSink>,
        vault: Vault,
        sandbox: Sandbox,
        wasm_stack: usize,
    ) -> Services {
        Services {
            sink,
            vault,
            sandbox: Arc::new(sandbox),
            nested_stack: wasm_stack + services::HOST_STACK,
            load_data: Arc::default(),
        }
    }

    /// No sink, a Vault of its own, the default sandbox: for a plugin outside any swapper.
    pub fn detached() -> Services {
        Services::new(None, Vault::new(), Sandbox::default(), 512 << 10)
    }
}

/// What the host table's `ctx` points at: one per instance.
pub(crate) struct GuestCtx {
    /// Unique to the instance, for telling a re-entry into it (see `services.rs`).
    pub id: u64,
    pub plugin: Arc<str>,
    pub version: Arc<str>,
    /// Where its logs go, the Vault, the sandbox.
    pub services: Services,
    /// What the plugin may reach.
    pub policy: Policy,
    /// What the plugin's manifest declares it depends on.
    pub dependencies: Vec<swapkit_abi::Dependency>,
    /// How many more lines this instance may log now.
    pub log_budget: LogBudget,
}

impl GuestCtx {
    /// The context of an instance of `code`. Starts counting the Vault namespaces it writes
    /// through, for its quota.
    pub fn new(code: &crate::backend::Code, services: &Services) -> GuestCtx {
        GuestCtx::new_as(code, services, code.name.clone())
    }

    /// The context of an instance of `code` that the host loaded as `identity`: its Vault
    /// namespace and grants are `identity`'s, whatever name the plugin's manifest claims (its
    /// log lines still carry that name, which is what an operator looks for).
    pub fn new_as(
        code: &crate::backend::Code,
        services: &Services,
        identity: Arc<str>,
    ) -> GuestCtx {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let policy = services.sandbox.policy(&identity);
        for ns in policy.namespaces() {
            services.vault.track(ns);
        }
        GuestCtx {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            plugin: code.name.clone(),
            version: code.version.clone(),
            services: services.clone(),
            policy,
            dependencies: code.manifest.dependencies.clone(),
            log_budget: LogBudget::default(),
        }
    }

    /// The context of a module being probed, before it is known: no sink, an empty Vault.
    #[cfg(feature = "wasm")]
    pub fn probe() -> GuestCtx {
        GuestCtx {
            id: 0,
            plugin: "?".into(),
            version: "?".into(),
            services: Services::detached(),
            policy: Sandbox::default().policy("?"),
            dependencies: vec![],
            log_budget: LogBudget::default(),
        }
    }
}
