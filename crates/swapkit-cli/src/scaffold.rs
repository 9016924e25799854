//! `swapkit new`: crates that build as they are.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::Error;

#[derive(Subcommand)]
pub(crate) enum What {
    /// A plugin crate exporting one interface.
    Plugin(Options),
    /// A host binary that serves plugins from a directory, with the admin socket, the file
    /// watcher, SIGHUP and auto-rollback on.
    Host(Options),
}

#[derive(clap::Args)]
pub(crate) struct Options {
    /// The crate's name; also its directory unless --path is given.
    name: String,
    /// Where to create the crate.
    #[arg(long)]
    path: Option<PathBuf>,
    /// A swapkit source checkout to depend on by path, instead of the crates.io release.
    /// Defaults to the checkout this CLI was built from, if it is still there.
    #[arg(long)]
    swapkit: Option<PathBuf>,
}

const PLUGIN_TOML: &str = include_str!("../templates/plugin.Cargo.toml");
const PLUGIN_LIB: &str = include_str!("../templates/plugin.lib.rs");
const HOST_TOML: &str = include_str!("../templates/host.Cargo.toml");
const HOST_MAIN: &str = include_str!("../templates/host.main.rs");

/// The swapkit checkout this CLI was built from.
fn built_from() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.join("crates/swapkit/Cargo.toml")
        .is_file()
        .then(|| root.canonicalize().ok())
        .flatten()
}

/// A dependency line: by path into a checkout, or by version.
fn dep(krate: &str, checkout: Option<&Path>) -> String {
    match checkout {
        Some(root) => format!(
            "{krate} = {{ path = {:?} }}",
            root.join("crates").join(krate)
        ),
        None => format!("{krate} = \"0.1\""),
    }
}

fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphabetic());
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a crate name: use letters, digits, `-` and `_`, starting with a letter").into())
    }
}

/// `my-plugin` becomes `MyPlugin`.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

pub(crate) fn run(what: What) -> Result<(), Error> {
    let (opts, host) = match what {
        What::Plugin(o) => (o, false),
        What::Host(o) => (o, true),
    };
    check_name(&opts.name)?;
    let dir = opts
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(&opts.name));
    if dir.join("Cargo.toml").exists() {
        return Err(format!(
            "{} already holds a crate; choose another --path",
            dir.display()
        )
        .into());
    }
    let checkout = opts.swapkit.clone().or_else(built_from);
    if let Some(root) = &checkout {
        if !root.join("crates/swapkit/Cargo.toml").is_file() {
            return Err(format!(
                "{} is not a swapkit checkout (no crates/swapkit)",
                root.display()
            )
            .into());
        }
    }
    let root = checkout.as_deref();
    let (toml, source, file, deps) = if host {
        let deps = [
            dep("swapkit", root),
            dep("swapkit-abi", root),
            "signal-hook = \"0.3\"".into(),
        ];
        (HOST_TOML, HOST_MAIN, "main.rs", deps.join("\n"))
    } else {
        let deps = [dep("swapkit-guest", root), dep("swapkit-abi", root)];
        (PLUGIN_TOML, PLUGIN_LIB, "lib.rs", deps.join("\n"))
    };
    let fill = |t: &str| {
        t.replace("{{name}}", &opts.name)
            .replace("{{type}}", &type_name(&opts.name))
            .replace("{{deps}}", &deps)
    };
    std::fs::create_dir_all(dir.join("src"))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(dir.join("Cargo.toml"), fill(toml))?;
    std::fs::write(dir.join("src").join(file), fill(source))?;
    let kind = if host { "host" } else { "plugin" };
    println!("created {kind} `{}` in {}", opts.name, dir.display());
    if host {
        println!(
            "next: cd {} && mkdir -p plugins && cargo run",
            dir.display()
        );
    } else {
        println!(
            "next: swapkit build {} (add --wasm for the sandboxed backend)",
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_types_and_bad_names_are_refused() {
        assert_eq!(type_name("my-plugin"), "MyPlugin");
        assert_eq!(type_name("a_b"), "AB");
        assert!(check_name("9lives").is_err());
        assert!(check_name("has space").is_err());
        assert!(check_name("ok-name_2").is_ok());
    }
}
