//! The service requests a guest sends the host, decoded from its memory: every request type,
//! and the argument tuples of typed calls.
#![no_main]

use swapkit_abi::service::{Cas, DependencyCall, Invoke, Key, Put};
use swapkit_abi::wire;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wire::from_bytes::<Key>(data);
    let _ = wire::from_bytes::<Put>(data);
    let _ = wire::from_bytes::<Cas>(data);
    let _ = wire::from_bytes::<Invoke>(data);
    let _ = wire::from_bytes::<DependencyCall>(data);
    let _ = wire::from_bytes::<(u64, String)>(data);
    let _ = wire::from_bytes::<(Vec<String>, Option<u32>, bool)>(data);
});
