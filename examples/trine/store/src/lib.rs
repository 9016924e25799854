//! `store`: the bottom of the chain. Its counts live in the host's Vault, so they survive
//! every swap of any plugin, this one included.

use swapkit_guest::{Error, Host, Plugin};

/// The plugin instance.
pub struct Store {
    host: Host,
}

impl Plugin for Store {
    fn on_load(host: &Host) -> Result<Self, Error> {
        host.info("on_load");
        Ok(Store { host: *host })
    }

    fn on_init(&self, host: &Host) -> Result<(), Error> {
        host.info("on_init");
        Ok(())
    }

    fn on_free(&mut self, host: &Host) {
        host.info("on_free");
    }
}

impl trine_api::Store for Store {
    fn record(&self, item: &str) -> u64 {
        // A plugin writes its own part of the Vault, `<plugin name>/`, unless the host's
        // Sandbox grants it more.
        let key = format!("store/count/{item}");
        match self
            .host
            .vault()
            .update(&key, |n: Option<u64>| n.unwrap_or(0) + 1)
        {
            Ok(n) => n,
            Err(e) => {
                self.host
                    .error(&format!("cannot count {item}: {}", e.message()));
                0
            }
        }
    }
}

swapkit_guest::export_plugin! {
    plugin: Store,
    name: "store",
    interfaces: [trine_api::Store],
}
