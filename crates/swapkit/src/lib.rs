//! swapkit: hot code swapping for long-running Rust services.
//!
//! A service keeps its sockets, connections and in-memory state while its business logic is
//! replaced underneath it: no restart, no dropped call, and a rollback a moment later if the
//! new code misbehaves.
//!
//! The pieces:
//! - an **interface** is a Rust trait marked [`#[swapkit::interface]`](interface) in a crate
//!   the host and its plugins share; it yields a typed client (for `trait Greeter`, the type
//!   `GreeterClient<Binding>`) and a hash checked at load. The shared crate depends on
//!   `swapkit-abi` alone and writes `#[swapkit_abi::interface]` (the same macro), so that it
//!   builds for wasm plugins too;
//! - a **plugin** implements interfaces with the `swapkit-guest` SDK and is built as a native
//!   `cdylib`, as a `wasm32-unknown-unknown` module (sandboxed, limited and truly unloadable;
//!   see `WasmLimits`), or linked statically;
//! - the [`Swapper`] loads plugins into a **generation**, publishes it with one atomic swap,
//!   and retires the old one when its last call or [`Pin`] ends;
//! - typed clients call the current generation with no lock and no shared counter on the
//!   call path.
//!
//! Example: the host side.
//!
//! ```no_run
//! // In a crate shared by host and plugin:
//! mod api {
//!     #[swapkit::interface]
//!     pub trait Greeter {
//!         fn greet(&self, name: &str) -> String;
//!     }
//! }
//!
//! let swapper = swapkit::Swapper::new()?;
//! swapper.load_dir("plugins/")?;
//! let greeter = swapper.client::<dyn api::Greeter>()?;
//! assert!(greeter.greet("world")?.contains("world"));
//!
//! // A unit of work pins one generation, so it never mixes versions:
//! let pin = swapper.pin();
//! let pinned = pin.client::<dyn api::Greeter>();
//! swapper.reload()?; // new calls see the new code; `pinned` still calls the old
//! pinned.greet("again")?;
//! drop(pin); // the old generation retires now: its plugins' on_free runs
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Before production, read [`docs::limitations`], [`docs::consistency`] and
//! [`docs::performance`].
//!
//! # Cargo features
//! - `wasm` (default): the wasm backend, with wasmtime. Without it, a `.wasm` artifact is
//!   refused with [`LoadError::BackendDisabled`].
//! - `ops` (default): the admin socket, the file watcher, reload on a signal, probation and
//!   auto-rollback (`Probation`), and metrics.
//!
//! Native plugins' code mappings are never unmapped: Rust `cdylib`s register thread-local
//! destructors, which makes `dlclose` unsound. Every object a generation owns is still dropped
//! when it retires, and loading content seen before reuses its mapping. The ABI itself is
//! specified in the `swapkit-abi` crate (`ABI.md`).

#![deny(missing_docs)]

mod alarm;
mod backend;
mod call;
pub mod canary;
mod candidate;
pub mod docs;
mod error;
mod files;
mod generation;
mod hazard;
mod history;
mod key;
mod live;
mod load;
mod lock;
#[cfg(feature = "ops")]
mod ops;
pub mod patch;
mod persist;
mod plan;
mod private_dir;
mod probation;
mod publish;
mod reload;
mod route;
mod sandbox;
mod stats;
mod status;
mod swapper;
mod trigger;
mod vault;

pub use backend::host::{GuestLog, LogSink};
#[cfg(feature = "wasm")]
pub use backend::wasm::{Exhausted, WasmLimits};
pub use backend::BackendKind;
pub use call::{Binding, Each, Pin, Pinned};
pub use candidate::Candidate;
pub use error::{
    BoxError, CallError, CallSite, DrainTimeout, InterfaceMismatch, LoadError, VaultError,
};
pub use history::{KeptSelection, RollbackTarget};
pub use live::LiveFn;
pub use probation::Probation;
pub use status::{
    CallCounts, DrainedGeneration, GenerationState, GenerationStatus, PinInfo, PluginStatus, Status,
};
pub use swapkit_abi as abi;
pub use swapkit_abi::{interface, ExtendedHeader, Interface, Plain, PluginHeader, StaticHeader};
pub use swapkit_abi::{LiveData, LiveType};
#[cfg(feature = "ops")]
pub use swapkit_admin as admin;
pub use vault::Vault;

/// Routes a function, every method of an impl block, or every function and method of an inline
/// module through a patch slot, so that it can be patched at runtime. See [`patch`](mod@patch)
/// for the whole story.
///
/// - On a free function: `#[swapkit::patchable] fn price(..) -> ..`; name it as
///   `swapkit::target!(path::price)`.
/// - On an impl block, inherent or of a trait, every method becomes patchable: name them as
///   `swapkit::target!(Type::method)` or `swapkit::target!(<Type as Trait>::method)`.
///
/// `#[patchable(plugin)]` also lets plugins patch it ([`patch::PluginPatches`]): its arguments
/// then cross to the plugin in the wire encoding, so they must be `Serialize` (and not
/// `&mut`), and its result `DeserializeOwned`.
///
/// An `async fn` with owned arguments is patchable too: its replacement is a closure returning
/// a future (`|id| async move { .. }`). The future holds its patch until it completes, and a
/// panic while it is polled is handled like any other (it becomes the target's error when it
/// returns `Result<_, E: From<PatchPanic>>`, and propagates otherwise).
///
/// Generic functions and impl blocks, `const` functions, async methods taking `self`, and
/// `impl Trait` in a signature are compile errors: a patch slot has one concrete signature.
///
/// On an inline module (`#[swapkit::patchable] mod pricing { .. }`), every eligible function
/// and method inside, in nested inline modules too, becomes patchable with no change to it.
/// One that is not eligible is left as it is, with a one-line note in
/// [`patch::skipped()`](patch::skipped) (unless it carries its own `#[patchable]`, which makes
/// it the compile error above); `#[patchable(skip)]` leaves an item out; tests are left out.
/// Default methods of a trait defined in the module become patchable in each of the module's
/// impls of it that does not override them (the impl gets a copy of the default's body).
///
/// ```
/// #[swapkit::patchable]
/// mod pricing {
///     pub fn quote(units: u64) -> u64 {
///         units * 100
///     }
///     pub fn largest<T: Ord>(items: Vec<T>) -> Option<T> {
///         items.into_iter().max() // generic: skipped, with a note
///     }
///     #[swapkit::patchable(skip)]
///     pub fn hot_loop(x: u64) -> u64 {
///         x + 1 // left out on purpose
///     }
/// }
///
/// let _g = swapkit::patch!(pricing::quote, |units| units * 90).apply().unwrap();
/// assert_eq!(pricing::quote(2), 180);
/// assert!(swapkit::patch::skipped().iter().any(|s| s.name.ends_with("pricing::largest")));
/// ```
pub use swapkit_macros::patchable;

/// The `&'static` [`patch::Target`] of a `#[patchable]` function: `target!(path::to::f)`,
/// `target!(Type::method)` or `target!(<Type as Trait>::method)`.
pub use swapkit_macros::target;

pub use load::{
    inspect, inspect_checked, inspect_file, Artifact, FileCheck, FileClaims, HeaderCheck,
};
pub use publish::OverdueHook;

/// The largest artifact swapkit reads: 256 MiB, far above any real plugin.
pub const MAX_ARTIFACT: u64 = files::MAX_ARTIFACT;

/// Reads an artifact file as a load reads one from the state directory: a regular file (a
/// FIFO, a device or a socket is refused before a byte is read, and opening never blocks), of
/// at most [`MAX_ARTIFACT`] bytes (a file that grows while it is read stops there), with no
/// symbolic link as its last component. For tools and extensions that fetch artifacts for a
/// host (`swapkit-fleet` does).
pub fn read_artifact(path: impl AsRef<std::path::Path>) -> Result<Vec<u8>, LoadError> {
    files::read_artifact(path.as_ref(), true)
}

/// swapkit's directory in this user's cache (`$XDG_CACHE_HOME/swapkit`, or
/// `~/.cache/swapkit`), where its caches default to; `None` without either variable. Never a
/// shared directory: what is cached there becomes code. Make what goes in it with
/// [`ensure_private_dir`].
pub fn user_cache_dir() -> Option<std::path::PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => std::path::PathBuf::from(dir),
        _ => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
    };
    Some(base.join("swapkit"))
}

/// Makes `dir` if needed (mode 0700) and checks it as swapkit checks its state directory: a
/// directory, not a link, owned by this process's user and writable by no one else. A
/// directory whose files become code (fetched artifacts, caches) must be one; a directory
/// that fails the check is refused, never loosened.
pub fn ensure_private_dir(dir: impl AsRef<std::path::Path>) -> std::io::Result<()> {
    private_dir::ensure(dir.as_ref())
}
pub use reload::ReloadReport;
pub use sandbox::{Grant, Quota, Sandbox};
/// A [`patch::PatchBuilder`] for a `#[patchable]` function:
/// `patch!(path::to::f, |args..| replacement).rollout(..).apply()`. The replacement's
/// signature is checked at compile time.
pub use swapkit_macros::patch;
/// Signed releases: keys, signature files, and the [`TrustPolicy`] a host checks every
/// artifact against ([`SwapperBuilder::trust`]).
pub use swapkit_trust as trust;
pub use swapkit_trust::TrustPolicy;
pub use swapper::{CanaryBuilder, Extension, Swapper, SwapperBuilder};
pub use trigger::Trigger;

/// Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): not part of the API.
#[doc(hidden)]
pub mod __fuzz {
    /// Finds and checks a plugin header in a native library's bytes, as `inspect_file` and
    /// every native load do before anything is mapped.
    pub fn native_header(bytes: &[u8]) -> bool {
        crate::backend::native::header_in_file(std::path::Path::new("fuzz"), bytes).is_ok()
    }
}
