//! A faulty new pricing engine: it passes a smoke test, then panics on one item in seven (a
//! division by a zero weight nobody expected).

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
        let weight = sku % 7;
        let list = (100 + 3 * (sku % 100)) * qty as u64;
        let per_weight = list.checked_div(weight).expect("every item has a weight");
        (per_weight * weight, env!("CARGO_PKG_VERSION").into())
    }
}

swapkit_guest::export_plugin! {
    plugin: Pricing,
    name: "pricing",
    interfaces: [canary_api::Pricing],
}
