//! Misuse of `#[patchable]` and `patch!` is a compile error.

#[test]
fn patchable_misuse_is_rejected_at_compile_time() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
