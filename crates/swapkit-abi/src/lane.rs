//! The direct lane: a call whose arguments and result cross the boundary as they are, with no
//! encoding step.
//!
//! `#[interface]` gives a method a lane when every argument and its result are plain data
//! (see ABI.md, "The direct lane"). On a native plugin the lane is an `extern "C"` function per
//! method, listed in the header's extension under the method's [`method_hash`]; on wasm it is
//! one export, `swapkit_lane`, that takes every argument as a 64-bit wasm value. The host calls
//! a lane only if the plugin lists it, and takes the encoded path otherwise, so a plugin built
//! without lanes keeps working.
//!
//! The traits here are implemented for the plain types by this crate, and for a `#[repr(C)]`
//! struct by `#[derive(Plain)]`; the macros and the host runtime use them. A plugin or host
//! author never calls them.

use alloc::vec::Vec;
use core::ffi::c_void;
use core::mem::{size_of, MaybeUninit};

use crate::hash::{fnv1a64, fnv1a64_continue};
use crate::header::{PluginHeader, RawSlice};

/// The version of the lane's layout rules, hashed into every [`method_hash`]: a host and a
/// plugin that lay a lane out differently never find each other's entries.
pub const LANE_VERSION: &str = "swapkit-lane-1";

/// How many 64-bit words a wasm lane call carries: a method with more arguments keeps the
/// encoded path.
pub const WASM_ARGS: usize = 6;

/// The hash a lane is listed under: method number `method` of the interface whose hash is
/// `interface`, under the lane rules of [`LANE_VERSION`].
pub const fn method_hash(interface: u64, method: u32) -> u64 {
    mix(
        fnv1a64(LANE_VERSION.as_bytes()),
        &[interface, method as u64],
    )
}

/// Mixes `parts` into `hash`, in order, each as its 8 little-endian bytes: an interface's hash
/// with the layouts of the plain structs its lanes pass, or a struct's name with its fields'
/// layouts.
pub const fn mix(hash: u64, parts: &[u64]) -> u64 {
    let mut hash = hash;
    let mut p = 0;
    while p < parts.len() {
        hash = fnv1a64_continue(hash, &parts[p].to_le_bytes());
        p += 1;
    }
    hash
}

/// One native lane: its method hash and its `extern "C"` entry.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LaneEntry {
    /// [`method_hash`] of the method it serves.
    pub hash: u64,
    /// The entry, of the type the method's lane layout gives (ABI.md); null in an unused slot.
    pub entry: *const (),
}

impl LaneEntry {
    /// An unused slot.
    pub const NONE: LaneEntry = LaneEntry {
        hash: 0,
        entry: core::ptr::null(),
    };
}

// SAFETY: a hash and the address of a function.
unsafe impl Sync for LaneEntry {}
// SAFETY: as above.
unsafe impl Send for LaneEntry {}

/// The entries of `parts`, one after the other, in an array of exactly their number.
pub const fn lane_table<const N: usize>(parts: &[&[LaneEntry]]) -> [LaneEntry; N] {
    let mut out = [LaneEntry::NONE; N];
    let mut k = 0;
    let mut p = 0;
    while p < parts.len() {
        let mut i = 0;
        while i < parts[p].len() {
            out[k] = parts[p][i];
            k += 1;
            i += 1;
        }
        p += 1;
    }
    assert!(k == N, "the lane table's length is the sum of its parts");
    out
}

/// The method hashes of `lanes`, after their number: the table a wasm plugin's
/// `swapkit_lanes` points at.
pub const fn lane_hashes<const N: usize>(lanes: &[LaneEntry]) -> [u64; N] {
    let mut out = [0u64; N];
    out[0] = lanes.len() as u64;
    let mut i = 0;
    while i < lanes.len() {
        out[i + 1] = lanes[i].hash;
        i += 1;
    }
    out
}

/// What follows a v1 header when [`FLAG_EXTENDED`](crate::FLAG_EXTENDED) is set. It only grows:
/// `size` says how many bytes of it the plugin filled in, and a host reads no field past it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HeaderExt {
    /// `size_of::<HeaderExt>()` as the plugin was built.
    pub size: usize,
    /// The native lanes, `lane_count` of them.
    pub lanes: *const LaneEntry,
    /// See `lanes`.
    pub lane_count: usize,
}

/// The header `export_plugin!` exports: the v1 header, then its extension.
#[repr(C)]
#[derive(Debug)]
pub struct ExtendedHeader {
    /// The v1 header, with [`FLAG_EXTENDED`](crate::FLAG_EXTENDED) set.
    pub header: PluginHeader,
    /// The extension.
    pub ext: HeaderExt,
}

// SAFETY: immutable data, function pointers and pointers to immutable statics.
unsafe impl Sync for ExtendedHeader {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::PluginHeader {}
    impl Sealed for crate::ExtendedHeader {}
}

/// A header a host can register directly (a static plugin): the v1 [`PluginHeader`] of a
/// hand-written plugin, or the [`ExtendedHeader`] that `export_plugin!` exports.
pub trait StaticHeader: sealed::Sealed + Sync + 'static {
    /// Whether the type holds an extension after the v1 header: a header whose flags claim
    /// one, in a type that has none, is refused rather than read past its end.
    const EXTENDED: bool;
    /// The address of the header, valid for the whole object.
    fn as_header_ptr(&'static self) -> *const PluginHeader;
}

impl StaticHeader for PluginHeader {
    const EXTENDED: bool = false;
    fn as_header_ptr(&'static self) -> *const PluginHeader {
        self
    }
}

impl StaticHeader for ExtendedHeader {
    const EXTENDED: bool = true;
    fn as_header_ptr(&'static self) -> *const PluginHeader {
        (self as *const ExtendedHeader).cast()
    }
}

/// What a native lane returns: a status, and the result's raw form when it is
/// [`Status::Ok`](crate::Status::Ok). A small result comes back in registers.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LaneRet<R: Copy> {
    /// A [`Status`](crate::Status): `Ok`, or `Panic` with the message in `out`.
    pub status: u32,
    /// The result, initialised when `status` is `Ok`.
    pub value: MaybeUninit<R>,
}

/// Why a lane's result was refused: the guest answered with something its type cannot hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneError {
    /// A number out of the result type's range, or an invalid `bool` or `char`.
    OutOfRange(&'static str),
    /// Text that is not UTF-8.
    Utf8,
    /// Bytes whose length does not fit the type.
    Length,
    /// A result that lies outside the guest's memory.
    Outside,
}

impl core::fmt::Display for LaneError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LaneError::OutOfRange(ty) => write!(f, "the lane returned a value no `{ty}` holds"),
            LaneError::Utf8 => f.write_str("the lane returned text that is not UTF-8"),
            LaneError::Length => {
                f.write_str("the lane returned bytes whose length does not fit its type")
            }
            LaneError::Outside => f.write_str("the lane's result lies outside linear memory"),
        }
    }
}

/// Where the host puts a wasm lane's borrowed arguments: the guest's input buffer.
pub trait WasmStage {
    /// Copies `bytes` into guest memory at an address aligned to `align` (at most 8), and
    /// returns the address; `None` if they do not fit.
    fn stage(&mut self, bytes: &[u8], align: usize) -> Option<u32>;
}

/// How the host reads a wasm lane's result from guest memory.
pub trait WasmMemory {
    /// The `len` bytes at guest address `ptr`, if they lie in linear memory.
    fn read(&mut self, ptr: u32, len: u32) -> Option<&[u8]>;
}

/// A type that may be a plain struct's field or a lane's element: it has no padding and no
/// pointers, and the same layout on every target swapkit supports, so its bytes cross as they
/// are.
///
/// # Safety
/// `Self` has no padding bytes and no pointers, and [`Plain::valid`] returns `true` only for
/// bytes that are a valid `Self`. Use `#[derive(Plain)]` rather than implementing it.
pub unsafe trait Plain: Copy + Send + Sync + 'static {
    /// A hash of the layout: the type's name, its fields' names and their layouts, in order.
    const LAYOUT: u64;
    /// Whether every bit pattern is a valid value (integers and floats, and structs and arrays
    /// of them): then bytes from a wasm guest need no check.
    const ANY_BITS: bool;
    /// Whether `bytes`, exactly `size_of::<Self>()` of them, hold a valid value.
    fn valid(bytes: &[u8]) -> bool;
}

macro_rules! plain_any_bits {
    ($($t:ty),*) => {$(
        // SAFETY: a primitive number: no padding, no pointers, every bit pattern valid.
        unsafe impl Plain for $t {
            const LAYOUT: u64 = fnv1a64(stringify!($t).as_bytes());
            const ANY_BITS: bool = true;
            #[inline]
            fn valid(_: &[u8]) -> bool {
                true
            }
        }
    )*};
}

plain_any_bits!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);

// SAFETY: one byte, valid when 0 or 1.
unsafe impl Plain for bool {
    const LAYOUT: u64 = fnv1a64(b"bool");
    const ANY_BITS: bool = false;
    #[inline]
    fn valid(bytes: &[u8]) -> bool {
        bytes.len() == 1 && bytes[0] <= 1
    }
}

// SAFETY: four bytes, valid when a Unicode scalar value.
unsafe impl Plain for char {
    const LAYOUT: u64 = fnv1a64(b"char");
    const ANY_BITS: bool = false;
    #[inline]
    fn valid(bytes: &[u8]) -> bool {
        match <[u8; 4]>::try_from(bytes) {
            Ok(b) => char::from_u32(u32::from_ne_bytes(b)).is_some(),
            Err(_) => false,
        }
    }
}

// SAFETY: elements of a plain type, which has no padding, one after another.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {
    const LAYOUT: u64 = mix(fnv1a64(b"[;]"), &[T::LAYOUT, N as u64]);
    const ANY_BITS: bool = T::ANY_BITS;
    #[inline]
    fn valid(bytes: &[u8]) -> bool {
        match size_of::<T>() {
            // An array of zero-sized elements (`[[bool; 0]; 2]`) has no bytes to check.
            0 => bytes.is_empty(),
            size => T::ANY_BITS || bytes.chunks_exact(size).all(T::valid),
        }
    }
}

/// The bytes of a plain value.
#[inline]
pub fn bytes_of<T: Plain>(value: &T) -> &[u8] {
    // SAFETY: a plain type has no padding, so every byte of it is initialised.
    unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// The bytes of a slice of plain values.
#[inline]
pub fn bytes_of_slice<T: Plain>(values: &[T]) -> &[u8] {
    // SAFETY: as for `bytes_of`, element after element.
    unsafe {
        core::slice::from_raw_parts(values.as_ptr().cast::<u8>(), core::mem::size_of_val(values))
    }
}

/// A plain value read from `bytes`, if they have its size and hold a valid value.
#[inline]
pub fn read_plain<T: Plain>(bytes: &[u8]) -> Result<T, LaneError> {
    if bytes.len() != size_of::<T>() {
        return Err(LaneError::Length);
    }
    if !T::ANY_BITS && !T::valid(bytes) {
        return Err(LaneError::OutOfRange(core::any::type_name::<T>()));
    }
    // SAFETY: the size matches, and the bytes are a valid `T` (checked above, or any bits are).
    Ok(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Plain values copied from `bytes`, if their length is a whole number of values and every
/// one is valid.
pub fn read_plain_vec<T: Plain>(bytes: &[u8]) -> Result<Vec<T>, LaneError> {
    let size = size_of::<T>();
    if size == 0 || !bytes.len().is_multiple_of(size) {
        return Err(LaneError::Length);
    }
    if !T::ANY_BITS && !bytes.chunks_exact(size).all(T::valid) {
        return Err(LaneError::OutOfRange(core::any::type_name::<T>()));
    }
    let n = bytes.len() / size;
    let mut out = Vec::<T>::with_capacity(n);
    // SAFETY: `out` has room for `n` values; the bytes are `n` valid values (checked above),
    // copied whole into memory aligned for `T`.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().cast::<u8>(), bytes.len());
        out.set_len(n);
    }
    Ok(out)
}

/// An argument type a lane passes as it is.
///
/// # Safety
/// `from_raw(into_raw(x))` and `from_wasm` of what `to_wasm` staged give back `x`; the raw form
/// is the same type on both sides of a native lane.
pub unsafe trait LaneArg: Sized {
    /// Its form in a native lane's `extern "C"` signature.
    type Raw: Copy;
    /// Host side: the raw form.
    fn into_raw(self) -> Self::Raw;
    /// Guest side: the argument back from its raw form.
    ///
    /// # Safety
    /// `raw` came from `into_raw` on the host, whose borrow outlives the call.
    unsafe fn from_raw(raw: Self::Raw) -> Self;
    /// Host side: bytes this argument stages in a wasm guest's memory, rounded up to 8.
    #[inline]
    fn wasm_bytes(&self) -> usize {
        0
    }
    /// Host side: the argument as a wasm lane word, staging its bytes through `stage`.
    fn to_wasm(self, stage: &mut impl WasmStage) -> Option<u64>;
    /// Guest side: the argument back from its wasm word.
    ///
    /// # Safety
    /// `word` came from `to_wasm` on the host, and what it staged is still there.
    unsafe fn from_wasm(word: u64) -> Self;
}

/// A result type a lane returns as it is.
///
/// # Safety
/// `from_raw` of what `into_raw` returned, and `from_wasm` of what `into_wasm` returned, give
/// back the value; the raw form is the same type on both sides of a native lane.
pub unsafe trait LaneResult: Sized {
    /// Its form in a native lane's return value.
    type Raw: Copy;
    /// Whether it crosses as bytes in the guest's result buffer (text, vectors) rather than
    /// as a value.
    const BYTES: bool;
    /// Guest side: the raw form, writing any bytes into `buf`, the thread's result buffer.
    fn into_raw(self, buf: &mut Vec<u8>) -> Self::Raw;
    /// Host side: the value back from its raw form.
    ///
    /// # Safety
    /// `raw` came from `into_raw` in a native lane that just returned on this thread; for a
    /// bytes result, its buffer was not written since.
    unsafe fn from_raw(raw: Self::Raw) -> Result<Self, LaneError>;
    /// Guest side: the value as a wasm word, writing any bytes into `buf` (address and length
    /// packed as `address | length << 32`).
    fn into_wasm(self, buf: &mut Vec<u8>) -> u64;
    /// Host side: the value back from a wasm word, reading any bytes through `memory`. A
    /// hostile guest's word is refused, never trusted.
    fn from_wasm(word: u64, memory: &mut impl WasmMemory) -> Result<Self, LaneError>;
}

/// The word of a run of bytes in wasm memory: address and length.
#[inline]
pub fn pack(ptr: usize, len: usize) -> u64 {
    (ptr as u32 as u64) | ((len as u32 as u64) << 32)
}

#[inline]
fn unpack(word: u64) -> (u32, u32) {
    (word as u32, (word >> 32) as u32)
}

macro_rules! lane_scalar {
    ($($t:ty => $to:expr, $from:expr;)*) => {$(
        // SAFETY: passed by value; the word conversions are inverse.
        unsafe impl LaneArg for $t {
            type Raw = $t;
            #[inline(always)]
            fn into_raw(self) -> $t {
                self
            }
            #[inline(always)]
            unsafe fn from_raw(raw: $t) -> $t {
                raw
            }
            #[inline(always)]
            fn to_wasm(self, _: &mut impl WasmStage) -> Option<u64> {
                let to: fn($t) -> u64 = $to;
                Some(to(self))
            }
            #[inline(always)]
            unsafe fn from_wasm(word: u64) -> $t {
                let from: fn(u64) -> Option<$t> = $from;
                from(word).unwrap_or_default()
            }
        }

        // SAFETY: returned by value; `from_wasm` refuses any word `into_wasm` cannot make.
        unsafe impl LaneResult for $t {
            type Raw = $t;
            const BYTES: bool = false;
            #[inline(always)]
            fn into_raw(self, _: &mut Vec<u8>) -> $t {
                self
            }
            #[inline(always)]
            unsafe fn from_raw(raw: $t) -> Result<$t, LaneError> {
                Ok(raw)
            }
            #[inline(always)]
            fn into_wasm(self, _: &mut Vec<u8>) -> u64 {
                let to: fn($t) -> u64 = $to;
                to(self)
            }
            #[inline(always)]
            fn from_wasm(word: u64, _: &mut impl WasmMemory) -> Result<$t, LaneError> {
                let from: fn(u64) -> Option<$t> = $from;
                from(word).ok_or(LaneError::OutOfRange(stringify!($t)))
            }
        }
    )*};
}

lane_scalar! {
    u8 => |v| v as u64, |w| u8::try_from(w).ok();
    u16 => |v| v as u64, |w| u16::try_from(w).ok();
    u32 => |v| v as u64, |w| u32::try_from(w).ok();
    u64 => |v| v, Some;
    i8 => |v| v as i64 as u64, |w| i8::try_from(w as i64).ok();
    i16 => |v| v as i64 as u64, |w| i16::try_from(w as i64).ok();
    i32 => |v| v as i64 as u64, |w| i32::try_from(w as i64).ok();
    i64 => |v| v as u64, |w| Some(w as i64);
    f32 => |v| v.to_bits() as u64, |w| u32::try_from(w).ok().map(f32::from_bits);
    f64 => |v| v.to_bits(), |w| Some(f64::from_bits(w));
    bool => |v| v as u64, |w| match w { 0 => Some(false), 1 => Some(true), _ => None };
}

// SAFETY: passed as its scalar value (a `u32`, which C has); the conversions are inverse.
unsafe impl LaneArg for char {
    type Raw = u32;
    #[inline(always)]
    fn into_raw(self) -> u32 {
        self as u32
    }
    #[inline(always)]
    unsafe fn from_raw(raw: u32) -> char {
        char::from_u32(raw).unwrap_or(char::REPLACEMENT_CHARACTER)
    }
    #[inline(always)]
    fn to_wasm(self, _: &mut impl WasmStage) -> Option<u64> {
        Some(self as u64)
    }
    #[inline(always)]
    unsafe fn from_wasm(word: u64) -> char {
        char::from_u32(word as u32).unwrap_or(char::REPLACEMENT_CHARACTER)
    }
}

// SAFETY: as for the argument; `from_wasm` refuses a word that is no scalar value.
unsafe impl LaneResult for char {
    type Raw = u32;
    const BYTES: bool = false;
    #[inline(always)]
    fn into_raw(self, _: &mut Vec<u8>) -> u32 {
        self as u32
    }
    #[inline(always)]
    unsafe fn from_raw(raw: u32) -> Result<char, LaneError> {
        char::from_u32(raw).ok_or(LaneError::OutOfRange("char"))
    }
    #[inline(always)]
    fn into_wasm(self, _: &mut Vec<u8>) -> u64 {
        self as u64
    }
    #[inline(always)]
    fn from_wasm(word: u64, _: &mut impl WasmMemory) -> Result<char, LaneError> {
        u32::try_from(word)
            .ok()
            .and_then(char::from_u32)
            .ok_or(LaneError::OutOfRange("char"))
    }
}

// SAFETY: a method returning nothing; the raw form is a placeholder byte.
unsafe impl LaneResult for () {
    type Raw = u8;
    const BYTES: bool = false;
    #[inline(always)]
    fn into_raw(self, _: &mut Vec<u8>) -> u8 {
        0
    }
    #[inline(always)]
    unsafe fn from_raw(_: u8) -> Result<(), LaneError> {
        Ok(())
    }
    #[inline(always)]
    fn into_wasm(self, _: &mut Vec<u8>) -> u64 {
        0
    }
    #[inline(always)]
    fn from_wasm(_: u64, _: &mut impl WasmMemory) -> Result<(), LaneError> {
        Ok(())
    }
}

// SAFETY: passed as pointer and length of the host's string, which outlives the call; on wasm,
// staged into the guest's memory.
unsafe impl<'a> LaneArg for &'a str {
    type Raw = RawSlice;
    #[inline(always)]
    fn into_raw(self) -> RawSlice {
        RawSlice::from_slice(self.as_bytes())
    }
    #[inline(always)]
    unsafe fn from_raw(raw: RawSlice) -> &'a str {
        // SAFETY: the host passed a `&str` it holds for the call.
        unsafe { core::str::from_utf8_unchecked(raw.as_slice()) }
    }
    #[inline(always)]
    fn wasm_bytes(&self) -> usize {
        self.len().next_multiple_of(8)
    }
    #[inline(always)]
    fn to_wasm(self, stage: &mut impl WasmStage) -> Option<u64> {
        let at = stage.stage(self.as_bytes(), 1)?;
        Some(pack(at as usize, self.len()))
    }
    #[inline(always)]
    unsafe fn from_wasm(word: u64) -> &'a str {
        let (ptr, len) = unpack(word);
        // SAFETY: the host staged a `&str` there for the call.
        unsafe {
            core::str::from_utf8_unchecked(
                RawSlice {
                    ptr: ptr as usize as *const u8,
                    len: len as usize,
                }
                .as_slice(),
            )
        }
    }
}

// SAFETY: passed as pointer and length (in elements) of the host's slice; on wasm, staged into
// the guest's memory at the elements' alignment.
unsafe impl<'a, T: Plain> LaneArg for &'a [T] {
    type Raw = RawSlice;
    #[inline(always)]
    fn into_raw(self) -> RawSlice {
        RawSlice {
            ptr: self.as_ptr().cast(),
            len: self.len(),
        }
    }
    #[inline(always)]
    unsafe fn from_raw(raw: RawSlice) -> &'a [T] {
        if raw.len == 0 {
            return &[];
        }
        // SAFETY: the host passed a `&[T]` it holds for the call.
        unsafe { core::slice::from_raw_parts(raw.ptr.cast::<T>(), raw.len) }
    }
    #[inline(always)]
    fn wasm_bytes(&self) -> usize {
        size_of::<T>()
            .saturating_mul(self.len())
            .next_multiple_of(8)
    }
    #[inline(always)]
    fn to_wasm(self, stage: &mut impl WasmStage) -> Option<u64> {
        let at = stage.stage(bytes_of_slice(self), core::mem::align_of::<T>())?;
        Some(pack(at as usize, self.len()))
    }
    #[inline(always)]
    unsafe fn from_wasm(word: u64) -> &'a [T] {
        let (ptr, len) = unpack(word);
        if len == 0 {
            return &[];
        }
        // SAFETY: the host staged `len` values there, aligned, for the call.
        unsafe { core::slice::from_raw_parts(ptr as usize as *const T, len as usize) }
    }
}

// SAFETY: passed as a pointer to the host's value, which outlives the call; on wasm, staged
// into the guest's memory at its alignment.
unsafe impl<'a, T: Plain> LaneArg for &'a T {
    type Raw = *const T;
    #[inline(always)]
    fn into_raw(self) -> *const T {
        self
    }
    #[inline(always)]
    unsafe fn from_raw(raw: *const T) -> &'a T {
        // SAFETY: the host passed a `&T` it holds for the call.
        unsafe { &*raw }
    }
    #[inline(always)]
    fn wasm_bytes(&self) -> usize {
        size_of::<T>().next_multiple_of(8)
    }
    #[inline(always)]
    fn to_wasm(self, stage: &mut impl WasmStage) -> Option<u64> {
        let at = stage.stage(bytes_of(self), core::mem::align_of::<T>())?;
        Some(at as u64)
    }
    #[inline(always)]
    unsafe fn from_wasm(word: u64) -> &'a T {
        // SAFETY: the host staged a `T` there, aligned, for the call.
        unsafe { &*(word as u32 as usize as *const T) }
    }
}

/// The lane impls of a plain struct, by value: what `#[derive(Plain)]` adds.
#[doc(hidden)]
#[macro_export]
macro_rules! __lane_struct {
    ($t:ty) => {
        // SAFETY: a plain struct, passed by value natively and staged on wasm.
        unsafe impl $crate::lane::LaneArg for $t {
            type Raw = $t;
            #[inline(always)]
            fn into_raw(self) -> $t {
                self
            }
            #[inline(always)]
            unsafe fn from_raw(raw: $t) -> $t {
                raw
            }
            #[inline(always)]
            fn wasm_bytes(&self) -> usize {
                ::core::mem::size_of::<$t>().next_multiple_of(8)
            }
            #[inline(always)]
            fn to_wasm(
                self,
                stage: &mut impl $crate::lane::WasmStage,
            ) -> ::core::option::Option<u64> {
                let at =
                    stage.stage($crate::lane::bytes_of(&self), ::core::mem::align_of::<$t>())?;
                ::core::option::Option::Some(at as u64)
            }
            #[inline(always)]
            unsafe fn from_wasm(word: u64) -> $t {
                // SAFETY: the host staged a value of this type there for the call.
                unsafe { ::core::ptr::read_unaligned(word as u32 as usize as *const $t) }
            }
        }

        // SAFETY: returned by value natively; on wasm as bytes, which the host checks.
        unsafe impl $crate::lane::LaneResult for $t {
            type Raw = $t;
            const BYTES: bool = false;
            #[inline(always)]
            fn into_raw(self, _: &mut $crate::__private::Vec<u8>) -> $t {
                self
            }
            #[inline(always)]
            unsafe fn from_raw(raw: $t) -> ::core::result::Result<$t, $crate::lane::LaneError> {
                ::core::result::Result::Ok(raw)
            }
            #[inline]
            fn into_wasm(self, buf: &mut $crate::__private::Vec<u8>) -> u64 {
                buf.extend_from_slice($crate::lane::bytes_of(&self));
                $crate::lane::pack(buf.as_ptr() as usize, buf.len())
            }
            #[inline]
            fn from_wasm(
                word: u64,
                memory: &mut impl $crate::lane::WasmMemory,
            ) -> ::core::result::Result<$t, $crate::lane::LaneError> {
                let (ptr, len) = (word as u32, (word >> 32) as u32);
                let bytes = memory
                    .read(ptr, len)
                    .ok_or($crate::lane::LaneError::Outside)?;
                $crate::lane::read_plain(bytes)
            }
        }
    };
}

// SAFETY: written into the guest's result buffer; the host checks the text is UTF-8.
unsafe impl LaneResult for alloc::string::String {
    type Raw = RawSlice;
    const BYTES: bool = true;
    #[inline]
    fn into_raw(self, buf: &mut Vec<u8>) -> RawSlice {
        buf.extend_from_slice(self.as_bytes());
        RawSlice::from_slice(buf)
    }
    #[inline]
    unsafe fn from_raw(raw: RawSlice) -> Result<Self, LaneError> {
        // SAFETY: the guest's buffer is valid until its next call on this thread.
        let bytes = unsafe { raw.as_slice() };
        core::str::from_utf8(bytes)
            .map(alloc::borrow::ToOwned::to_owned)
            .map_err(|_| LaneError::Utf8)
    }
    #[inline]
    fn into_wasm(self, buf: &mut Vec<u8>) -> u64 {
        buf.extend_from_slice(self.as_bytes());
        pack(buf.as_ptr() as usize, buf.len())
    }
    #[inline]
    fn from_wasm(word: u64, memory: &mut impl WasmMemory) -> Result<Self, LaneError> {
        let (ptr, len) = unpack(word);
        let bytes = memory.read(ptr, len).ok_or(LaneError::Outside)?;
        core::str::from_utf8(bytes)
            .map(alloc::borrow::ToOwned::to_owned)
            .map_err(|_| LaneError::Utf8)
    }
}

// SAFETY: written into the guest's result buffer as the values' bytes; the host checks the
// length and every value.
unsafe impl<T: Plain> LaneResult for Vec<T> {
    type Raw = RawSlice;
    const BYTES: bool = true;
    #[inline]
    fn into_raw(self, buf: &mut Vec<u8>) -> RawSlice {
        buf.extend_from_slice(bytes_of_slice(&self));
        RawSlice::from_slice(buf)
    }
    #[inline]
    unsafe fn from_raw(raw: RawSlice) -> Result<Self, LaneError> {
        // SAFETY: the guest's buffer is valid until its next call on this thread.
        read_plain_vec(unsafe { raw.as_slice() })
    }
    #[inline]
    fn into_wasm(self, buf: &mut Vec<u8>) -> u64 {
        buf.extend_from_slice(bytes_of_slice(&self));
        pack(buf.as_ptr() as usize, buf.len())
    }
    #[inline]
    fn from_wasm(word: u64, memory: &mut impl WasmMemory) -> Result<Self, LaneError> {
        let (ptr, len) = unpack(word);
        read_plain_vec(memory.read(ptr, len).ok_or(LaneError::Outside)?)
    }
}

/// Host side: a lane's arguments, as a tuple.
pub trait LaneArgs: Sized {
    /// Calls the native lane `entry` of `instance` with these arguments.
    ///
    /// # Safety
    /// `entry` is the native lane of a method whose arguments are `Self` and whose result is
    /// `R`, listed under that method's hash by a plugin built with this crate; `instance` is
    /// its live instance; `out` is writable.
    unsafe fn call_native<R: LaneResult>(
        self,
        entry: *const (),
        instance: *mut c_void,
        out: *mut RawSlice,
    ) -> LaneRet<R::Raw>;
    /// Starts the async lane `entry` of `instance` with these arguments: the plugin polls the
    /// method's future once; the status is `Ok` with the result, [`LANE_PENDING`] with the
    /// call's handle written to `handle`, or a failure with its message in `out`.
    ///
    /// [`LANE_PENDING`]: crate::future::LANE_PENDING
    ///
    /// # Safety
    /// As for [`call_native`](LaneArgs::call_native), for an async method's lane; `handle` is
    /// writable, and the call runs inside the host's polling scope for the new call.
    unsafe fn call_native_async<R: LaneResult>(
        self,
        entry: *const (),
        instance: *mut c_void,
        handle: *mut u64,
        out: *mut RawSlice,
    ) -> LaneRet<R::Raw>;
    /// Bytes the arguments stage in a wasm guest's memory.
    fn wasm_bytes(&self) -> usize;
    /// The arguments as wasm lane words, staging their bytes through `stage`.
    fn to_wasm(self, stage: &mut impl WasmStage) -> Option<[u64; WASM_ARGS]>;
}

macro_rules! lane_args {
    ($(($($a:ident $i:tt),*))*) => {$(
        impl<$($a: LaneArg),*> LaneArgs for ($($a,)*) {
            #[inline(always)]
            #[allow(clippy::unused_unit)]
            unsafe fn call_native<R: LaneResult>(
                self,
                entry: *const (),
                instance: *mut c_void,
                out: *mut RawSlice,
            ) -> LaneRet<R::Raw> {
                type Entry<R, $($a),*> = unsafe extern "C" fn(*mut c_void, $($a,)* *mut RawSlice) -> LaneRet<R>;
                // SAFETY: by this function's contract, `entry` has exactly this type.
                let f: Entry<R::Raw, $($a::Raw),*> = unsafe { core::mem::transmute::<*const (), _>(entry) };
                // SAFETY: as above; the instance is live and `out` writable.
                unsafe { f(instance, $(self.$i.into_raw(),)* out) }
            }
            #[inline(always)]
            #[allow(clippy::unused_unit)]
            unsafe fn call_native_async<R: LaneResult>(
                self,
                entry: *const (),
                instance: *mut c_void,
                handle: *mut u64,
                out: *mut RawSlice,
            ) -> LaneRet<R::Raw> {
                type Entry<R, $($a),*> = unsafe extern "C" fn(*mut c_void, $($a,)* *mut u64, *mut RawSlice) -> LaneRet<R>;
                // SAFETY: by this function's contract, `entry` has exactly this type.
                let f: Entry<R::Raw, $($a::Raw),*> = unsafe { core::mem::transmute::<*const (), _>(entry) };
                // SAFETY: as above; the instance is live, `handle` and `out` writable.
                unsafe { f(instance, $(self.$i.into_raw(),)* handle, out) }
            }
            #[inline(always)]
            fn wasm_bytes(&self) -> usize {
                0 $(+ self.$i.wasm_bytes())*
            }
            #[inline(always)]
            #[allow(unused_variables, unused_mut)]
            fn to_wasm(self, stage: &mut impl WasmStage) -> Option<[u64; WASM_ARGS]> {
                let mut words = [0u64; WASM_ARGS];
                $(words[$i] = self.$i.to_wasm(stage)?;)*
                Some(words)
            }
        }
    )*};
}

lane_args! {
    ()
    (A0 0)
    (A0 0, A1 1)
    (A0 0, A1 1, A2 2)
    (A0 0, A1 1, A2 2, A3 3)
    (A0 0, A1 1, A2 2, A3 3, A4 4)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5)
}

/// Guest side: what the guest SDK does around a native lane's body.
///
/// # Safety
/// `native` never lets a panic unwind out of it, and publishes a message through `out` for any
/// status but `Ok`.
pub unsafe trait Glue {
    /// Runs `body`, catching a panic (status `Panic`, the message through `out`), and returns
    /// its result's raw form, written into the thread's result buffer if it is bytes.
    fn native<R: LaneResult>(out: *mut RawSlice, body: impl FnOnce() -> R) -> LaneRet<R::Raw>;

    /// Runs an async lane's body: makes the method's future with `make` from the plugin
    /// object of `instance`, and polls it once inside the host's call. Ready: its result's
    /// raw form, as [`native`](Glue::native) returns one. Pending: the instance keeps the
    /// future (polled and dropped later through `ASYNC_INTERFACE`, its result encoded), its
    /// handle is written to `handle`, and the status is
    /// [`LANE_PENDING`](crate::future::LANE_PENDING). A panic fails the call (status `Panic`,
    /// the message through `out`) and drops the future.
    ///
    /// # Safety
    /// `instance` is a live instance the guest's `load` made for plugin type `I`; `handle` and
    /// `out` are writable.
    unsafe fn native_async<'a, I, F, R>(
        instance: *mut c_void,
        handle: *mut u64,
        out: *mut RawSlice,
        make: impl FnOnce(&'a I) -> F,
    ) -> LaneRet<R::Raw>
    where
        I: 'a,
        F: core::future::Future<Output = R> + Send + 'a,
        R: LaneResult + serde::Serialize;

    /// A wasm lane's result as its word: a value as it is, bytes written into the thread's
    /// result buffer (which a value never touches).
    fn wasm_result<R: LaneResult>(result: R) -> u64;
}

/// The lanes of an interface for an implementation `I`, with the guest glue `G`: implemented
/// by `#[interface]` for `dyn Trait`.
///
/// # Safety
/// Every entry of `NATIVE` is the lane of the method its hash names, with the signature that
/// method's types give through [`LaneArgs::call_native`].
pub unsafe trait Lanes<I, G: Glue> {
    /// The native lanes, one per method that has one.
    const NATIVE: &'static [LaneEntry];
    /// Runs method `method` through its wasm lane (its result through
    /// [`Glue::wasm_result`]); `None` if it has no lane.
    ///
    /// # Safety
    /// `args` came from the host's [`LaneArgs::to_wasm`] for this method, and what they
    /// staged is still in place.
    unsafe fn wasm(imp: &I, method: u32, args: &[u64; WASM_ARGS]) -> Option<u64>;
}

/// The exports a plugin type makes through ABI v1 with the lane extension: what
/// `export_plugin!` puts in the header's extension.
pub const fn extension(lanes: &'static [LaneEntry]) -> HeaderExt {
    HeaderExt {
        size: size_of::<HeaderExt>(),
        lanes: lanes.as_ptr(),
        lane_count: lanes.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;
    use alloc::vec;

    #[test]
    fn method_hash_is_fnv_of_the_version_the_interface_and_the_method() {
        let mut text = LANE_VERSION.as_bytes().to_vec();
        text.extend_from_slice(&0x1234_u64.to_le_bytes());
        text.extend_from_slice(&7_u64.to_le_bytes());
        assert_eq!(method_hash(0x1234, 7), fnv1a64(&text));
        assert_ne!(method_hash(0x1234, 7), method_hash(0x1234, 8));
        assert_ne!(method_hash(0x1234, 7), method_hash(0x1235, 7));
    }

    #[test]
    fn plain_values_are_checked_before_they_are_read() {
        assert_eq!(read_plain::<bool>(&[1]), Ok(true));
        assert!(matches!(
            read_plain::<bool>(&[2]),
            Err(LaneError::OutOfRange(_))
        ));
        assert_eq!(read_plain::<char>(&0x41_u32.to_ne_bytes()), Ok('A'));
        assert!(matches!(
            read_plain::<char>(&0xD800_u32.to_ne_bytes()),
            Err(LaneError::OutOfRange(_))
        ));
        assert_eq!(read_plain::<u32>(&[1, 0, 0]), Err(LaneError::Length));
        assert!(matches!(
            read_plain::<[bool; 2]>(&[1, 3]),
            Err(LaneError::OutOfRange(_))
        ));
    }

    #[test]
    fn plain_vectors_are_read_from_unaligned_bytes() {
        let mut bytes = vec![0xEE];
        for v in [1u32, 2, 0xFFFF_FFFF] {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(
            read_plain_vec::<u32>(&bytes[1..]),
            Ok(vec![1, 2, 0xFFFF_FFFF])
        );
        assert_eq!(read_plain_vec::<u32>(&bytes[1..12]), Err(LaneError::Length));
        assert_eq!(read_plain_vec::<u32>(&[]), Ok(vec![]));
        assert!(matches!(
            read_plain_vec::<bool>(&[0, 1, 5]),
            Err(LaneError::OutOfRange(_))
        ));
    }

    struct Memory(Vec<u8>);

    impl WasmMemory for Memory {
        fn read(&mut self, ptr: u32, len: u32) -> Option<&[u8]> {
            let start = ptr as usize;
            self.0.get(start..start.checked_add(len as usize)?)
        }
    }

    #[test]
    fn wasm_words_that_no_value_of_the_type_makes_are_refused() {
        let mut m = Memory(b"ok\xff".to_vec());
        assert_eq!(<u8 as LaneResult>::from_wasm(255, &mut m), Ok(255));
        assert!(<u8 as LaneResult>::from_wasm(256, &mut m).is_err());
        assert_eq!(<i32 as LaneResult>::from_wasm(-5i64 as u64, &mut m), Ok(-5));
        assert!(<i32 as LaneResult>::from_wasm(1 << 40, &mut m).is_err());
        assert!(<f32 as LaneResult>::from_wasm(1 << 33, &mut m).is_err());
        assert!(<bool as LaneResult>::from_wasm(2, &mut m).is_err());
        assert!(<char as LaneResult>::from_wasm(0xDFFF, &mut m).is_err());
        assert_eq!(
            <alloc::string::String as LaneResult>::from_wasm(pack(0, 2), &mut m).as_deref(),
            Ok("ok")
        );
        assert_eq!(
            <alloc::string::String as LaneResult>::from_wasm(pack(1, 2), &mut m),
            Err(LaneError::Utf8)
        );
        assert_eq!(
            <alloc::string::String as LaneResult>::from_wasm(pack(2, 5), &mut m),
            Err(LaneError::Outside)
        );
        assert_eq!(
            <Vec<u8> as LaneResult>::from_wasm(pack(0, 3), &mut m),
            Ok(b"ok\xff".to_vec())
        );
    }

    #[test]
    fn tables_concatenate_their_parts() {
        let f = |h| LaneEntry {
            hash: h,
            entry: core::ptr::null(),
        };
        let (a, b) = ([f(1), f(2)], [f(3)]);
        let table: [LaneEntry; 3] = lane_table(&[&a, &[], &b]);
        assert_eq!(table.map(|e| e.hash), [1, 2, 3]);
        assert_eq!(lane_hashes::<4>(&table), [3, 1, 2, 3]);
    }

    /// A lane as the macro makes it, called through `LaneArgs::call_native` as the host does.
    unsafe extern "C" fn score(
        instance: *mut c_void,
        id: u64,
        tag: RawSlice,
        _out: *mut RawSlice,
    ) -> LaneRet<u64> {
        // SAFETY: the test passes a `u64` and a live string.
        let (base, tag) = unsafe { (*(instance as *const u64), <&str as LaneArg>::from_raw(tag)) };
        LaneRet {
            status: Status::Ok as u32,
            value: MaybeUninit::new(base + id + tag.len() as u64),
        }
    }

    #[test]
    fn a_native_lane_is_called_with_the_arguments_as_they_are() {
        let base = 100u64;
        let mut out = RawSlice::EMPTY;
        let text = alloc::string::String::from("abc");
        // SAFETY: `score` has the signature `(u64, &str) -> u64` gives.
        let ret = unsafe {
            (7u64, text.as_str()).call_native::<u64>(
                score as *const (),
                &base as *const u64 as *mut c_void,
                &mut out,
            )
        };
        assert_eq!(ret.status, Status::Ok as u32);
        // SAFETY: `Ok` means the value is written.
        assert_eq!(unsafe { ret.value.assume_init() }, 110);
    }
}
