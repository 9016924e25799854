//! A plugin's manifest, as the host decodes it from the guest's reply. What decodes must
//! encode and decode to the same value.
#![no_main]

use swapkit_abi::{wire, Manifest};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = wire::from_bytes::<Manifest>(data) {
        let again = wire::to_vec(&manifest).expect("a decoded manifest encodes");
        assert_eq!(wire::from_bytes::<Manifest>(&again).unwrap(), manifest);
    }
});
