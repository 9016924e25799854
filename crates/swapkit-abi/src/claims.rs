//! What a plugin says it is, as plain bytes in its artifact: its name, version and build
//! fingerprint, readable from the file without running, mapping or compiling any of it.
//!
//! `export_plugin!` puts the same [`CLAIMS_LEN`] bytes in every artifact: in a native library
//! as the exported data symbol `swapkit_claims__<crate>` (beside the header,
//! `swapkit_plugin__<crate>`), in a wasm module as the custom section [`CLAIMS_SECTION`]. They
//! are what `swapkit sign` signs and `swapkit verify` checks, so neither runs the artifact;
//! a load still compares the signed claims with the manifest the plugin's code produces.
//!
//! Layout: [`CLAIMS_MAGIC`] (8 bytes), the [`Fingerprint`] (144 bytes), then the name and the
//! version, each a length byte and [`MAX_CLAIM`] bytes, NUL-padded.

use crate::Fingerprint;

/// The first bytes of the claims.
pub const CLAIMS_MAGIC: [u8; 8] = *b"SWKCLM01";
/// Prefix of the exported symbol that holds a native library's claims; the crate name follows.
pub const CLAIMS_SYMBOL_PREFIX: &str = "swapkit_claims__";
/// The custom section that holds a wasm module's claims.
pub const CLAIMS_SECTION: &str = "swapkit.claims";
/// The longest name or version the claims hold, in bytes.
pub const MAX_CLAIM: usize = 64;
/// Size of the claims.
pub const CLAIMS_LEN: usize = 8 + FINGERPRINT_LEN + 2 * (1 + MAX_CLAIM);

const FINGERPRINT_LEN: usize = core::mem::size_of::<Fingerprint>();

/// The claims of the plugin `name` at `version`, built by this crate's build: what
/// `export_plugin!` embeds. A name or version longer than [`MAX_CLAIM`] bytes stops the build.
pub const fn encode(name: &str, version: &str) -> [u8; CLAIMS_LEN] {
    let mut out = [0u8; CLAIMS_LEN];
    let mut at = copy(&mut out, 0, &CLAIMS_MAGIC);
    let f = Fingerprint::CURRENT;
    at = copy(&mut out, at, &f.rustc);
    at = copy(&mut out, at, &f.target);
    at = copy(&mut out, at, &f.abi_crate);
    if name.len() > MAX_CLAIM {
        panic!("export_plugin!: a plugin name is at most 64 bytes");
    }
    if version.len() > MAX_CLAIM {
        panic!("export_plugin!: a plugin version is at most 64 bytes");
    }
    out[at] = name.len() as u8;
    copy(&mut out, at + 1, name.as_bytes());
    at += 1 + MAX_CLAIM;
    out[at] = version.len() as u8;
    copy(&mut out, at + 1, version.as_bytes());
    out
}

const fn copy(out: &mut [u8; CLAIMS_LEN], at: usize, bytes: &[u8]) -> usize {
    let mut i = 0;
    while i < bytes.len() {
        out[at + i] = bytes[i];
        i += 1;
    }
    at + bytes.len()
}

/// Claims read from an artifact's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims<'a> {
    /// The plugin's name.
    pub name: &'a str,
    /// The plugin's version.
    pub version: &'a str,
    /// Who built it.
    pub fingerprint: Fingerprint,
}

/// Why bytes are not claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimsError {
    /// Fewer than [`CLAIMS_LEN`] bytes.
    Short,
    /// They do not start with [`CLAIMS_MAGIC`]: another version of the format, or not claims.
    Magic,
    /// A length over [`MAX_CLAIM`], or a name or version that is not UTF-8.
    Malformed,
}

impl core::fmt::Display for ClaimsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ClaimsError::Short => "the claims are cut short",
            ClaimsError::Magic => "the claims do not start with `SWKCLM01`",
            ClaimsError::Malformed => "the claims' name or version is malformed",
        })
    }
}

/// Reads claims from the first [`CLAIMS_LEN`] bytes of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Claims<'_>, ClaimsError> {
    let bytes = bytes.get(..CLAIMS_LEN).ok_or(ClaimsError::Short)?;
    if bytes[..8] != CLAIMS_MAGIC {
        return Err(ClaimsError::Magic);
    }
    let mut fingerprint = Fingerprint::CURRENT;
    let (rustc, rest) = bytes[8..].split_at(64);
    let (target, rest) = rest.split_at(64);
    let (abi_crate, rest) = rest.split_at(16);
    fingerprint.rustc.copy_from_slice(rustc);
    fingerprint.target.copy_from_slice(target);
    fingerprint.abi_crate.copy_from_slice(abi_crate);
    let name = text(&rest[..1 + MAX_CLAIM])?;
    let version = text(&rest[1 + MAX_CLAIM..])?;
    Ok(Claims {
        name,
        version,
        fingerprint,
    })
}

/// A length byte and the text it measures, NUL-padded to [`MAX_CLAIM`] bytes.
fn text(field: &[u8]) -> Result<&str, ClaimsError> {
    let len = field[0] as usize;
    if len > MAX_CLAIM {
        return Err(ClaimsError::Malformed);
    }
    core::str::from_utf8(&field[1..1 + len]).map_err(|_| ClaimsError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_read_back_as_written() {
        const BYTES: [u8; CLAIMS_LEN] = encode("greeter", "1.2.3-rc.1");
        let claims = decode(&BYTES).unwrap();
        assert_eq!(claims.name, "greeter");
        assert_eq!(claims.version, "1.2.3-rc.1");
        assert_eq!(claims.fingerprint, Fingerprint::CURRENT);
        let longest = "x".repeat(MAX_CLAIM);
        assert_eq!(decode(&encode(&longest, &longest)).unwrap().name, longest);
    }

    #[test]
    fn short_foreign_or_malformed_bytes_are_not_claims() {
        let bytes = encode("greeter", "1.0.0");
        assert_eq!(decode(&bytes[..CLAIMS_LEN - 1]), Err(ClaimsError::Short));
        let mut foreign = bytes;
        foreign[7] = b'2';
        assert_eq!(decode(&foreign), Err(ClaimsError::Magic));
        let name_len = 8 + FINGERPRINT_LEN;
        let mut long = bytes;
        long[name_len] = MAX_CLAIM as u8 + 1;
        assert_eq!(decode(&long), Err(ClaimsError::Malformed));
        let mut invalid = bytes;
        invalid[name_len + 1] = 0xff;
        assert_eq!(decode(&invalid), Err(ClaimsError::Malformed));
    }

    #[test]
    #[should_panic(expected = "at most 64 bytes")]
    fn a_name_past_the_bound_stops_the_build() {
        encode(&"x".repeat(MAX_CLAIM + 1), "1.0.0");
    }
}
