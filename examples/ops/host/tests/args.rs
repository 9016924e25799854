//! The host refuses bad command lines with a message that says what is missing.
//!
//! Besides checking that, this test makes `cargo test --workspace` build the `ops-host`
//! binary with the workspace's feature set, so that the CLI's end-to-end test
//! (`crates/swapkit-cli/tests/cli.rs`) finds it built instead of building it again with
//! different features.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ops-host"))
        .args(args)
        .output()
        .expect("running ops-host");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_and_unknown_arguments_are_refused() {
    let (ok, stderr) = run(&[]);
    assert!(
        !ok && stderr.contains("--plugins DIR is required"),
        "{stderr}"
    );
    let (ok, stderr) = run(&["--plugins", "/nonexistent"]);
    assert!(
        !ok && stderr.contains("--socket PATH is required"),
        "{stderr}"
    );
    let (ok, stderr) = run(&["--frobnicate"]);
    assert!(
        !ok && stderr.contains("unknown argument --frobnicate"),
        "{stderr}"
    );
}
