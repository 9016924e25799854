//! Version 2 of the greeter plugin. Build it as a cdylib; the hello host loads it.

use std::sync::atomic::{AtomicU64, Ordering};

use swapkit_guest::{Error, Host, Plugin};

/// The plugin instance: counts the greetings it gave.
pub struct Greeter {
    host: Host,
    greeted: AtomicU64,
}

impl Plugin for Greeter {
    fn on_load(host: &Host) -> Result<Self, Error> {
        Ok(Greeter {
            host: *host,
            greeted: AtomicU64::new(0),
        })
    }

    fn on_free(&mut self, host: &Host) {
        let n = self.greeted.load(Ordering::Relaxed);
        host.info(&format!("v2 retiring after {n} greetings"));
    }
}

impl hello_api::Greeter for Greeter {
    fn greet(&self, name: &str) -> String {
        if self.greeted.fetch_add(1, Ordering::Relaxed) == 0 {
            self.host.debug("first greeting");
        }
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
