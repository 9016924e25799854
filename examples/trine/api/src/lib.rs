//! The interfaces of the trine example: `front` depends on `logic`, which depends on `store`.

/// Counts what was asked for; its counts live in the host's Vault.
#[swapkit_abi::interface]
pub trait Store {
    /// Counts one more request for `item`; returns the new count.
    fn record(&self, item: &str) -> u64;
}

/// Prices an item from how often it was asked for.
#[swapkit_abi::interface]
pub trait Logic {
    /// The price of `item`, in cents, and the logic version that made it.
    fn price(&self, item: &str) -> (u64, String);
}

/// What the host calls.
#[swapkit_abi::interface]
pub trait Front {
    /// A quote for `item`, as text.
    fn quote(&self, item: &str) -> String;
}
