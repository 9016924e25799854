//! Signature files: what is signed about an artifact, and the detached file next to it.

use ed25519_dalek::{Signature as Ed25519, Signer};

use crate::key::{KeyId, PublicKey, SecretKey};
use crate::text::{field_value, hex, unhex, Fields};
use crate::TrustError;

const HEADER: &str = "swapkit signature v1";

/// The extension of a detached signature file: `greeter.so` is signed by `greeter.so.sig`.
pub const EXTENSION: &str = "sig";

/// The path of the signature file of `artifact`: the artifact's name with `.sig` appended.
pub fn signature_path(artifact: &std::path::Path) -> std::path::PathBuf {
    let mut name = artifact.as_os_str().to_owned();
    name.push(".");
    name.push(EXTENSION);
    name.into()
}

/// What a signature vouches for: one artifact's exact content, and what it claims to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The plugin's name, as its manifest says.
    pub plugin: String,
    /// The plugin's version.
    pub version: String,
    /// The backend it runs on: `native` or `wasm`.
    pub backend: String,
    /// The build fingerprint: `rustc -V`, target, `swapkit-abi` version.
    pub fingerprint: [String; 3],
    /// SHA-256 of the artifact's bytes.
    pub sha256: [u8; 32],
}

impl Statement {
    /// The signed text: the file's lines from the header to `sha256`, as written.
    fn message(&self, key: KeyId) -> Result<String, TrustError> {
        let fields = [
            ("plugin", self.plugin.as_str()),
            ("version", self.version.as_str()),
            ("backend", self.backend.as_str()),
            ("rustc", self.fingerprint[0].as_str()),
            ("target", self.fingerprint[1].as_str()),
            ("abi-crate", self.fingerprint[2].as_str()),
        ];
        let mut text = format!("{HEADER}\nkey-id: {key}\n");
        for (name, value) in fields {
            field_value(name, value)?;
            text.push_str(&format!("{name}: {value}\n"));
        }
        text.push_str(&format!("sha256: {}\n", hex(&self.sha256)));
        Ok(text)
    }
}

/// A detached signature: who signed, what they vouched for, and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureFile {
    /// The id of the key that signed.
    pub key: KeyId,
    /// What was signed.
    pub statement: Statement,
    signature: [u8; 64],
}

impl SignatureFile {
    /// Signs `statement` with `key`.
    pub fn sign(statement: Statement, key: &SecretKey) -> Result<SignatureFile, TrustError> {
        let id = key.public().id();
        let message = statement.message(id)?;
        let signature = key.signing().sign(message.as_bytes()).to_bytes();
        Ok(SignatureFile {
            key: id,
            statement,
            signature,
        })
    }

    /// Checks the signature with `key`, which must be the key it names.
    pub fn verify(&self, key: &PublicKey) -> Result<(), TrustError> {
        if key.id() != self.key {
            return Err(TrustError::UnknownKey { key: self.key });
        }
        let message = self.statement.message(self.key)?;
        key.verifying()
            .verify_strict(message.as_bytes(), &Ed25519::from_bytes(&self.signature))
            .map_err(|_| TrustError::BadSignature { key: self.key })
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        let message = self
            .statement
            .message(self.key)
            .expect("a signed statement is writable");
        format!("{message}signature: {}\n", hex(&self.signature))
    }

    /// Reads a signature file. Only the exact format [`SignatureFile::to_text`] writes is
    /// accepted: fields in order, none missing, none added.
    pub fn parse(text: &str) -> Result<SignatureFile, TrustError> {
        let mut f = Fields::parse(text, HEADER, "signature file")?;
        let key: KeyId = f.next("key-id")?.parse()?;
        let statement = Statement {
            plugin: f.next("plugin")?.to_owned(),
            version: f.next("version")?.to_owned(),
            backend: f.next("backend")?.to_owned(),
            fingerprint: [
                f.next("rustc")?.to_owned(),
                f.next("target")?.to_owned(),
                f.next("abi-crate")?.to_owned(),
            ],
            sha256: unhex(f.next("sha256")?, "sha256")?,
        };
        let signature = unhex(f.next("signature")?, "signature")?;
        f.end()?;
        Ok(SignatureFile {
            key,
            statement,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn statement() -> Statement {
        Statement {
            plugin: "greeter".into(),
            version: "1.0.0".into(),
            backend: "native".into(),
            fingerprint: [
                "rustc 1.95.0".into(),
                "x86_64-unknown-linux-gnu".into(),
                "0.1.0".into(),
            ],
            sha256: [7; 32],
        }
    }

    #[test]
    fn a_signature_round_trips_and_verifies() {
        let key = SecretKey::generate().unwrap();
        let signed = SignatureFile::sign(statement(), &key).unwrap();
        let text = signed.to_text();
        let read = SignatureFile::parse(&text).unwrap();
        assert_eq!(read, signed);
        read.verify(&key.public()).unwrap();
        let other = SecretKey::generate().unwrap();
        assert!(matches!(
            read.verify(&other.public()),
            Err(TrustError::UnknownKey { .. })
        ));
    }

    #[test]
    fn any_changed_field_breaks_the_signature() {
        let key = SecretKey::generate().unwrap();
        let text = SignatureFile::sign(statement(), &key).unwrap().to_text();
        for (from, to) in [
            ("plugin: greeter", "plugin: greeter2"),
            ("version: 1.0.0", "version: 0.9.0"),
            ("backend: native", "backend: wasm"),
            ("rustc 1.95.0", "rustc 1.94.0"),
            ("sha256: 07", "sha256: 08"),
        ] {
            let forged = SignatureFile::parse(&text.replacen(from, to, 1)).unwrap();
            assert!(
                matches!(
                    forged.verify(&key.public()),
                    Err(TrustError::BadSignature { .. })
                ),
                "{from} -> {to}"
            );
        }
    }

    #[test]
    fn a_value_that_would_add_a_line_cannot_be_signed() {
        let key = SecretKey::generate().unwrap();
        let mut s = statement();
        s.version = "1.0.0\nsha256: 00".into();
        assert!(SignatureFile::sign(s, &key).is_err());
    }

    #[test]
    fn keys_round_trip_through_their_files() {
        let key = SecretKey::generate().unwrap();
        let again = SecretKey::parse(&key.to_text()).unwrap();
        assert_eq!(again.public(), key.public());
        let public = PublicKey::parse(&key.public().to_text()).unwrap();
        assert_eq!(public, key.public());
        assert_eq!(
            PublicKey::parse(&hex(&key.public().to_bytes())).unwrap(),
            key.public()
        );
        // A key file whose id does not match its key is refused.
        let other = SecretKey::generate().unwrap();
        let mixed = key.public().to_text().replace(
            &key.public().id().to_string(),
            &other.public().id().to_string(),
        );
        assert!(PublicKey::parse(&mixed).is_err());
    }
}
