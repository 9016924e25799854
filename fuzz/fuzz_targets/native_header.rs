//! A native library's symbol table and plugin header, read from its bytes before anything is
//! mapped: every native load and `swapkit inspect` parse untrusted files this way.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = swapkit::__fuzz::native_header(data);
});
