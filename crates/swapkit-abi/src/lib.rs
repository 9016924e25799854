#![doc = include_str!("../ABI.md")]
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

mod fingerprint;
mod header;
mod interface;
mod manifest;
mod status;

pub mod hash;
pub mod wire;

pub use fingerprint::Fingerprint;
pub use header::{
    level, CallFn, EntryPoints, FreeFn, HostApi, InitFn, LoadFn, ManifestFn, PluginHeader,
    RawSlice, ABI_VERSION, FLAG_PANIC_UNWIND, HEADER_SYMBOL_PREFIX, MAGIC, PATCH_INTERFACE,
};
pub use interface::{Dispatch, DispatchError, Interface, Transport};
pub use manifest::{Dependency, InterfaceDecl, Manifest, PatchDecl};
pub use status::Status;

/// Turns a trait into a swapkit interface: a typed host client, the guest dispatch and the
/// interface hash. See the crate docs of `swapkit` for a full example.
pub use swapkit_macros::interface;

#[doc(hidden)]
pub mod __private {
    pub use alloc::vec::Vec;
    pub use core;
}
