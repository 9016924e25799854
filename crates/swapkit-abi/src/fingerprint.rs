//! The build fingerprint: which compiler, target and ABI crate built a binary.
//!
//! Stored as fixed-size, NUL-padded byte arrays so that it has the same layout on every
//! target and can be read before any plugin code runs.

/// Compiler, target and ABI crate version, NUL-padded.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// Output of `rustc -V`.
    pub rustc: [u8; 64],
    /// The target triple.
    pub target: [u8; 64],
    /// The version of `swapkit-abi`.
    pub abi_crate: [u8; 16],
}

impl Fingerprint {
    /// The fingerprint of the binary this crate is compiled into.
    pub const CURRENT: Fingerprint = Fingerprint {
        rustc: pad(env!("SWAPKIT_RUSTC_VERSION")),
        target: pad(env!("SWAPKIT_TARGET")),
        abi_crate: pad(env!("CARGO_PKG_VERSION")),
    };

    /// The compiler field as text.
    pub fn rustc(&self) -> &str {
        unpad(&self.rustc)
    }

    /// The target field as text.
    pub fn target(&self) -> &str {
        unpad(&self.target)
    }

    /// The ABI crate version field as text.
    pub fn abi_crate(&self) -> &str {
        unpad(&self.abi_crate)
    }

    /// The first field that differs from `other`, as `(field, ours, theirs)`.
    pub fn mismatch<'a>(
        &'a self,
        other: &'a Fingerprint,
    ) -> Option<(&'static str, &'a str, &'a str)> {
        if self.rustc != other.rustc {
            Some(("rustc", self.rustc(), other.rustc()))
        } else if self.target != other.target {
            Some(("target", self.target(), other.target()))
        } else if self.abi_crate != other.abi_crate {
            Some(("swapkit-abi version", self.abi_crate(), other.abi_crate()))
        } else {
            None
        }
    }
}

impl core::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Fingerprint")
            .field("rustc", &self.rustc())
            .field("target", &self.target())
            .field("abi_crate", &self.abi_crate())
            .finish()
    }
}

/// Copies `s` into a NUL-padded array, cutting it at `N` bytes.
const fn pad<const N: usize>(s: &str) -> [u8; N] {
    let bytes = s.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < bytes.len() && i < N {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// The text before the first NUL; invalid UTF-8 reads as `"<invalid>"`.
fn unpad(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..end]).unwrap_or("<invalid>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_fields_are_readable() {
        let f = Fingerprint::CURRENT;
        assert!(f.rustc().starts_with("rustc "), "{f:?}");
        assert!(!f.target().is_empty());
        assert_eq!(f.abi_crate(), env!("CARGO_PKG_VERSION"));
        assert_eq!(f.mismatch(&Fingerprint::CURRENT), None);
    }

    #[test]
    fn mismatch_names_the_field() {
        let mut other = Fingerprint::CURRENT;
        other.target = pad("wasm32-unknown-unknown");
        let (field, ours, theirs) = Fingerprint::CURRENT.mismatch(&other).unwrap();
        assert_eq!(field, "target");
        assert_eq!(theirs, "wasm32-unknown-unknown");
        assert_ne!(ours, theirs);
    }
}
