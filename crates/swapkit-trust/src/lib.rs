//! Who built a swapkit plugin, and whether a host should run it.
//!
//! A release is signed with an ed25519 key: `swapkit keygen` makes a key pair, `swapkit sign`
//! (or `swapkit build --sign KEY`) writes a detached signature file next to each artifact
//! (`greeter.so.sig`), and a host given a [`TrustPolicy`] checks every artifact against it
//! before any of its code runs. The signature covers the artifact's SHA-256, its plugin name,
//! version, backend and build fingerprint, so a trusted artifact cannot be passed off as
//! another plugin, another version or another backend.
//!
//! The files are small line-oriented text, read strictly (see [`SignatureFile::parse`]):
//!
//! ```text
//! swapkit signature v1
//! key-id: 3f2a9c0d11e2b7a4
//! plugin: greeter
//! version: 1.0.0
//! backend: native
//! rustc: rustc 1.95.0 (59807616e 2026-04-14)
//! target: x86_64-unknown-linux-gnu
//! abi-crate: 0.1.0
//! sha256: 9c1d…(64 hex digits)
//! signature: 5be0…(128 hex digits, over every line above)
//! ```

#![deny(missing_docs)]

mod key;
mod policy;
mod record;
mod signature;
mod text;

pub use key::{KeyId, PublicKey, SecretKey};
pub use policy::{Signer, TrustPolicy};
pub use record::RecordSignature;
pub use signature::{signature_path, SignatureFile, Statement, EXTENSION};
pub use text::MAX_TEXT;

/// Why an artifact is not trusted, or a key or signature file did not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// There is no signature, and the policy refuses unsigned artifacts.
    #[error("it is unsigned, and this host runs only signed artifacts; sign it with `swapkit sign --key KEY ARTIFACT`")]
    Unsigned,
    /// The signing key is not one the policy trusts.
    #[error("it is signed by key {key}, which this host does not trust; add its public key to the host's TrustPolicy")]
    UnknownKey {
        /// The key that signed.
        key: KeyId,
    },
    /// The signing key was revoked.
    #[error("it is signed by key {key}, which this host revoked")]
    RevokedKey {
        /// The key that signed.
        key: KeyId,
    },
    /// The signature does not verify: the file was altered after signing.
    #[error("its signature by key {key} does not verify: the signature file was altered, or made for other content")]
    BadSignature {
        /// The key the signature names.
        key: KeyId,
    },
    /// The signature is for other bytes: the artifact changed after signing.
    #[error("key {key} signed other content: the artifact changed after it was signed")]
    ContentMismatch {
        /// The key that signed.
        key: KeyId,
    },
    /// The artifact is not what was signed: another plugin, version, backend or build.
    #[error("it was signed as {field} `{signed}`, but it is `{actual}`")]
    Claim {
        /// Which claim differs: plugin, version, backend, rustc, target or abi-crate.
        field: &'static str,
        /// What the signature says.
        signed: String,
        /// What the artifact is.
        actual: String,
    },
    /// A key or signature file did not read.
    #[error("the {what} does not read: {reason}")]
    Malformed {
        /// Which kind of file or field.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}
