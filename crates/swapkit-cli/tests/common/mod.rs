//! What the CLI's test files share: the workspace, plugin builds, running `swapkit`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Builds plugin packages (native, dev profile) and returns their artifacts in order.
pub fn build_plugins(packages: &[&str]) -> Vec<PathBuf> {
    swapkit_build::PluginBuild::new(workspace().join("Cargo.toml"))
        .packages(packages.iter().copied())
        .run()
        .expect("building plugins")
        .into_iter()
        .map(|a| a.path)
        .collect()
}

/// Builds plugin packages for wasm32 and returns their modules in order.
pub fn build_wasm(packages: &[&str]) -> Vec<PathBuf> {
    swapkit_build::PluginBuild::new(workspace().join("Cargo.toml"))
        .packages(packages.iter().copied())
        .wasm()
        .run()
        .expect("building wasm plugins")
        .into_iter()
        .map(|a| a.path)
        .collect()
}

/// Runs the `swapkit` binary; returns (success, stdout, stderr).
pub fn swapkit(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_swapkit"))
        .args(args)
        .output()
        .expect("running swapkit");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `swapkit` and insists that it succeeded.
pub fn ok(args: &[&str]) -> String {
    let (success, stdout, stderr) = swapkit(args);
    assert!(success, "swapkit {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}
