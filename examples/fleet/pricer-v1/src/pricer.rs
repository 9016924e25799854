// The pricer's logic, shared by every version's crate; `DISCOUNT` (percent off) and `FAULTY`
// are what a release changes.

use swapkit_guest::{Error, Host, Plugin};

/// The plugin instance.
pub struct Pricer;

impl Plugin for Pricer {
    fn on_load(_: &Host) -> Result<Self, Error> {
        Ok(Pricer)
    }
}

impl fleet_api::Pricer for Pricer {
    fn price(&self, sku: u64) -> u64 {
        if FAULTY {
            panic!("the faulty release cannot price item {sku}");
        }
        let list = 100 + sku % 50;
        list - list * DISCOUNT / 100
    }
}

swapkit_guest::export_plugin! {
    plugin: Pricer,
    name: "pricer",
    interfaces: [fleet_api::Pricer],
}
