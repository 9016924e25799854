//! The wire encoding: postcard, a compact serde format with varint integers. It has no
//! pointer-width dependence, so native and wasm plugins encode identically.
//!
//! Arguments cross as a tuple of the method's arguments, in order; results cross as the
//! method's return type.

use alloc::vec::Vec;
use core::mem::MaybeUninit;
use postcard::ser_flavors::Flavor;
use serde::{Deserialize, Serialize};

pub use postcard::Error;

/// A postcard flavor that appends to a borrowed vector: no move of the vector in or out, one
/// capacity check per write.
struct Append<'a>(&'a mut Vec<u8>);

impl Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        // Varints and short strings are a few bytes: a loop beats a call to memcpy.
        if bytes.len() <= 16 {
            self.0.reserve(bytes.len());
            for &b in bytes {
                self.0.push(b);
            }
        } else {
            self.0.extend_from_slice(bytes);
        }
        Ok(())
    }

    #[inline]
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// An encoding buffer that lives on the stack while it fits in `N` bytes and moves to the
/// heap when it does not, in one pass. Its stack part is never zeroed.
pub struct StackBuf<const N: usize> {
    stack: [MaybeUninit<u8>; N],
    len: usize,
    heap: Option<Vec<u8>>,
}

impl<const N: usize> StackBuf<N> {
    /// An empty buffer.
    #[inline]
    pub fn new() -> Self {
        StackBuf {
            stack: [MaybeUninit::uninit(); N],
            len: 0,
            heap: None,
        }
    }

    /// The bytes written so far.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match &self.heap {
            Some(v) => v,
            // SAFETY: the first `len` bytes of `stack` were written by `push`.
            None => unsafe {
                core::slice::from_raw_parts(self.stack.as_ptr().cast::<u8>(), self.len)
            },
        }
    }

    #[inline]
    fn push(&mut self, byte: u8) {
        if let Some(v) = &mut self.heap {
            v.push(byte);
        } else if self.len < N {
            self.stack[self.len] = MaybeUninit::new(byte);
            self.len += 1;
        } else {
            self.spill().push(byte);
        }
    }

    #[cold]
    fn spill(&mut self) -> &mut Vec<u8> {
        let mut v = Vec::with_capacity(N * 2);
        v.extend_from_slice(self.as_slice());
        self.heap.insert(v)
    }
}

impl<const N: usize> Default for StackBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

struct Stack<'a, const N: usize>(&'a mut StackBuf<N>);

impl<const N: usize> Flavor for Stack<'_, N> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if self.0.heap.is_none() && bytes.len() <= N - self.0.len {
            for (slot, &b) in self.0.stack[self.0.len..].iter_mut().zip(bytes) {
                *slot = MaybeUninit::new(b);
            }
            self.0.len += bytes.len();
        } else {
            if self.0.heap.is_none() {
                self.0.spill();
            }
            self.0
                .heap
                .as_mut()
                .expect("spilled")
                .extend_from_slice(bytes);
        }
        Ok(())
    }

    #[inline]
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Encodes `value` into `buf`, on the stack if it fits.
#[inline]
pub fn encode_to_stack<T: Serialize + ?Sized, const N: usize>(
    value: &T,
    buf: &mut StackBuf<N>,
) -> Result<(), Error> {
    postcard::serialize_with_flavor(value, Stack(buf))
}

/// Appends the encoding of `value` to `out`, reusing its capacity.
#[inline]
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    postcard::serialize_with_flavor(value, Append(out))
}

/// Encodes `value` into a new vector.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    postcard::to_allocvec(value)
}

/// Decodes a `T` from all of `bytes`, borrowing strings and byte slices where `T` does.
#[inline]
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
        let mut out = vec![9];
        encode_into(&(7u64, "ab"), &mut out).unwrap();
        assert_eq!(out, [9, 7, 2, b'a', b'b']);
        let (n, s): (u64, &str) = from_bytes(&out[1..]).unwrap();
        assert_eq!((n, s), (7, "ab"));
    }

    #[test]
    fn stack_buffer_spills_to_the_heap_in_one_pass() {
        let mut small = StackBuf::<4>::new();
        encode_to_stack(&(7u64, "abcdef"), &mut small).unwrap();
        assert!(small.heap.is_some());
        assert_eq!(small.as_slice(), [7, 6, b'a', b'b', b'c', b'd', b'e', b'f']);
        let long = "x".repeat(40);
        let mut mid = StackBuf::<8>::new();
        encode_to_stack(&(1u8, long.as_str()), &mut mid).unwrap();
        assert_eq!(mid.as_slice(), to_vec(&(1u8, long.as_str())).unwrap());
        let mut big = StackBuf::<64>::new();
        encode_to_stack(&(7u64, "ab"), &mut big).unwrap();
        assert!(big.heap.is_none());
        assert_eq!(big.as_slice(), [7, 2, b'a', b'b']);
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
