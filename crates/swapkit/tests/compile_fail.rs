//! Misuse of `#[patchable]`, `patch!`, `#[derive(Plain)]` and `#[interface(plain = [..])]` is a
//! compile error.
//!
//! trybuild compiles the cases against swapkit with the features this test was built with,
//! in a target directory of its own; so the cases run in the suite's build without the `wasm`
//! feature (scripts/test.sh), where that means compiling swapkit without wasmtime.

#![cfg(not(feature = "wasm"))]

#[test]
fn misuse_is_rejected_at_compile_time() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
