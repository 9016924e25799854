//! Hand-made wasm plugins, written in the text format: modules that speak ABI v1 without the
//! guest SDK, so a test can do what a hostile plugin would.
//!
//! Memory layout of every module: the result slot at 16, the manifest at 1024, the input
//! buffer at 4096, service requests from [`REQUEST`], service replies at [`REPLY`].

use std::path::{Path, PathBuf};

use fixture_api::Greeter;
use swapkit::abi::{Dependency, ExportDecl, Fingerprint, Interface, InterfaceDecl, LiveKind};
use swapkit::abi::{Manifest, LIFECYCLE_INTERFACE, LIVE_INTERFACE};

/// Where a module keeps the service request it makes.
pub const REQUEST: u32 = 32 << 10;
/// Where a module copies the reply of a service request.
pub const REPLY: u32 = 48 << 10;

/// Every host function, under the names the bodies use.
const ALL_IMPORTS: &str = r#"(import "swapkit" "log" (func $log (param i32 i32 i32)))
 (import "swapkit" "panic" (func $panic (param i32 i32)))
 (import "swapkit" "service" (func $service (param i32 i32 i32) (result i64)))
 (import "swapkit" "reply" (func $reply (param i32)))"#;

/// A hand-made plugin module, built up and then written out.
#[derive(Debug, Clone)]
pub struct Wat {
    manifest: Manifest,
    imports: String,
    /// Entry points whose bodies are replaced (`Some`) or which are left out (`None`).
    edits: Vec<(String, Option<String>)>,
    data: Vec<(u32, Vec<u8>)>,
    /// Further functions, for the bodies to call.
    extra: String,
    /// Whether lifecycle calls bypass a replaced `swapkit_call` body.
    guard_lifecycle: bool,
}

impl Wat {
    /// Plugin `name` 0.0.1, exporting [`Greeter`], importing every host function, with
    /// entry points that do nothing and succeed.
    pub fn plugin(name: &str) -> Wat {
        let fp = Fingerprint::CURRENT;
        Wat {
            manifest: Manifest {
                name: name.into(),
                version: "0.0.1".into(),
                abi_version: swapkit::abi::ABI_VERSION,
                crate_name: name.replace('-', "_"),
                fingerprint: [fp.rustc().into(), "wasm32".into(), fp.abi_crate().into()],
                interfaces: vec![InterfaceDecl::of::<dyn Greeter>()],
                dependencies: vec![],
                patches: vec![],
                live: vec![],
                options: Default::default(),
            },
            imports: ALL_IMPORTS.into(),
            edits: vec![],
            data: vec![],
            extra: String::new(),
            guard_lifecycle: true,
        }
    }

    /// Declares a patch of `target` (the patch export itself is not made: enough for what a
    /// patch artifact does when it is loaded, before anything is applied).
    #[allow(dead_code)]
    pub fn patches(mut self, target: &str) -> Wat {
        self.manifest.patches.push(swapkit::abi::PatchDecl {
            target: target.into(),
            signature: "(u64)->u64".into(),
            hash: swapkit::abi::hash::fnv1a64(b"(u64)->u64"),
        });
        self
    }

    /// Declares `n` more methods in its interface (a manifest bigger than any real one).
    #[allow(dead_code)]
    pub fn methods(mut self, n: usize) -> Wat {
        let methods = &mut self.manifest.interfaces[0].methods;
        methods.extend((0..n).map(|i| format!("m{i}")));
        self
    }

    /// Sets the plugin's version.
    #[allow(dead_code)]
    pub fn version(mut self, version: &str) -> Wat {
        self.manifest.version = version.into();
        self
    }

    /// Declares the plugin not reloadable (`reloadable: false`).
    #[allow(dead_code)]
    pub fn fixed(mut self) -> Wat {
        self.manifest.options.reloadable = false;
        self
    }

    /// Renames the plugin, whatever the name.
    #[allow(dead_code)]
    pub fn named(mut self, name: &str) -> Wat {
        self.manifest.name = name.into();
        self
    }

    /// Exports `decl` instead of `Greeter`.
    pub fn exports(mut self, decl: InterfaceDecl) -> Wat {
        self.manifest.interfaces = vec![decl];
        self
    }

    /// Lets a replaced `swapkit_call` body answer the lifecycle calls (`save`, `migrate`) too.
    pub fn raw_lifecycle(mut self) -> Wat {
        self.guard_lifecycle = false;
        self
    }

    /// Imports only what `imports` declares.
    pub fn imports(mut self, imports: &str) -> Wat {
        self.imports = imports.into();
        self
    }

    /// Declares that it uses interface `Greeter` of plugin `plugin`, with `hash`.
    pub fn depends_on(mut self, plugin: &str, hash: u64) -> Wat {
        self.manifest.dependencies.push(Dependency {
            plugin: plugin.into(),
            interfaces: vec![(<dyn Greeter as Interface>::NAME.into(), hash)],
        });
        self
    }

    /// Declares a live type `name`, whose factory is `swapkit_call` with interface
    /// [`LIVE_INTERFACE`].
    pub fn live_type(mut self, name: &str) -> Wat {
        self.manifest.live.push(ExportDecl {
            name: name.into(),
            kind: LiveKind::Factory,
            signature: "fn(u64) -> LiveData".into(),
            hash: 1,
        });
        self
    }

    /// Replaces the body of entry point `entry` (`swapkit_call`, `swapkit_init`, ...).
    pub fn body(mut self, entry: &str, body: impl Into<String>) -> Wat {
        self.edits.push((entry.into(), Some(body.into())));
        self
    }

    /// Leaves entry point `entry` out.
    pub fn without(mut self, entry: &str) -> Wat {
        self.edits.push((entry.into(), None));
        self
    }

    /// Puts `bytes` at address `at` of linear memory.
    pub fn data(mut self, at: u32, bytes: &[u8]) -> Wat {
        self.data.push((at, bytes.to_vec()));
        self
    }

    /// Adds functions for the bodies to call.
    pub fn extra(mut self, funcs: &str) -> Wat {
        self.extra.push_str(funcs);
        self.extra.push('\n');
        self
    }

    /// Makes `entry` run host service `op` with `request` (kept at [`REQUEST`]) and return
    /// the host's status and reply as its own: a refusal reaches the host's caller as
    /// `CallError::Guest` with the host's message.
    pub fn relays(self, entry: &str, op: u32, request: &[u8]) -> Wat {
        let len = request.len() as u32;
        self.data(REQUEST, request)
            .body(entry, relay(op, REQUEST, len, REPLY))
    }

    /// The module's text.
    pub fn text(&self) -> String {
        let mut manifest = vec![];
        self.manifest.encode(&mut manifest).unwrap();
        // At 1024, below the input buffer; a big one from 64 KiB on, in memory grown for it.
        let (manifest_at, pages) = if manifest.len() < 3072 {
            (1024, 1)
        } else {
            (64 << 10, 2 + manifest.len().div_ceil(64 << 10))
        };
        let manifest_body = format!(
            "(i32.store (i32.const 16) (i32.const {manifest_at})) \
             (i32.store (i32.const 20) (i32.const {})) (i32.const 0)",
            manifest.len()
        );
        let funcs = [
            ("swapkit_abi_version", "(result i32)", "(i32.const 1)"),
            ("swapkit_out_slot", "(result i32)", "(i32.const 16)"),
            (
                "swapkit_input",
                "(param i32) (result i32)",
                "(i32.const 4096)",
            ),
            ("swapkit_manifest", "(result i32)", &manifest_body),
            (
                "swapkit_load",
                "(result i32)",
                "(i32.store (i32.const 20) (i32.const 0)) (i32.const 0)",
            ),
            ("swapkit_init", "(result i32)", "(i32.const 0)"),
            ("swapkit_free", "(result i32)", "(i32.const 0)"),
            (
                "swapkit_call",
                "(param i32 i32 i32) (result i32)",
                "(i32.const 0)",
            ),
        ];
        let mut funcs: String = funcs
            .iter()
            .filter_map(|&(name, signature, body)| {
                let body = match self.edits.iter().rev().find(|(edited, _)| edited == name) {
                    Some((_, edit)) => edit.as_deref()?,
                    None => body,
                };
                // A replaced `swapkit_call` body serves the plugin's own interfaces; the
                // lifecycle calls a reload makes (`save`, `migrate`) get "no state".
                if name == "swapkit_call" && body != "(i32.const 0)" && self.guard_lifecycle {
                    return Some(format!(
                        "(func $call_body {signature} {body})\n\
                         (func (export \"{name}\") {signature} \
                           (if (result i32) (i32.eq (local.get 0) (i32.const {LIFECYCLE_INTERFACE})) \
                             (then (i32.store8 (i32.const 3100) (i32.const 0)) \
                                   (i32.store (i32.const 16) (i32.const 3100)) \
                                   (i32.store (i32.const 20) (i32.const 1)) (i32.const 0)) \
                             (else (call $call_body (local.get 0) (local.get 1) (local.get 2)))))\n"
                    ));
                }
                Some(format!("(func (export \"{name}\") {signature} {body})\n"))
            })
            .collect();
        funcs.push('\n');
        let data: String = std::iter::once((manifest_at, manifest))
            .chain(self.data.iter().cloned())
            .map(|(at, bytes)| format!("(data (i32.const {at}) \"{}\")\n", escape(&bytes)))
            .collect();
        format!(
            "(module {}\n (memory (export \"memory\") {pages})\n {data} {funcs} {})",
            self.imports, self.extra
        )
    }

    /// The module's binary.
    pub fn bytes(&self) -> Vec<u8> {
        wat::parse_str(self.text()).expect("valid wat")
    }

    /// Writes the module to `<dir>/<plugin name>.wasm`.
    pub fn write_to(&self, dir: &Path) -> PathBuf {
        let file: String = self
            .manifest
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{file}.wasm"));
        std::fs::write(&path, self.bytes()).unwrap();
        path
    }
}

/// A `swapkit_call` body that runs host service `op` on `len` bytes at `at`, copies the reply
/// to `reply_at`, and returns it with the service's status.
pub fn relay(op: u32, at: u32, len: u32, reply_at: u32) -> String {
    format!(
        "(local $r i64) \
         (local.set $r (call $service (i32.const {op}) (i32.const {at}) (i32.const {len}))) \
         (call $reply (i32.const {reply_at})) \
         (i32.store (i32.const 16) (i32.const {reply_at})) \
         (i32.store (i32.const 20) (i32.wrap_i64 (local.get $r))) \
         (i32.wrap_i64 (i64.shr_u (local.get $r) (i64.const 32)))"
    )
}

/// Whether a call's `interface` argument (local 0 of `swapkit_call`) names the live factory.
pub const IS_LIVE: &str = "(i32.eq (local.get 0) (i32.const -2))";

const _: () = assert!(LIVE_INTERFACE == u32::MAX - 1);

fn escape(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}
