//! Signatures over records other than artifacts, such as a fleet's rollout: the signer's
//! key vouches for exact bytes of a given kind.
//!
//! The signed message is `swapkit record\nkind: KIND\n` followed by the bytes, so a record's
//! signature can never pass as an artifact's (whose message starts `swapkit signature v1`),
//! nor one kind of record as another.

use ed25519_dalek::{Signature as Ed25519, Signer};

use crate::key::{KeyId, PublicKey, SecretKey};
use crate::text::field_value;
use crate::TrustError;

/// A signature over one record's bytes, and the key that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSignature {
    /// The id of the key that signed.
    pub key: KeyId,
    /// The ed25519 signature.
    pub bytes: [u8; 64],
}

fn message(kind: &str, body: &[u8]) -> Result<Vec<u8>, TrustError> {
    field_value("kind", kind)?;
    let mut message = format!("swapkit record\nkind: {kind}\n").into_bytes();
    message.extend_from_slice(body);
    Ok(message)
}

impl SecretKey {
    /// Signs `body` as a record of `kind` (one line of text, such as `fleet rollout`).
    pub fn sign_record(&self, kind: &str, body: &[u8]) -> Result<RecordSignature, TrustError> {
        Ok(RecordSignature {
            key: self.public().id(),
            bytes: self.signing().sign(&message(kind, body)?).to_bytes(),
        })
    }
}

impl PublicKey {
    /// Checks that this key signed `body` as a record of `kind`.
    pub fn verify_record(
        &self,
        kind: &str,
        body: &[u8],
        signature: &RecordSignature,
    ) -> Result<(), TrustError> {
        if signature.key != self.id() {
            return Err(TrustError::UnknownKey { key: signature.key });
        }
        self.verifying()
            .verify_strict(
                &message(kind, body)?,
                &Ed25519::from_bytes(&signature.bytes),
            )
            .map_err(|_| TrustError::BadSignature { key: signature.key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_verifies_only_as_signed() {
        let key = SecretKey::generate().unwrap();
        let s = key.sign_record("fleet rollout", b"{\"seq\":7}").unwrap();
        key.public()
            .verify_record("fleet rollout", b"{\"seq\":7}", &s)
            .unwrap();
        for (kind, body) in [
            ("fleet rollout", &b"{\"seq\":8}"[..]),
            ("fleet release", &b"{\"seq\":7}"[..]),
        ] {
            assert!(matches!(
                key.public().verify_record(kind, body, &s),
                Err(TrustError::BadSignature { .. })
            ));
        }
        let other = SecretKey::generate().unwrap();
        assert!(matches!(
            other
                .public()
                .verify_record("fleet rollout", b"{\"seq\":7}", &s),
            Err(TrustError::UnknownKey { .. })
        ));
        assert!(key.sign_record("a\nb", b"").is_err());
    }
}
