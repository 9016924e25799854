//! A patch plugin for `ops-host`: 10% off, applied with `swapkit patch apply`.

use swapkit_guest::{Error, Host, Plugin};

/// The instance; the patch is a free function.
pub struct Discount;

impl Plugin for Discount {
    fn on_load(_host: &Host) -> Result<Self, Error> {
        Ok(Discount)
    }
}

/// 10% off.
#[swapkit_guest::patch("ops_host::pricing::price")]
fn price(cents: u64, qty: u32) -> u64 {
    cents * qty as u64 * 9 / 10
}

swapkit_guest::export_plugin! {
    plugin: Discount,
    name: "discount",
    interfaces: [],
    patches: [price],
}
