//! `front`: the top of the chain. The host calls it; it calls `logic`, which calls `store`.
//! Every call reaches the `logic` of the caller's own generation, so a request pinned to a
//! generation keeps its logic even after `logic` is reloaded.

use swapkit_guest::{Error, Host, Plugin};

/// The plugin instance.
pub struct Front {
    host: Host,
}

impl Plugin for Front {
    fn on_load(host: &Host) -> Result<Self, Error> {
        host.info("on_load");
        Ok(Front { host: *host })
    }

    fn on_init(&self, host: &Host) -> Result<(), Error> {
        host.info("on_init");
        Ok(())
    }

    fn on_free(&mut self, host: &Host) {
        host.info("on_free");
    }
}

impl trine_api::Front for Front {
    fn quote(&self, item: &str) -> String {
        let logic = self.host.dependency::<dyn trine_api::Logic>("logic");
        match logic.price(item) {
            Ok((cents, by)) => format!("{item}: {}.{:02} ({by})", cents / 100, cents % 100),
            Err(e) => format!("{item}: no price ({})", e.message()),
        }
    }
}

swapkit_guest::export_plugin! {
    plugin: Front,
    name: "front",
    interfaces: [trine_api::Front],
    dependencies: ["logic" => [trine_api::Logic]],
}
