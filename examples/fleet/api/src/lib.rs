//! The interface the fleet example's hosts and their pricer plugins share.

/// Prices an item.
#[swapkit_abi::interface]
pub trait Pricer {
    /// The price of item `sku`, in cents.
    fn price(&self, sku: u64) -> u64;
}
