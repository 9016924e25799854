//! A good new pricing engine: list price, with 10% off orders of ten or more.

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
        let list = (100 + 3 * (sku % 100)) * qty as u64;
        let price = if qty >= 10 { list * 9 / 10 } else { list };
        (price, env!("CARGO_PKG_VERSION").into())
    }
}

swapkit_guest::export_plugin! {
    plugin: Pricing,
    name: "pricing",
    interfaces: [canary_api::Pricing],
}
