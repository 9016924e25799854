//! `swapkit build`: builds a plugin crate and publishes its artifacts to a directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use swapkit_build::PluginBuild;

use crate::Error;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The plugin crate (its directory or its Cargo.toml).
    #[arg(default_value = ".")]
    path: PathBuf,
    /// Build a wasm module (wasm32-unknown-unknown) instead of a native library.
    #[arg(long, conflicts_with = "both")]
    wasm: bool,
    /// Build both a native library and a wasm module.
    #[arg(long)]
    both: bool,
    /// Where the artifacts go: `OUT/native/` and `OUT/wasm/` [default: PATH/target/swapkit]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Build without optimisations.
    #[arg(long)]
    debug: bool,
    /// Sign each artifact with this secret key (from `swapkit keygen`), writing ARTIFACT.sig.
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
}

/// The package a manifest declares, from `cargo metadata`.
fn package_of(manifest: &Path) -> Result<String, Error> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(&cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .map_err(|e| format!("cannot run `{cargo} metadata`: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo metadata` failed for {}:\n{}",
            manifest.display(),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let wanted = manifest.canonicalize()?;
    meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| {
            p["manifest_path"]
                .as_str()
                .and_then(|m| Path::new(m).canonicalize().ok())
                .is_some_and(|m| m == wanted)
        })
        .and_then(|p| p["name"].as_str().map(str::to_owned))
        .ok_or_else(|| {
            format!(
                "{} declares no package (is it a workspace root? point at the plugin crate)",
                manifest.display()
            )
            .into()
        })
}

pub(crate) fn run(args: Args) -> Result<(), Error> {
    let manifest = if args.path.is_dir() {
        args.path.join("Cargo.toml")
    } else {
        args.path.clone()
    };
    if !manifest.is_file() {
        return Err(format!(
            "{} is not a crate: no Cargo.toml there",
            args.path.display()
        )
        .into());
    }
    // A key that does not read fails the build before it starts, not after.
    let key = args
        .sign
        .as_deref()
        .map(crate::sign::secret_key)
        .transpose()?;
    let package = package_of(&manifest)?;
    let out = args.out.clone().unwrap_or_else(|| {
        manifest
            .parent()
            .unwrap_or(Path::new("."))
            .join("target/swapkit")
    });
    let mut backends = vec![];
    if args.both || !args.wasm {
        backends.push(false);
    }
    if args.both || args.wasm {
        backends.push(true);
    }
    for wasm in backends {
        let what = if wasm { "wasm" } else { "native" };
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template(
            "{spinner} {prefix}: {pos} crates compiled, {msg} [{elapsed}]",
        )?);
        bar.set_prefix(format!("building {package} ({what})"));
        bar.enable_steady_tick(Duration::from_millis(120));
        let tick = bar.clone();
        let mut build = PluginBuild::new(&manifest)
            .package(&package)
            .release(!args.debug)
            .on_progress(move |name| {
                tick.inc(1);
                tick.set_message(name.to_owned());
            });
        if wasm {
            build = build.wasm();
        }
        let built = build.run();
        bar.finish_and_clear();
        let built = built?;
        let artifact = &built[0].path;
        let dir = out.join(what);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let name = artifact
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("the artifact has no file name")?;
        // `libfoo.so` becomes `foo.so`: the name a plugin directory lists.
        let name = name.strip_prefix("lib").unwrap_or(name);
        let to = dir.join(name);
        // Signed first, then published: a host with a trust policy that watches the directory
        // finds the signature in place when the artifact appears.
        if let Some(key) = &key {
            let signed = crate::sign::sign_to(artifact, &swapkit::trust::signature_path(&to), key)?;
            println!("  signed with key {}", signed.key);
        }
        publish(artifact, &to)?;
        let info = swapkit::inspect(&to)?;
        let m = &info.manifest;
        println!(
            "{} {} ({}) -> {}\n  sha256 {}, abi v{}, built by {} for {}",
            m.name,
            m.version,
            what,
            to.display(),
            info.sha256,
            m.abi_version,
            m.fingerprint[0],
            m.fingerprint[1]
        );
    }
    Ok(())
}

/// Copies `from` to `to` by way of a hidden file and a rename, so that a host watching the
/// directory never sees a half-written artifact.
fn publish(from: &Path, to: &Path) -> Result<(), Error> {
    let dir = to.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        to.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artifact")
    ));
    std::fs::copy(from, &tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, to).map_err(|e| format!("cannot publish {}: {e}", to.display()))?;
    Ok(())
}
