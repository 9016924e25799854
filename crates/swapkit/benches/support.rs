//! Shared by the benches: release builds of the fixture plugins.

use std::path::{Path, PathBuf};

/// Builds `packages` in release and returns their artifacts, in order.
#[allow(dead_code)]
pub fn release_artifacts(packages: &[&str]) -> Vec<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    swapkit_build::PluginBuild::new(workspace)
        .packages(packages.iter().copied())
        .release(true)
        .quiet(true)
        .run()
        .expect("building the fixture plugins")
        .into_iter()
        .map(|a| a.path)
        .collect()
}

/// Builds `packages` for wasm32 in release and returns their modules, in order.
#[allow(dead_code)]
pub fn release_wasm(packages: &[&str]) -> Vec<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    swapkit_build::PluginBuild::new(workspace)
        .packages(packages.iter().copied())
        .wasm()
        .release(true)
        .quiet(true)
        .run()
        .expect("building the wasm fixture plugins")
        .into_iter()
        .map(|a| a.path)
        .collect()
}

/// `module` with a custom section holding `n` appended: valid wasm with new content.
#[allow(dead_code)]
pub fn unique_wasm(module: &[u8], n: u64) -> Vec<u8> {
    let mut bytes = module.to_vec();
    // Section id 0 (custom), size 13: name length 4, "uniq", 8 bytes of payload.
    bytes.extend_from_slice(&[0, 13, 4]);
    bytes.extend_from_slice(b"uniq");
    bytes.extend_from_slice(&n.to_le_bytes());
    bytes
}
