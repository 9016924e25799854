//! The wire encoding: postcard, a compact serde format with varint integers. It has no
//! pointer-width dependence, so native and wasm plugins encode identically.
//!
//! Arguments cross as a tuple of the method's arguments, in order; results cross as the
//! method's return type.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

pub use postcard::Error;

/// Appends the encoding of `value` to `out`, reusing its capacity.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    let buf = core::mem::take(out);
    *out = postcard::to_extend(value, buf)?;
    Ok(())
}

/// Encodes `value` into a new vector.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    postcard::to_allocvec(value)
}

/// Decodes a `T` from all of `bytes`, borrowing strings and byte slices where `T` does.
pub fn from_bytes<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(Error::DeserializeBadEncoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec;

    #[test]
    fn tuple_round_trip_borrows_strings() {
        let mut out = vec![];
        encode_into(&(7u64, "ab"), &mut out).unwrap();
        assert_eq!(out, [7, 2, b'a', b'b']);
        let (n, s): (u64, &str) = from_bytes(&out).unwrap();
        assert_eq!((n, s), (7, "ab"));
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        assert!(from_bytes::<u8>(&[1, 2]).is_err());
        assert!(from_bytes::<String>(&[5, b'a']).is_err());
    }

    #[test]
    fn byte_slices_and_u8_sequences_share_an_encoding() {
        let as_seq = to_vec(&vec![1u8, 2, 3]).unwrap();
        let as_bytes: &[u8] = from_bytes(&as_seq).unwrap();
        assert_eq!(as_bytes, [1, 2, 3]);
    }
}
