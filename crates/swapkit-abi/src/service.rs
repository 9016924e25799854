//! Host services: what a plugin asks of its host beyond logging, through one function,
//! [`HostApi::service`](crate::HostApi::service) (on wasm, the imports `swapkit.service` and
//! `swapkit.reply`).
//!
//! A request is an operation number and a postcard-encoded request value; the reply is a
//! status and, on success, a postcard-encoded reply value. On failure the reply is a UTF-8
//! message. The operations and their request and reply types:
//!
//! | op | request | reply |
//! |---|---|---|
//! | [`VAULT_GET`] | [`Key`] | `Option<`[`Versioned`]`>` |
//! | [`VAULT_PUT`] | [`Put`] | `u64`, the entry's new version |
//! | [`VAULT_CAS`] | [`Cas`] | [`CasReply`] |
//! | [`VAULT_DELETE`] | [`Key`] | `bool`, whether the key existed |
//! | [`VAULT_LIST`] | [`Key`] (a prefix) | `Vec<String>`, sorted |
//! | [`HOST_FN`] | [`Invoke`] (a host function's name) | the function's encoded result |
//! | [`DEPENDENCY`] | [`DependencyCall`] | the method's encoded result |
//! | [`LIVE_NEW`] | [`Invoke`] (a live type's name) | [`LiveData`](crate::LiveData) |
//! | [`LOAD_DATA`] | `()` | `Option<Vec<u8>>`: the host's value for the plugin, postcard-encoded |
//! | [`ASYNC_HOST`] | [`Invoke`] (an async service's name) | a tag, then the result or a ticket |
//! | [`ASYNC_POLL`] | a ticket (u64 LE, raw) | a tag, then the result |
//! | [`ASYNC_CANCEL`] | a ticket (u64 LE, raw) | nothing |
//! | [`ASYNC_WAKE`] | a call's handle (u64 LE, raw) | nothing |
//! | [`ASYNC_DEPENDENCY`] | [`DependencyCall`] | a tag, then the result or a ticket |
//! | [`ASYNC_REGISTER`] | a call's handle (u64 LE, raw) | nothing |

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::live::LiveData;

/// Reads a Vault entry.
pub const VAULT_GET: u32 = 1;
/// Writes a Vault entry, whatever it held.
pub const VAULT_PUT: u32 = 2;
/// Writes or deletes a Vault entry if its version is the expected one.
pub const VAULT_CAS: u32 = 3;
/// Deletes a Vault entry.
pub const VAULT_DELETE: u32 = 4;
/// Lists the Vault keys that start with a prefix.
pub const VAULT_LIST: u32 = 5;
/// Calls a function the host registered for plugins.
pub const HOST_FN: u32 = 6;
/// Calls an interface method of a plugin this one depends on, in the caller's generation.
pub const DEPENDENCY: u32 = 7;
/// Creates a value of a live type by name, in the caller's generation.
pub const LIVE_NEW: u32 = 8;
/// The value the host gave for the calling plugin's `on_load` (Hotswap's OnLoad data), if any.
/// A host that predates it answers "unknown host service".
pub const LOAD_DATA: u32 = 9;

/// Starts the host's async service named in an [`Invoke`], polled once at once. Reply:
/// [`future::READY`](crate::future::READY) and the service's encoded result, or
/// [`future::PENDING`](crate::future::PENDING) and a ticket (u64 LE) to poll. Only while the
/// host polls one of the plugin's async calls, on the thread it polls on.
pub const ASYNC_HOST: u32 = 10;
/// Polls a ticket (u64 LE): [`future::READY`](crate::future::READY) and the result, or
/// [`future::PENDING`](crate::future::PENDING).
pub const ASYNC_POLL: u32 = 11;
/// Drops a ticket (u64 LE) not yet ready: the plugin dropped the future that awaited it.
pub const ASYNC_CANCEL: u32 = 12;
/// Wakes the task that polls the plugin's async call with this handle (u64 LE): what the
/// plugin's own waker does.
pub const ASYNC_WAKE: u32 = 13;

/// Starts an async method of a plugin this one depends on, in the caller's generation: a
/// [`DependencyCall`]. Reply as for [`ASYNC_HOST`]: the method's encoded result, or a ticket.
pub const ASYNC_DEPENDENCY: u32 = 14;

/// Records the waker of the task polling the plugin's async call with this handle (u64 LE),
/// now, within that poll: what the plugin's waker does when it is cloned, so that the clone
/// wakes that task from any thread at once, even before the poll returns. (A host without
/// this service records it when the poll returns, and a wake from another thread before then
/// is lost.)
pub const ASYNC_REGISTER: u32 = 15;

/// A request naming one key (or, for [`VAULT_LIST`], a prefix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// The key.
    pub key: String,
}

/// A Vault entry with its version: 1 for its first write, one more for each later write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    /// The value.
    pub value: LiveData,
    /// The entry's version.
    pub version: u64,
}

/// [`VAULT_PUT`]'s request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    /// The key.
    pub key: String,
    /// The new value.
    pub value: LiveData,
}

/// [`VAULT_CAS`]'s request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cas {
    /// The key.
    pub key: String,
    /// The version the entry must have; 0 means it must be absent.
    pub expected: u64,
    /// The new value; `None` deletes the entry.
    pub value: Option<LiveData>,
}

/// [`VAULT_CAS`]'s reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CasReply {
    /// Written: the entry's new version (0 if deleted).
    Done(u64),
    /// The entry had another version: what it holds now.
    Conflict(Option<Versioned>),
}

/// A call by name: [`HOST_FN`] and [`LIVE_NEW`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoke {
    /// The host function or live type.
    pub name: String,
    /// The postcard-encoded argument tuple.
    pub args: Vec<u8>,
}

/// [`DEPENDENCY`]'s request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependencyCall {
    /// The plugin called; the caller must declare it as a dependency.
    pub plugin: String,
    /// The interface's name.
    pub interface: String,
    /// The interface's hash, as the caller was built with it.
    pub hash: u64,
    /// The method number.
    pub method: u32,
    /// The postcard-encoded argument tuple.
    pub args: Vec<u8>,
}
