//! The swapkit guest SDK: what a plugin crate depends on.
//!
//! A plugin is a type that implements [`Plugin`] (its lifecycle hooks) and one or more
//! interface traits (made with `#[swapkit_abi::interface]` in a crate the host shares), and
//! exports them with one [`export_plugin!`] call. The same source builds as a native `cdylib`
//! or links into a host as a static library; the crate type is the only difference.
//!
//! Example:
//!
//! ```
//! mod api {
//!     #[swapkit_abi::interface]
//!     pub trait Greeter {
//!         fn greet(&self, name: &str) -> String;
//!     }
//! }
//!
//! use swapkit_guest::{Error, Host, Plugin};
//!
//! pub struct Hello {
//!     host: Host,
//! }
//!
//! impl Plugin for Hello {
//!     fn on_load(host: &Host) -> Result<Self, Error> {
//!         host.info("loading");
//!         Ok(Hello { host: *host })
//!     }
//! }
//!
//! impl api::Greeter for Hello {
//!     fn greet(&self, name: &str) -> String {
//!         self.host.debug("greeting");
//!         format!("hello, {name}")
//!     }
//! }
//!
//! swapkit_guest::export_plugin! {
//!     plugin: Hello,
//!     name: "hello",
//!     interfaces: [api::Greeter],
//! }
//! ```
//!
//! Panics in hooks and methods are caught at the boundary and reported to the host as errors,
//! so a native plugin must be built with `panic = "unwind"` (the default); a host refuses one
//! built with `panic = "abort"`.

#![deny(missing_docs)]

mod future;
mod glue;
mod host;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod wasm;

pub use future::HostCall;
pub use host::{Dependency, Host, Level, Vault};
pub use swapkit_abi as abi;
pub use swapkit_abi::{LiveData, LiveType};

/// Exports a plugin type through ABI v1.
///
/// ```text
/// swapkit_guest::export_plugin! {
///     plugin: MyPlugin,                 // implements Plugin and every interface below
///     name: "greeter",                  // optional; default: the package name
///     version: "1.0.0",                 // optional; default: the package version
///     interfaces: [api::Greeter],       // optional; traits made with #[swapkit_abi::interface]
///     dependencies: ["store" => [api::Store]], // optional; plugins to load and init first,
///                                       // with the interfaces of theirs this one calls
///     live: [jobs::run],                // optional; functions marked #[swapkit_guest::live]
///     patches: [fixes::price],          // optional; functions marked #[swapkit_guest::patch]
///     reloadable: false,                // optional; default true
/// }
/// ```
///
/// `reloadable: false` (Hotswap's `Reloadable`) is for a plugin that must keep its one
/// instance for the life of the host process: a connection pool, a licence check. A reload,
/// rollback or canary that would replace or remove it is refused with
/// `LoadError::NotReloadable`; a reload of the other plugins keeps it as it is. A plugin reads
/// the host's value for its `on_load` with [`Host::load_data`].
///
/// It defines `pub static SWAPKIT_PLUGIN`, the plugin header, exported under a symbol named
/// after the crate, so several plugins can be linked into one static host.
pub use swapkit_macros::export_plugin;

/// Exports a free function as a replacement for a host's `#[patchable(plugin)]` function.
///
/// The argument names the target as the host's patch registry does:
/// `host_crate::module::function`, `host_crate::module::Type::method` or
/// `host_crate::module::<Type as Trait>::method`. For a method, take the receiver as the first
/// argument (`this: &Type`). The signature must match the target's; types may be spelled with
/// or without their paths, and lifetimes do not matter. The host checks the signature's hash
/// before it applies anything. List the function in `patches: [..]` of [`export_plugin!`].
///
/// ```
/// pub struct Fixes;
/// impl swapkit_guest::Plugin for Fixes {
///     fn on_load(_: &swapkit_guest::Host) -> Result<Self, swapkit_guest::Error> {
///         Ok(Fixes)
///     }
/// }
///
/// /// A 10% discount instead of the host's price.
/// #[swapkit_guest::patch("pricing_service::price")]
/// fn price(cents: u64, qty: u32) -> u64 {
///     cents * qty as u64 * 9 / 10
/// }
///
/// swapkit_guest::export_plugin! {
///     plugin: Fixes,
///     patches: [price],
/// }
/// ```
pub use swapkit_macros::patch_export as patch;

/// Exports a free function by name, as a live function or as the factory of a live type.
///
/// `#[live]` exports a live function under the function's name (or `#[live(name = "..")]`):
/// a host stores a `LiveFn` handle to it, and every call resolves the handle in the
/// generation current at the time, so a job scheduled under v1 runs v2's code after a swap.
///
/// `#[live(factory = "TypeName")]` exports the factory of live type `TypeName`: it returns a
/// [`LiveData`], and a host or another plugin creates a value of the current version's type by
/// name. List the function in `live: [..]` of [`export_plugin!`].
///
/// ```
/// pub struct Jobs;
/// impl swapkit_guest::Plugin for Jobs {
///     fn on_load(_: &swapkit_guest::Host) -> Result<Self, swapkit_guest::Error> {
///         Ok(Jobs)
///     }
/// }
///
/// #[swapkit_guest::live]
/// fn reminder(user: u64) -> String {
///     format!("user {user}: your turn")
/// }
///
/// swapkit_guest::export_plugin! {
///     plugin: Jobs,
///     live: [reminder],
/// }
/// ```
pub use swapkit_macros::live_export as live;

/// The lifecycle of a plugin instance.
///
/// A host creates one instance per load with [`Plugin::on_load`], then calls
/// [`Plugin::on_init`] once every plugin of the generation has loaded, in dependency order.
/// When the last generation that uses the instance retires, the host calls
/// [`Plugin::on_free`], then drops it. Methods run concurrently on `&self`, hence `Sync`.
pub trait Plugin: Sized + Send + Sync + 'static {
    /// Builds the instance. An error aborts the reload that loads it.
    fn on_load(host: &Host) -> Result<Self, Error>;

    /// Runs after every plugin of the generation has loaded. An error aborts the reload.
    fn on_init(&self, host: &Host) -> Result<(), Error> {
        let _ = host;
        Ok(())
    }

    /// Runs exactly once, when the instance is retired, just before it is dropped.
    fn on_free(&mut self, host: &Host) {
        let _ = host;
    }

    /// Live data: the state this instance hands to the next version of the plugin at a
    /// reload (or to an older one at a rollback). It is read, not taken: if the reload is
    /// aborted, this instance keeps serving with its state as it was. State that many calls
    /// change at once belongs in the [`Vault`]; this is for what the instance holds itself.
    fn save(&self, host: &Host) -> Result<Option<LiveData>, Error> {
        let _ = host;
        Ok(None)
    }

    /// Receives the live data the previous instance saved, after `on_load` and before
    /// `on_init`, like Erlang's `code_change`. `from.schema` says which schema wrote it, newer
    /// or older than this one. An error aborts the reload, and the previous instance keeps
    /// serving. With a self-describing encoding, `from.decode()` already reads a value that
    /// lacks a field with `#[serde(default)]`, so only real schema changes need code here.
    fn migrate(&self, host: &Host, from: LiveData) -> Result<(), Error> {
        let _ = (host, from);
        Ok(())
    }
}

/// An error from a hook. It carries a message for the host's error report.
///
/// Anything that implements `Display` converts into it with `?` or `.into()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn msg(message: impl core::fmt::Display) -> Self {
        Error {
            message: message.to_string(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: core::fmt::Display> From<E> for Error {
    fn from(e: E) -> Self {
        Error::msg(e)
    }
}

#[doc(hidden)]
pub mod __rt {
    pub use crate::glue::{header, Exports, LaneGlue, LiveExport, PatchExport};
    #[cfg(target_arch = "wasm32")]
    pub use crate::wasm;
    pub use std::vec;
    pub use std::vec::Vec;
}
