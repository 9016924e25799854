//! Three plugins in a dependency chain, `front` -> `logic` -> `store`, with the middle one
//! reloaded while a request pinned to the old generation is still running.
//!
//! The swapper loads them in dependency order (`store`, `logic`, `front`), runs `on_init` in
//! the same order and `on_free` in reverse. A reload that replaces only `logic` keeps the
//! other two instances; the counts that `store` keeps in the Vault carry on. A call through
//! the pin taken before the reload still reaches `logic` v1, because a dependency call resolves
//! in the caller's own generation, even though `front` is the same instance in both.
//!
//! Run it with `cargo run -p trine`; it builds the plugins itself. Pass `--wasm` to run the
//! same plugins on the wasm backend.

use std::process::ExitCode;

use swapkit::Swapper;
use trine_api::Front;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trine: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_target(false)
        .init();
    let wasm = std::env::args().any(|a| a == "--wasm");
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../Cargo.toml");
    println!(
        "building the plugins ({})...",
        if wasm { "wasm" } else { "native" }
    );
    let mut build = swapkit_build::PluginBuild::new(workspace).packages([
        "trine-store",
        "trine-logic-v1",
        "trine-logic-v2",
        "trine-front",
    ]);
    if wasm {
        build = build.wasm().release(true);
    }
    let built: Vec<_> = build.run()?.into_iter().map(|a| a.path).collect();
    let (store, logic_v1, logic_v2, front) = (&built[0], &built[1], &built[2], &built[3]);

    let swapper = Swapper::builder()
        .log_sink(|line| println!("  [{} {}] {}", line.plugin, line.version, line.message))
        .build()?;
    // Listed top first on purpose: the swapper orders them by dependency.
    let report = swapper.load_files([front, logic_v1, store])?;
    println!(
        "generation {}: loaded {:?}",
        report.generation, report.loaded
    );
    let client = swapper.client::<dyn Front>()?;
    for item in ["tea", "tea", "cake"] {
        println!("{}", client.quote(item)?);
    }

    let pinned = swapper.pin_labeled("a long request");
    let report = swapper.load_files([front, logic_v2, store])?;
    println!(
        "generation {}: loaded {:?}, kept {:?}",
        report.generation, report.loaded, report.reused
    );
    println!("new calls:    {}", client.quote("tea")?);
    let old = pinned.client::<dyn Front>();
    println!("pinned call:  {}", old.quote("tea")?);
    drop(old);
    drop(pinned);
    println!(
        "the Vault kept the counts: tea asked {} times",
        swapper.vault().get::<u64>("store/count/tea")?.unwrap_or(0)
    );
    println!("dropping the swapper frees the plugins in reverse dependency order:");
    drop(client);
    drop(swapper);
    Ok(())
}
