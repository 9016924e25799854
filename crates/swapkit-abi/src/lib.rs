#![doc = include_str!("../ABI.md")]
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

pub mod claims;
mod fingerprint;
mod header;
mod interface;
mod live;
mod manifest;
mod status;

pub mod future;
pub mod hash;
pub mod lane;
pub mod service;
pub mod wire;

pub use fingerprint::Fingerprint;
pub use header::{
    level, CallFn, EntryPoints, FreeFn, HostApi, InitFn, LoadFn, ManifestFn, PluginHeader,
    RawSlice, ServiceFn, ABI_VERSION, ASYNC_INTERFACE, FLAG_EXTENDED, FLAG_PANIC_UNWIND,
    HEADER_SYMBOL_PREFIX, LIFECYCLE_INTERFACE, LIVE_INTERFACE, MAGIC, METHOD_MIGRATE, METHOD_SAVE,
    PATCH_INTERFACE,
};
pub use interface::{Dispatch, DispatchError, Interface, Transport};
pub use lane::{ExtendedHeader, Plain, StaticHeader};
pub use live::{LiveData, LiveError, LiveType};
pub use manifest::{Dependency, ExportDecl, InterfaceDecl, LiveKind, Manifest, Options, PatchDecl};
pub use status::Status;

/// Turns a trait into a swapkit interface: a typed host client, the guest dispatch and the
/// interface hash. See the crate docs of `swapkit` for a full example.
///
/// A method whose arguments and result are all plain data gets a direct lane (ABI.md §10):
/// its arguments cross as they are, with no encoding. `#[interface(plain = [Point, Quote])]`
/// lists the `#[derive(Plain)]` structs that may take part; their layouts join the hash.
/// `#[interface(name = "...")]` exports the trait under another name.
pub use swapkit_macros::interface;

/// Marks a `#[repr(C)]` struct as plain data that a direct lane passes as it is: every field
/// plain (numbers, `bool`, `char`, arrays and other plain structs), and no padding. List it in
/// `#[interface(plain = [Type])]` for the methods that pass it to get a lane.
pub use swapkit_macros::Plain;

#[doc(hidden)]
pub mod __private {
    pub use alloc::boxed::Box;
    pub use alloc::string::String;
    pub use alloc::vec::Vec;
    pub use core;
}
