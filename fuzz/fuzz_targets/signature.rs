//! Signature and key files, read from beside an artifact or from an operator. What parses must
//! write back to the same text.
#![no_main]

use swapkit_trust::{PublicKey, SecretKey, SignatureFile};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sig) = SignatureFile::parse(text) {
        assert_eq!(SignatureFile::parse(&sig.to_text()).unwrap(), sig);
    }
    if let Ok(key) = PublicKey::parse(text) {
        assert_eq!(PublicKey::parse(&key.to_text()).unwrap(), key);
    }
    let _ = SecretKey::parse(text);
});
