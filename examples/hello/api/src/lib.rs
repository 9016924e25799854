//! The interface the hello host and its greeter plugins share. Host and plugins depend on this
//! one crate, so both see the same interface hash.

/// Greets people.
#[swapkit_abi::interface]
pub trait Greeter {
    /// A greeting for `name`.
    fn greet(&self, name: &str) -> String;
    /// The version of the plugin answering.
    fn version(&self) -> String;
}
