//! Version 2 of the greeter plugin. Build it as a cdylib; the hello host loads it.

use std::time::Instant;

use swapkit_guest::{Error, Host, Plugin};

/// The plugin instance. It keeps no shared mutable state on the call path, so calls from many
/// threads never contend inside it.
pub struct Greeter {
    loaded: Instant,
}

impl Plugin for Greeter {
    fn on_load(host: &Host) -> Result<Self, Error> {
        host.debug("v2 loaded");
        Ok(Greeter {
            loaded: Instant::now(),
        })
    }

    fn on_free(&mut self, host: &Host) {
        let served = self.loaded.elapsed();
        host.info(&format!("v2 retiring after serving for {served:.1?}"));
    }
}

impl hello_api::Greeter for Greeter {
    fn greet(&self, name: &str) -> String {
        format!("Hi there, {name} :)")
    }

    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }
}

swapkit_guest::export_plugin! {
    plugin: Greeter,
    name: "greeter",
    interfaces: [hello_api::Greeter],
}
