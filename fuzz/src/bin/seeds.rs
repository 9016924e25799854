//! Writes the seed corpus of each fuzz target to `fuzz/seeds/<target>/`: real encodings of
//! what each parser reads. `cargo run --manifest-path fuzz/Cargo.toml --bin seeds [LIB]`,
//! where LIB is a built plugin library to seed `native_header` with (stripped, to keep it
//! small).

use std::path::{Path, PathBuf};

use swapkit_abi::service::{Cas, DependencyCall, Invoke, Key, Put};
use swapkit_abi::{
    wire, Dependency, ExportDecl, InterfaceDecl, LiveData, LiveKind, Manifest, PatchDecl,
};
use swapkit_admin::{Envelope, Request};
use swapkit_trust::{SecretKey, SignatureFile, Statement};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let manifest = Manifest {
        name: "greeter".into(),
        version: "1.0.0".into(),
        abi_version: 1,
        crate_name: "greeter".into(),
        fingerprint: [
            "rustc 1.95.0".into(),
            "x86_64-unknown-linux-gnu".into(),
            "0.1.0".into(),
        ],
        interfaces: vec![InterfaceDecl {
            name: "Greeter".into(),
            hash: 0x1234_5678_9abc_def0,
            signature: "fn greet(&self, name: &str) -> String".into(),
            methods: vec!["greet".into(), "version".into()],
        }],
        dependencies: vec![Dependency {
            plugin: "store".into(),
            interfaces: vec![("Store".into(), 42)],
        }],
        patches: vec![PatchDecl {
            target: "host::price".into(),
            signature: "fn(u64) -> u64".into(),
            hash: 7,
        }],
        live: vec![ExportDecl {
            name: "Ticket".into(),
            kind: LiveKind::Factory,
            signature: "fn(u64) -> Ticket".into(),
            hash: 9,
        }],
    };
    write("manifest", "greeter", &wire::to_vec(&manifest).unwrap());
    let live = LiveData::encode("Ticket", 2, &(7u64, "urgent")).unwrap();
    write("live_data", "ticket", &wire::to_vec(&live).unwrap());
    write(
        "wire",
        "key",
        &wire::to_vec(&Key {
            key: "greeter/visits".into(),
        })
        .unwrap(),
    );
    write(
        "wire",
        "put",
        &wire::to_vec(&Put {
            key: "greeter/v".into(),
            value: live.clone(),
        })
        .unwrap(),
    );
    write(
        "wire",
        "cas",
        &wire::to_vec(&Cas {
            key: "k".into(),
            expected: 3,
            value: Some(live),
        })
        .unwrap(),
    );
    write(
        "wire",
        "invoke",
        &wire::to_vec(&Invoke {
            name: "add".into(),
            args: wire::to_vec(&(1u64, 2u64)).unwrap(),
        })
        .unwrap(),
    );
    write(
        "wire",
        "dependency",
        &wire::to_vec(&DependencyCall {
            plugin: "store".into(),
            interface: "Store".into(),
            hash: 42,
            method: 0,
            args: wire::to_vec(&("tea",)).unwrap(),
        })
        .unwrap(),
    );
    for (name, request) in [
        ("status", Request::Status),
        ("reload", Request::Reload),
        (
            "rollback",
            Request::Rollback {
                to: Some("greeter@1.0.0".into()),
            },
        ),
        (
            "patch_apply",
            Request::PatchApply {
                artifact: PathBuf::from("/srv/p.so"),
                percent: Some(10.0),
                id: Some("fix".into()),
            },
        ),
        ("patch_list", Request::PatchList),
        (
            "canary_start",
            Request::CanaryStart {
                artifact: PathBuf::from("/srv/releases/pricing-2.so"),
                percent: Some(1.0),
                gate: true,
            },
        ),
        ("canary_set", Request::CanarySet { percent: 10.0 }),
        ("canary_abort", Request::CanaryAbort),
    ] {
        let mut line = serde_json::to_vec(&Envelope::new(&request)).unwrap();
        line.push(b'\n');
        write("admin", name, &line);
    }
    // A fixed key, so the seeds do not change from run to run.
    let key = fixed_key();
    let signed = SignatureFile::sign(
        Statement {
            plugin: "greeter".into(),
            version: "1.0.0".into(),
            backend: "native".into(),
            fingerprint: [
                "rustc 1.95.0".into(),
                "x86_64-unknown-linux-gnu".into(),
                "0.1.0".into(),
            ],
            sha256: [0xab; 32],
        },
        &key,
    )
    .unwrap();
    write("signature", "signature", signed.to_text().as_bytes());
    write("signature", "public-key", key.public().to_text().as_bytes());
    if let Some(lib) = std::env::args().nth(1) {
        write("native_header", "plugin", &std::fs::read(lib).unwrap());
    }
}

/// The secret key with seed bytes 0x11. Its id is derived from it: the parser's refusal of a
/// placeholder id names the right one.
fn fixed_key() -> SecretKey {
    let secret = "11".repeat(32);
    let text = |id: &str| format!("swapkit secret key v1\nkey-id: {id}\nsecret: {secret}\n");
    let Err(swapkit_trust::TrustError::Malformed { reason, .. }) =
        SecretKey::parse(&text("0000000000000000"))
    else {
        unreachable!("the placeholder id is not the key's")
    };
    let id = reason.rsplit(", ").next().unwrap().trim().to_owned();
    SecretKey::parse(&text(&id)).unwrap()
}
