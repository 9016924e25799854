//! The stable pricing engine: 100 cents plus 3 per sku number, times the quantity.

use swapkit_guest::{Error, Host, Plugin};

/// The plugin instance; it keeps no state.
pub struct Pricing;

impl Plugin for Pricing {
    fn on_load(_: &Host) -> Result<Self, Error> {
        Ok(Pricing)
    }
}

impl canary_api::Pricing for Pricing {
    fn price(&self, sku: u64, qty: u32) -> (u64, String) {
        (
            (100 + 3 * (sku % 100)) * qty as u64,
            env!("CARGO_PKG_VERSION").into(),
        )
    }
}

swapkit_guest::export_plugin! {
    plugin: Pricing,
    name: "pricing",
    interfaces: [canary_api::Pricing],
}
