//! The admin protocol: a request line as the host's socket reads it, and a reply as the CLI
//! reads it.
#![no_main]

use swapkit_admin::{Envelope, Reply, Request};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<Envelope<Request>>(data) {
        let _ = request.body.op();
    }
    let _ = serde_json::from_slice::<Envelope<Reply>>(data);
});
