//! The manifest a plugin reports about itself once its header has been accepted.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// What a plugin is and what it offers. Encoded with postcard by the `manifest` entry point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The plugin's name, unique within a generation.
    pub name: String,
    /// The plugin's version (its crate version unless set otherwise).
    pub version: String,
    /// The ABI version; equals the header's.
    pub abi_version: u32,
    /// The crate the plugin was built from.
    pub crate_name: String,
    /// The build fingerprint, as text: `rustc -V`, target, `swapkit-abi` version.
    pub fingerprint: [String; 3],
    /// Interfaces the plugin exports, in the order the `interface` argument of `call` numbers
    /// them.
    pub interfaces: Vec<InterfaceDecl>,
    /// Plugins that must be loaded, and initialised, before this one.
    pub dependencies: Vec<Dependency>,
    /// Replacements for `#[patchable]` functions of a host, in the order the `method` argument
    /// of `call` numbers them when `interface` is [`PATCH_INTERFACE`](crate::PATCH_INTERFACE).
    pub patches: Vec<PatchDecl>,
    /// Live functions and live-type factories, in the order the `method` argument of `call`
    /// numbers them when `interface` is [`LIVE_INTERFACE`](crate::LIVE_INTERFACE).
    pub live: Vec<ExportDecl>,
    /// What the plugin asks of its host. Not part of the fixed fields: [`Manifest::encode`]
    /// appends it only when it differs from the default.
    #[serde(skip)]
    pub options: Options,
}

/// What a plugin asks of its host beyond its exports, set in `export_plugin!`.
///
/// Encoded after the manifest's fixed fields only when it is not the default, so a host that
/// predates it still reads every plugin that does not use it, and a host that knows it reads
/// a plugin that predates it as the default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// False for a plugin that must never be replaced while its host runs (`reloadable:
    /// false`): a reload, rollback or canary that would replace or remove it is refused.
    pub reloadable: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { reloadable: true }
    }
}

impl Manifest {
    /// Appends the manifest to `out` in its wire form: the fixed fields, then the options when
    /// they are not the default.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), crate::wire::Error> {
        crate::wire::encode_into(self, out)?;
        if self.options != Options::default() {
            crate::wire::encode_into(&self.options, out)?;
        }
        Ok(())
    }

    /// Reads a manifest written by [`encode`](Self::encode), by any version of it: the options
    /// are the default when absent. Bytes after the options are an error.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, crate::wire::Error> {
        let (mut manifest, rest): (Manifest, _) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            manifest.options = crate::wire::from_bytes(rest)?;
        }
        Ok(manifest)
    }
}

/// One function a plugin exports by name: a live function, or the factory of a live type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportDecl {
    /// The name callers use: the function's name, or the live type's name.
    pub name: String,
    /// What it is.
    pub kind: LiveKind,
    /// The normalised signature text, as in [`PatchDecl::signature`].
    pub signature: String,
    /// FNV-1a of `signature`.
    pub hash: u64,
}

/// What an [`ExportDecl`] exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LiveKind {
    /// A live function: a host's `LiveFn` calls it by plugin and name.
    Function,
    /// The factory of a live type: it returns a [`LiveData`](crate::LiveData) of that type.
    Factory,
}

/// One exported patch: a replacement for a host's `#[patchable]` function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchDecl {
    /// The target's full name, as the host's registry lists it: `crate::module::function`,
    /// `crate::module::Type::method` or `crate::module::<Type as Trait>::method`.
    pub target: String,
    /// The normalised signature text, `(argtype,argtype)->rettype`: each type without
    /// lifetimes, path prefixes or whitespace (`&'a std::string::String` is `&String`), so the
    /// host and the plugin may spell a type differently.
    pub signature: String,
    /// FNV-1a of `signature`. The host refuses the patch unless it equals the target's.
    pub hash: u64,
}

/// One exported interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceDecl {
    /// The trait's name.
    pub name: String,
    /// Hash of `signature`; see [`crate::hash`].
    pub hash: u64,
    /// The canonical text of the trait's methods, their argument types and return types.
    pub signature: String,
    /// Method names, in the order the `method` argument of `call` numbers them.
    pub methods: Vec<String>,
}

impl InterfaceDecl {
    /// The entry of interface `I`, as a plugin that exports it declares it.
    pub fn of<I: crate::Interface + ?Sized>() -> InterfaceDecl {
        InterfaceDecl {
            name: I::NAME.into(),
            hash: I::HASH,
            signature: I::SIGNATURE.into(),
            methods: I::METHODS.iter().map(|m| (*m).into()).collect(),
        }
    }
}

/// A dependency on another plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// The name of the plugin depended on.
    pub plugin: String,
    /// The interfaces of it this plugin uses, as `(name, hash)`: the load checks that the
    /// dependency exports each with the same hash.
    pub interfaces: Vec<(String, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn postcard_round_trip() {
        let m = Manifest {
            name: "greeter".into(),
            version: "1.2.3".into(),
            abi_version: 1,
            crate_name: "greeter_v1".into(),
            fingerprint: ["rustc 1".into(), "x86_64".into(), "0.1.0".into()],
            interfaces: vec![InterfaceDecl {
                name: "Greeter".into(),
                hash: 42,
                signature: "greet(&str)->String".into(),
                methods: vec!["greet".to_string()],
            }],
            dependencies: vec![Dependency {
                plugin: "store".into(),
                interfaces: vec![("Store".into(), 9)],
            }],
            patches: vec![PatchDecl {
                target: "host::price".into(),
                signature: "(u64,u32)->u64".into(),
                hash: 7,
            }],
            live: vec![ExportDecl {
                name: "tick".into(),
                kind: LiveKind::Function,
                signature: "(u64)->u64".into(),
                hash: 8,
            }],
            options: Options::default(),
        };
        let bytes = crate::wire::to_vec(&m).unwrap();
        let back: Manifest = crate::wire::from_bytes(&bytes).unwrap();
        assert_eq!(back, m);
    }

    fn manifest() -> Manifest {
        Manifest {
            name: "p".into(),
            version: "1.0.0".into(),
            abi_version: crate::ABI_VERSION,
            crate_name: "p".into(),
            fingerprint: ["rustc".into(), "target".into(), "abi".into()],
            interfaces: vec![],
            dependencies: vec![],
            patches: vec![],
            live: vec![],
            options: Options::default(),
        }
    }

    #[test]
    fn default_options_leave_the_fixed_fields_alone() {
        // What a host that predates options reads: exactly the fixed fields.
        let m = manifest();
        let mut bytes = vec![];
        m.encode(&mut bytes).unwrap();
        assert_eq!(bytes, crate::wire::to_vec(&m).unwrap());
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn options_follow_the_fixed_fields_and_round_trip() {
        let mut m = manifest();
        m.options.reloadable = false;
        let mut bytes = vec![];
        m.encode(&mut bytes).unwrap();
        let back = Manifest::decode(&bytes).unwrap();
        assert!(!back.options.reloadable);
        assert_eq!(back, m);
        // Anything after the options is refused, not ignored.
        bytes.push(7);
        assert!(Manifest::decode(&bytes).is_err());
    }
}
