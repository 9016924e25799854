//! `logic` v2: the middle of the chain, the plugin the example reloads. It prices with
//! demand pricing: 10 cents per request so far, reading the count from `store`, its dependency.

use swapkit_guest::{Error, Host, Plugin};

/// The plugin instance.
pub struct Logic {
    host: Host,
}

impl Plugin for Logic {
    fn on_load(host: &Host) -> Result<Self, Error> {
        host.info("on_load");
        Ok(Logic { host: *host })
    }

    fn on_init(&self, host: &Host) -> Result<(), Error> {
        host.info("on_init");
        Ok(())
    }

    fn on_free(&mut self, host: &Host) {
        host.info("on_free");
    }
}

impl trine_api::Logic for Logic {
    fn price(&self, item: &str) -> (u64, String) {
        let store = self.host.dependency::<dyn trine_api::Store>("store");
        let count = store.record(item).unwrap_or(0);
        (100 + 10 * count, "logic v2".into())
    }
}

swapkit_guest::export_plugin! {
    plugin: Logic,
    name: "logic",
    interfaces: [trine_api::Logic],
    dependencies: ["store" => [trine_api::Store]],
}
