//! Live data: the self-describing values in the Vault and between versions, decoded from a
//! guest and then read as a typed value.
#![no_main]

use swapkit_abi::{wire, LiveData};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(live) = wire::from_bytes::<LiveData>(data) {
        let _ = live.decode::<serde_json::Value>();
        let _ = live.decode::<(u64, String)>();
    }
    let direct = LiveData {
        type_name: "fuzz".into(),
        schema: 1,
        bytes: data.to_vec(),
    };
    let _ = direct.decode::<serde_json::Value>();
});
