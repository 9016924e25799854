//! The trust policy: which keys a host accepts, which it revoked, and whether it runs
//! unsigned artifacts.

use crate::key::{KeyId, PublicKey};
use crate::signature::SignatureFile;
use crate::TrustError;

/// Which signatures a host accepts. Build it from the public keys of the people or CI jobs
/// that release plugins.
///
/// ```
/// use swapkit_trust::{SecretKey, TrustPolicy};
/// let release = SecretKey::generate().unwrap();
/// let policy = TrustPolicy::new().key(release.public());
/// assert!(policy.check_content(&[0; 32], "native", None).is_err(), "unsigned is refused");
/// ```
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    keys: Vec<PublicKey>,
    revoked: Vec<KeyId>,
    allow_unsigned: bool,
}

/// Who vouched for an artifact that passed the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// A trusted key signed it.
    Key(KeyId),
    /// It is unsigned, and the policy allows that.
    Unsigned,
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signer::Key(id) => write!(f, "key {id}"),
            Signer::Unsigned => f.write_str("unsigned"),
        }
    }
}

impl TrustPolicy {
    /// A policy that trusts no key yet and refuses unsigned artifacts.
    pub fn new() -> TrustPolicy {
        TrustPolicy::default()
    }

    /// Trusts signatures made with `key`.
    pub fn key(mut self, key: PublicKey) -> TrustPolicy {
        self.keys.push(key);
        self
    }

    /// Refuses signatures made with key `id`, even if it is trusted: for a key that leaked.
    pub fn revoke(mut self, id: KeyId) -> TrustPolicy {
        self.revoked.push(id);
        self
    }

    /// Runs unsigned artifacts too (while a fleet moves to signed releases). A signature
    /// that is present must still verify.
    pub fn allow_unsigned(mut self) -> TrustPolicy {
        self.allow_unsigned = true;
        self
    }

    /// The keys it trusts.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Checks an artifact before any of its code runs: its signature (if any) must be by a
    /// trusted, unrevoked key, verify, and cover exactly these bytes (`sha256`) for this
    /// `backend`.
    pub fn check_content(
        &self,
        sha256: &[u8; 32],
        backend: &str,
        signature: Option<&SignatureFile>,
    ) -> Result<Signer, TrustError> {
        let Some(sig) = signature else {
            return if self.allow_unsigned {
                Ok(Signer::Unsigned)
            } else {
                Err(TrustError::Unsigned)
            };
        };
        if self.revoked.contains(&sig.key) {
            return Err(TrustError::RevokedKey { key: sig.key });
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id() == sig.key)
            .ok_or(TrustError::UnknownKey { key: sig.key })?;
        sig.verify(key)?;
        if &sig.statement.sha256 != sha256 {
            return Err(TrustError::ContentMismatch { key: sig.key });
        }
        if sig.statement.backend != backend {
            return Err(TrustError::Claim {
                field: "backend",
                signed: sig.statement.backend.clone(),
                actual: backend.to_owned(),
            });
        }
        Ok(Signer::Key(sig.key))
    }

    /// Checks what a loaded artifact says it is (its manifest) against what was signed: a
    /// signature for one plugin or version does not vouch for another.
    pub fn check_claims(
        signature: &SignatureFile,
        plugin: &str,
        version: &str,
        fingerprint: &[String; 3],
    ) -> Result<(), TrustError> {
        let s = &signature.statement;
        let pairs = [
            ("plugin", &s.plugin, plugin),
            ("version", &s.version, version),
            ("rustc", &s.fingerprint[0], fingerprint[0].as_str()),
            ("target", &s.fingerprint[1], fingerprint[1].as_str()),
            ("abi-crate", &s.fingerprint[2], fingerprint[2].as_str()),
        ];
        for (field, signed, actual) in pairs {
            if signed != actual {
                return Err(TrustError::Claim {
                    field,
                    signed: signed.clone(),
                    actual: actual.to_owned(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SecretKey, Statement};

    fn signed(key: &SecretKey) -> SignatureFile {
        SignatureFile::sign(
            Statement {
                plugin: "p".into(),
                version: "1.0.0".into(),
                backend: "wasm".into(),
                fingerprint: ["r".into(), "t".into(), "a".into()],
                sha256: [1; 32],
            },
            key,
        )
        .unwrap()
    }

    #[test]
    fn each_refusal_says_why() {
        let (k, other) = (
            SecretKey::generate().unwrap(),
            SecretKey::generate().unwrap(),
        );
        let sig = signed(&k);
        let policy = TrustPolicy::new().key(k.public());
        assert_eq!(
            policy.check_content(&[1; 32], "wasm", Some(&sig)).unwrap(),
            Signer::Key(k.public().id())
        );
        assert!(matches!(
            policy.check_content(&[1; 32], "wasm", None),
            Err(TrustError::Unsigned)
        ));
        assert!(matches!(
            policy.check_content(&[2; 32], "wasm", Some(&sig)),
            Err(TrustError::ContentMismatch { .. })
        ));
        assert!(matches!(
            policy.check_content(&[1; 32], "native", Some(&sig)),
            Err(TrustError::Claim {
                field: "backend",
                ..
            })
        ));
        assert!(matches!(
            TrustPolicy::new()
                .key(other.public())
                .check_content(&[1; 32], "wasm", Some(&sig)),
            Err(TrustError::UnknownKey { .. })
        ));
        let revoked = policy.clone().revoke(k.public().id());
        assert!(matches!(
            revoked.check_content(&[1; 32], "wasm", Some(&sig)),
            Err(TrustError::RevokedKey { .. })
        ));
        assert_eq!(
            TrustPolicy::new()
                .allow_unsigned()
                .check_content(&[1; 32], "wasm", None)
                .unwrap(),
            Signer::Unsigned
        );
        let fp = ["r".to_owned(), "t".to_owned(), "a".to_owned()];
        TrustPolicy::check_claims(&sig, "p", "1.0.0", &fp).unwrap();
        assert!(matches!(
            TrustPolicy::check_claims(&sig, "p", "2.0.0", &fp),
            Err(TrustError::Claim {
                field: "version",
                ..
            })
        ));
    }
}
