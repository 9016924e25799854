//! Keys: an ed25519 key pair, its short id, and the text files they are kept in.

use std::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::text::{hex, unhex, Fields};
use crate::TrustError;

/// The first 8 bytes of the SHA-256 of a public key: how signature files and policies name
/// it. Shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl std::str::FromStr for KeyId {
    type Err = TrustError;

    fn from_str(s: &str) -> Result<KeyId, TrustError> {
        Ok(KeyId(unhex(s.trim(), "key id")?))
    }
}

/// A public key: what a host trusts, and what verifies a signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

const PUBLIC_HEADER: &str = "swapkit public key v1";
const SECRET_HEADER: &str = "swapkit secret key v1";

impl PublicKey {
    /// The key from its 32 bytes. Weak keys (of small order) are refused.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, TrustError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|e| TrustError::Malformed {
            what: "public key",
            reason: e.to_string(),
        })?;
        if key.is_weak() {
            return Err(TrustError::Malformed {
                what: "public key",
                reason: "a weak key (of small order) verifies forged signatures".into(),
            });
        }
        Ok(PublicKey(key))
    }

    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Its id.
    pub fn id(&self) -> KeyId {
        let digest = Sha256::digest(self.0.as_bytes());
        KeyId(digest[..8].try_into().expect("8 of 32 bytes"))
    }

    /// Reads a public key file (as [`PublicKey::to_text`] writes it), or 64 hex digits.
    pub fn parse(text: &str) -> Result<PublicKey, TrustError> {
        let text = text.trim();
        if !text.starts_with(PUBLIC_HEADER) {
            return PublicKey::from_bytes(&unhex(text, "public key")?);
        }
        let mut fields = Fields::parse(text, PUBLIC_HEADER, "public key file")?;
        let id: KeyId = fields.next("key-id")?.parse()?;
        let key = PublicKey::from_bytes(&unhex(fields.next("public")?, "public key")?)?;
        fields.end()?;
        if key.id() != id {
            return Err(TrustError::Malformed {
                what: "public key file",
                reason: format!("its key-id {id} is not the id of its key, {}", key.id()),
            });
        }
        Ok(key)
    }

    /// The public key file's text.
    pub fn to_text(&self) -> String {
        format!(
            "{PUBLIC_HEADER}\nkey-id: {}\npublic: {}\n",
            self.id(),
            hex(self.0.as_bytes())
        )
    }

    pub(crate) fn verifying(&self) -> &VerifyingKey {
        &self.0
    }
}

/// A secret key: what `swapkit sign` signs with. Keep its file readable by its owner only.
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public().id())
    }
}

impl SecretKey {
    /// A new key from the operating system's randomness.
    pub fn generate() -> Result<SecretKey, TrustError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| TrustError::Malformed {
            what: "secret key",
            reason: format!("the operating system gave no randomness: {e}"),
        })?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// Its public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Reads a secret key file, as [`SecretKey::to_text`] writes it.
    pub fn parse(text: &str) -> Result<SecretKey, TrustError> {
        let mut fields = Fields::parse(text.trim(), SECRET_HEADER, "secret key file")?;
        let id: KeyId = fields.next("key-id")?.parse()?;
        let key = SecretKey(SigningKey::from_bytes(&unhex(
            fields.next("secret")?,
            "secret key",
        )?));
        fields.end()?;
        if key.public().id() != id {
            return Err(TrustError::Malformed {
                what: "secret key file",
                reason: format!(
                    "its key-id {id} is not the id of its key, {}",
                    key.public().id()
                ),
            });
        }
        Ok(key)
    }

    /// The secret key file's text.
    pub fn to_text(&self) -> String {
        format!(
            "{SECRET_HEADER}\nkey-id: {}\nsecret: {}\n",
            self.public().id(),
            hex(self.0.as_bytes())
        )
    }

    pub(crate) fn signing(&self) -> &SigningKey {
        &self.0
    }
}
