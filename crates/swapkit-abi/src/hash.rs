//! The interface hash: 64-bit FNV-1a over the interface's canonical signature text.
//!
//! FNV-1a is tiny and `const`, so the hash is computed at compile time on both sides. It is
//! not a security boundary: it catches an interface that drifted between host and plugin, and
//! the wire decoder still rejects bytes that do not fit.

/// FNV-1a, 64 bits.
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_vectors() {
        assert_eq!(super::fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
