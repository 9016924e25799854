//! The interface hash: 64-bit FNV-1a over the interface's name and canonical signature text.
//!
//! FNV-1a is tiny and `const`, so the hash is computed at compile time on both sides. It is
//! not a security boundary: it catches an interface that drifted between host and plugin, and
//! the wire decoder still rejects bytes that do not fit.

/// FNV-1a, 64 bits.
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_continue(0xcbf2_9ce4_8422_2325, bytes)
}

/// FNV-1a over `bytes`, continued from `hash` (the hash of what came before them).
pub const fn fnv1a64_continue(hash: u64, bytes: &[u8]) -> u64 {
    let mut hash = hash;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The hash of an interface: FNV-1a of `name`, a `{`, `signature` and a `}`. Two traits with
/// the same methods but different names hash differently.
pub const fn interface_hash(name: &str, signature: &str) -> u64 {
    let mut hash = fnv1a64(name.as_bytes());
    hash = fnv1a64_continue(hash, b"{");
    hash = fnv1a64_continue(hash, signature.as_bytes());
    fnv1a64_continue(hash, b"}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_vectors() {
        assert_eq!(super::fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn interface_hash_covers_the_name() {
        assert_eq!(
            super::interface_hash("A", "f()->u64"),
            super::fnv1a64(b"A{f()->u64}")
        );
        assert_ne!(
            super::interface_hash("A", "f()->u64"),
            super::interface_hash("B", "f()->u64")
        );
    }
}
