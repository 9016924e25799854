//! Real `cargo build` runs against this workspace's fixture crates.

use std::path::{Path, PathBuf};

use swapkit_build::{BuildError, PluginBuild};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml")
}

#[test]
fn builds_plugins_and_reports_their_artifacts_in_order() {
    let built = PluginBuild::new(workspace())
        .packages(["fixture-greeter-v2", "fixture-greeter-v1"])
        .quiet(true)
        .run()
        .unwrap();
    assert_eq!(built.len(), 2);
    assert_eq!(built[0].package, "fixture-greeter-v2");
    let name = built[1].path.file_name().unwrap().to_str().unwrap();
    assert!(
        name.contains("fixture_greeter_v1") && name.ends_with(std::env::consts::DLL_EXTENSION),
        "{name}"
    );
    assert!(built[1].path.is_file());
}

#[test]
fn an_unknown_package_fails_the_build() {
    let err = PluginBuild::new(workspace())
        .package("no-such-package")
        .quiet(true)
        .run()
        .unwrap_err();
    assert!(matches!(err, BuildError::Failed { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-package"), "{err}");
}

#[test]
fn a_package_without_a_cdylib_is_reported() {
    let err = PluginBuild::new(workspace())
        .package("fixture-api")
        .quiet(true)
        .run()
        .unwrap_err();
    assert!(
        matches!(&err, BuildError::NoArtifact { package } if package == "fixture-api"),
        "{err:?}"
    );
    assert!(err.to_string().contains("crate-type"), "{err}");
}

#[test]
fn a_missing_cargo_is_reported() {
    let err = PluginBuild::new(workspace())
        .package("fixture-greeter-v1")
        .cargo("/nonexistent/cargo")
        .run()
        .unwrap_err();
    assert!(matches!(err, BuildError::Spawn { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/cargo"), "{err}");
}
