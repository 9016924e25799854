//! A swapkit plugin. Build it with `swapkit build` (add `--wasm` for the sandboxed backend),
//! and put the artifact in the host's plugin directory.

/// The interface the host calls. Move it to a crate that the host and its plugins share:
/// the host checks its hash when the plugin loads, so both must see the same trait.
pub mod api {
    #[swapkit_abi::interface]
    pub trait Greeter {
        /// A greeting for `name`.
        fn greet(&self, name: &str) -> String;
    }
}

use swapkit_guest::{Error, Host, Plugin};

/// The plugin instance: made by `on_load`, freed when its generation retires.
pub struct {{type}} {
    host: Host,
}

impl Plugin for {{type}} {
    fn on_load(host: &Host) -> Result<Self, Error> {
        host.info("loaded");
        Ok({{type}} { host: *host })
    }
}

impl api::Greeter for {{type}} {
    fn greet(&self, name: &str) -> String {
        self.host.info("greeting");
        format!("hello, {name}, from {{name}} {}", env!("CARGO_PKG_VERSION"))
    }
}

swapkit_guest::export_plugin! {
    plugin: {{type}},
    name: "{{name}}",
    interfaces: [api::Greeter],
}
