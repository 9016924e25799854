//! The same plugins statically linked into the host, or loaded from their artifacts, chosen by
//! a flag (Hotswap's "slink" demo): debug plugin code as part of the host binary, then run it
//! the way production does, with no change to the plugins or the host's calls.
//!
//! The plugins are `examples/trine`'s chain, `front` -> `logic` -> `store`: a dependency call
//! and Vault state in both modes.
//!
//! ```text
//! cargo run -p slink -- --static     # plugins linked in: one binary, one set of symbols
//! cargo run -p slink                 # plugins built as cdylibs and loaded (the default)
//! cargo run -p slink -- --loaded --debuggable  # loaded from files (for profilers)
//! ```
//!
//! The README's "Debugging plugin code" section shows a breakpoint in `logic`'s `price` in
//! each mode, with gdb.

use std::process::ExitCode;

use swapkit::Swapper;
use trine_api::Front;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slink: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let linked = args.iter().any(|a| a == "--static");
    let debuggable = args.iter().any(|a| a == "--debuggable");
    if let Some(other) = args
        .iter()
        .find(|a| !["--static", "--loaded", "--debuggable"].contains(&a.as_str()))
    {
        return Err(format!(
            "unknown argument `{other}`; use --static, or --loaded [--debuggable]"
        )
        .into());
    }
    let builder = Swapper::builder()
        .log_sink(|line| println!("  [{} {}] {}", line.plugin, line.version, line.message));
    let swapper = if linked {
        println!("mode: static (the plugins are part of this binary)");
        // The same plugin crates, linked as rlibs: their headers are statics of this binary.
        builder
            .static_plugin(&trine_front::SWAPKIT_PLUGIN)
            .static_plugin(&trine_logic_v1::SWAPKIT_PLUGIN)
            .static_plugin(&trine_store::SWAPKIT_PLUGIN)
            .build()?
    } else {
        println!("mode: loaded (the plugins are cdylibs, built now and loaded at runtime)");
        let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
        let built = swapkit_build::PluginBuild::new(workspace)
            .packages(["trine-front", "trine-logic-v1", "trine-store"])
            .run()?;
        // A native plugin is mapped from a sealed memory file, which a debugger opens as
        // `/proc/<pid>/fd/N`; a profiler that names libraries by their mapping wants files,
        // which `debuggable_copies` makes in a private directory.
        let builder = if debuggable {
            builder.debuggable_copies()
        } else {
            builder
        };
        let swapper = builder.build()?;
        swapper.load_files(built.iter().map(|a| &a.path))?;
        swapper
    };

    let client = swapper.client::<dyn Front>()?;
    let mut answers = vec![];
    for item in ["tea", "cake", "tea"] {
        let answer = client.quote(item)?;
        println!("{answer}");
        answers.push(answer);
    }
    let count = swapper.vault().get::<u64>("store/count/tea")?.unwrap_or(0);
    println!("the Vault counts tea: {count}");
    // The same plugins behave the same, linked or loaded: CI runs both modes.
    let expected = [
        "tea: 1.05 (logic v1)",
        "cake: 1.05 (logic v1)",
        "tea: 1.10 (logic v1)",
    ];
    if answers != expected || count != 2 {
        return Err(
            format!("expected {expected:?} and a count of 2, got {answers:?} and {count}").into(),
        );
    }
    // Where the plugins' code lives: the host binary, or a mapping of each library's own.
    let libraries = mappings();
    if libraries.is_empty() {
        let exe = std::env::current_exe()?;
        println!("the plugins' code is in {}", exe.display());
    }
    for line in libraries {
        println!("mapped: {line}");
    }
    Ok(())
}

/// The plugin libraries mapped into this process, from `/proc/self/maps`: the path (or
/// memory file) of each one's code, as a debugger sees it.
fn mappings() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut seen: Vec<String> = vec![];
    for line in maps.lines().filter(|l| l.contains(" r-xp ")) {
        let path = line
            .split_whitespace()
            .skip(5)
            .collect::<Vec<_>>()
            .join(" ");
        if path.contains("libtrine_") && !seen.contains(&path) {
            seen.push(path);
        }
    }
    seen
}
