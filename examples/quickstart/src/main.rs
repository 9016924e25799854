//! The shortest swapkit host: load a plugin, call it, swap in a new version, roll back, and
//! print the status. The plugins are the hello example's two greeters (`examples/hello`):
//! `hello-api` is the interface crate both sides depend on, and each greeter is a `cdylib`.
//!
//! Run it with `cargo run -p quickstart`.

use std::path::Path;
use std::time::Duration;

use hello_api::{Greeter, GreeterClient};
use swapkit::{Binding, Swapper};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 0. Build both versions of the plugin, and make a plugin directory holding v1.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let built = swapkit_build::PluginBuild::new(workspace)
        .packages(["hello-greeter-v1", "hello-greeter-v2"])
        .run()?;
    let (v1, v2) = (&built[0].path, &built[1].path);
    let dir = tempfile::tempdir()?;
    let live = dir
        .path()
        .join(v1.file_name().ok_or("artifact without a name")?);
    std::fs::copy(v1, &live)?;

    // 1. Load: every artifact in the directory becomes one generation, published at once.
    let swapper = Swapper::new()?;
    let report = swapper.load_dir(dir.path())?;
    println!(
        "1. loaded {:?} as generation {}",
        report.loaded, report.generation
    );

    // 2. Call: a typed client. Each call runs in the generation current when it starts,
    //    with no lock on the way; a plugin's panic or error comes back as a `CallError`.
    let greeter: GreeterClient<Binding> = swapper.client::<dyn Greeter>()?;
    println!("2. {} (v{})", greeter.greet("world")?, greeter.version()?);

    // 3. Reload: publish v2 by an atomic rename, then swap. A call already running keeps v1
    //    until it returns; v1's `on_free` runs once its last call is out.
    let staged = dir.path().join(".greeter.tmp");
    std::fs::copy(v2, &staged)?;
    std::fs::rename(&staged, &live)?;
    let report = swapper.reload()?;
    println!(
        "3. reloaded in {:?}: {}",
        report.took,
        greeter.greet("world")?
    );

    // 4. Roll back: the previous selection is published again from the code kept in memory,
    //    even though v2 is what is on disk now.
    swapper.rollback()?;
    println!(
        "4. rolled back: {} (v{})",
        greeter.greet("world")?,
        greeter.version()?
    );

    // 5. Status: the current generation, its plugins and call counts, and the generations
    //    that drained.
    swapper.wait_drained(Duration::from_secs(5))?;
    print!("5. status:\n{}", swapper.status());
    Ok(())
}
