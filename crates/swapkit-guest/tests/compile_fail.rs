//! Misuse of `#[interface]` and `export_plugin!` is a compile error that says what to change.

#[test]
fn misuse_is_rejected_at_compile_time() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
