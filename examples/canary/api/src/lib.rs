//! The interface the canary example's host and its pricing plugins share.

/// Prices orders.
#[swapkit_abi::interface]
pub trait Pricing {
    /// The price in cents of `qty` of item `sku`, and the version of the engine that made it.
    fn price(&self, sku: u64, qty: u32) -> (u64, String);
}
