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

    #[inline(always)]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if bytes.len() <= 16 {
            self.0.reserve(bytes.len());
            let len = self.0.len();
            copy_small(&mut self.0.spare_capacity_mut()[..bytes.len()], bytes);
            // SAFETY: `copy_small` initialised the `bytes.len()` bytes after `len`, which the
            // `reserve` above made room for.
            unsafe { self.0.set_len(len + bytes.len()) };
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

    #[inline(always)]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        let buf = &mut *self.0;
        if buf.heap.is_none() && buf.len < N {
            buf.stack[buf.len] = MaybeUninit::new(byte);
            buf.len += 1;
        } else {
            buf.push(byte);
        }
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        let buf = &mut *self.0;
        let (start, n) = (buf.len, bytes.len());
        if n <= 16 && buf.heap.is_none() && start + n <= N {
            copy_small(&mut buf.stack[start..start + n], bytes);
            buf.len = start + n;
        } else {
            buf.extend_slow(bytes);
        }
        Ok(())
    }

    #[inline(always)]
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

impl<const N: usize> StackBuf<N> {
    /// Appends a long run, or any run once spilled.
    #[cold]
    #[inline(never)]
    fn extend_slow(&mut self, bytes: &[u8]) {
        if self.heap.is_none() && bytes.len() <= N - self.len {
            for (slot, &b) in self.stack[self.len..].iter_mut().zip(bytes) {
                *slot = MaybeUninit::new(b);
            }
            self.len += bytes.len();
            return;
        }
        if self.heap.is_none() {
            self.spill();
        }
        self.heap
            .as_mut()
            .expect("spilled")
            .extend_from_slice(bytes);
    }
}

/// Copies up to 16 bytes with fixed-size, overlapping moves that the compiler inlines. A
/// varint or a short string is a few bytes, and a call to `memcpy` for each would cost more
/// than the copy.
#[inline(always)]
fn copy_small(dst: &mut [MaybeUninit<u8>], src: &[u8]) {
    debug_assert!(src.len() <= 16 && dst.len() == src.len());
    let n = src.len();
    let d = dst.as_mut_ptr().cast::<u8>();
    let s = src.as_ptr();
    // SAFETY: every read is within `src[..n]` and every write within `dst[..n]`: for each
    // size class, the two chunks start at 0 and end at `n`, overlapping in the middle.
    unsafe {
        if n >= 8 {
            d.cast::<[u8; 8]>()
                .write_unaligned(s.cast::<[u8; 8]>().read_unaligned());
            d.add(n - 8)
                .cast::<[u8; 8]>()
                .write_unaligned(s.add(n - 8).cast::<[u8; 8]>().read_unaligned());
        } else if n >= 4 {
            d.cast::<[u8; 4]>()
                .write_unaligned(s.cast::<[u8; 4]>().read_unaligned());
            d.add(n - 4)
                .cast::<[u8; 4]>()
                .write_unaligned(s.add(n - 4).cast::<[u8; 4]>().read_unaligned());
        } else if n > 0 {
            *d = *s;
            *d.add(n / 2) = *s.add(n / 2);
            *d.add(n - 1) = *s.add(n - 1);
        }
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
    fn small_copies_are_exact_for_every_length() {
        for n in 0..=16usize {
            let src: Vec<u8> = (1..=n as u8).collect();
            let mut out = vec![0xAA];
            encode_into(src.as_slice(), &mut out).unwrap();
            assert_eq!(&out[2..], &src[..], "length {n}");
            let mut stack = StackBuf::<32>::new();
            encode_to_stack(src.as_slice(), &mut stack).unwrap();
            assert_eq!(&stack.as_slice()[1..], &src[..], "length {n}");
        }
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
