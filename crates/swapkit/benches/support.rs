//! Shared by the benches: release builds of the fixture plugins.

use std::path::{Path, PathBuf};

/// Builds `packages` in release and returns their artifacts, in order.
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
