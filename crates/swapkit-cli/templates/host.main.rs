//! A swapkit host: it serves a plugin from `plugins/` and swaps it while it runs.
//!
//! - Put artifacts in `plugins/` (`swapkit build ../my-plugin --out .` then copy, or publish
//!   with an atomic rename): the watcher reloads once a file is complete.
//! - `kill -HUP <pid>` reloads too.
//! - `swapkit status --socket {{name}}.sock`, `swapkit rollback --socket {{name}}.sock`.

use std::time::Duration;

/// The interface the plugins export. Move it to a crate that the host and its plugins share.
pub mod api {
    #[swapkit_abi::interface]
    pub trait Greeter {
        /// A greeting for `name`.
        fn greet(&self, name: &str) -> String;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let swapper = swapkit::Swapper::builder()
        .interface::<dyn api::Greeter>()
        .admin_socket("{{name}}.sock")
        .watch(Duration::from_millis(200))
        .reload_on_signal(signal_hook::consts::SIGHUP)
        .state_dir("{{name}}.state")
        .auto_rollback(swapkit::Probation::new(Duration::from_secs(30)))
        .build()?;
    std::fs::create_dir_all("plugins")?;
    if let Err(e) = swapper.resume("plugins") {
        eprintln!("no plugin loaded yet ({e}); waiting for one in plugins/");
    }
    let greeter = swapper.client::<dyn api::Greeter>()?;
    let rounds: Option<u64> = std::env::args().nth(1).and_then(|n| n.parse().ok());
    let mut round = 0;
    while rounds.is_none_or(|n| round < n) {
        match greeter.greet("world") {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("{e}"),
        }
        round += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}
