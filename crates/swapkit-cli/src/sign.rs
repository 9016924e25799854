//! `swapkit keygen`, `swapkit sign` and `swapkit verify`: signed releases.

use std::path::{Path, PathBuf};

use swapkit::trust::{signature_path, PublicKey, SecretKey, SignatureFile};
use swapkit::TrustPolicy;

use crate::Error;

/// Writes a new key pair: `<out>.key` (the secret, mode 0600) and `<out>.pub`. Never
/// overwrites a file.
pub(crate) fn keygen(out: &Path) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = SecretKey::generate()?;
    let (secret, public) = (with_extension(out, "key"), with_extension(out, "pub"));
    for path in [&secret, &public] {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(format!("{} exists; keygen never overwrites a key", path.display()).into());
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .map_err(|e| format!("cannot create {}: {e}", secret.display()))?;
    file.write_all(key.to_text().as_bytes())?;
    file.sync_all()?;
    std::fs::write(&public, key.public().to_text())?;
    println!("key {}", key.public().id());
    println!(
        "  secret  {} (mode 0600: keep it to the release job)",
        secret.display()
    );
    println!(
        "  public  {} (give it to hosts: TrustPolicy::new().key(..))",
        public.display()
    );
    Ok(())
}

fn with_extension(out: &Path, ext: &str) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".");
    name.push(ext);
    name.into()
}

/// Reads a secret key file, refusing one that others may read.
pub(crate) fn secret_key(path: &Path) -> Result<SecretKey, Error> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} may be read by other users (mode {:o}); `chmod 600` it",
            path.display(),
            meta.mode() & 0o777
        )
        .into());
    }
    Ok(SecretKey::parse(&std::fs::read_to_string(path)?)?)
}

/// Signs `artifact` with `key`, writing `<artifact>.sig`: its hash and the claims read from
/// its bytes. None of its code runs, here or in a child.
pub(crate) fn sign_one(artifact: &Path, key: &SecretKey) -> Result<SignatureFile, Error> {
    sign_to(artifact, &signature_path(artifact), key)
}

/// Signs the content of `artifact`, writing the signature to `to` (the signature path of
/// where the same bytes will be published).
pub(crate) fn sign_to(artifact: &Path, to: &Path, key: &SecretKey) -> Result<SignatureFile, Error> {
    let signed = SignatureFile::sign(crate::inspect::claimed(artifact)?, key)?;
    crate::write_atomic(to, signed.to_text().as_bytes())?;
    Ok(signed)
}

pub(crate) fn sign(key: &Path, artifacts: &[PathBuf]) -> Result<(), Error> {
    let key = secret_key(key)?;
    for artifact in artifacts {
        let signed = sign_one(artifact, &key)?;
        let s = &signed.statement;
        println!(
            "signed {} {} ({}) with key {} -> {}",
            s.plugin,
            s.version,
            s.backend,
            signed.key,
            signature_path(artifact).display()
        );
    }
    Ok(())
}

/// Checks each artifact as a host with a policy trusting `keys` would; fails on the first
/// that would be refused. Everything checked is read from the artifact's bytes, one read of
/// them: the signature over their hash first, then the claims it signed against the claims
/// the bytes hold. None of its code runs, here or in a child (a load then also checks the
/// claims against the manifest the plugin's code produces).
pub(crate) fn verify(keys: &[PathBuf], artifacts: &[PathBuf]) -> Result<(), Error> {
    let mut policy = TrustPolicy::new();
    for key in keys {
        let text = std::fs::read_to_string(key)
            .map_err(|e| format!("cannot read {}: {e}", key.display()))?;
        policy = policy.key(PublicKey::parse(&text)?);
    }
    for artifact in artifacts {
        let check = swapkit::inspect_file(artifact)?;
        let sha256 = check.digest();
        let sig_path = signature_path(artifact);
        let signature = match std::fs::read_to_string(&sig_path) {
            Ok(text) => Some(SignatureFile::parse(&text)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read {}: {e}", sig_path.display()).into()),
        };
        let refused = |e: swapkit::trust::TrustError| format!("{}: {e}", artifact.display());
        let backend = check.backend.to_string();
        let signer = policy
            .check_content(&sha256, &backend, signature.as_ref())
            .map_err(refused)?;
        // Only now, the signature good: what the bytes claim, checked against what was signed.
        let claims = check.claims.as_ref().map_err(|why| {
            format!(
                "{}: cannot read what it claims to be: {why}",
                artifact.display()
            )
        })?;
        if let Some(signature) = &signature {
            TrustPolicy::check_claims(
                signature,
                &claims.name,
                &claims.version,
                &claims.fingerprint,
            )
            .map_err(refused)?;
        }
        println!(
            "ok {}: {} {} ({backend}), signed by {signer}",
            artifact.display(),
            claims.name,
            claims.version,
        );
    }
    Ok(())
}
