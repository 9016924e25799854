//! The traits that `#[interface]` implements for a trait object type `dyn YourTrait`.
//!
//! Host and plugin depend on the same interface crate, so both sides see the same
//! [`Interface::HASH`]. The host side calls through a [`Transport`]; the guest side answers
//! through [`Dispatch`].

use alloc::vec::Vec;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::lane::{LaneArgs, LaneResult};
use crate::wire;

/// Describes one interface. Implemented by `#[interface]` for `dyn Trait`.
pub trait Interface {
    /// The trait's name, as plugins export it.
    const NAME: &'static str;
    /// The canonical text of the methods, argument types and return types, in order.
    const SIGNATURE: &'static str;
    /// [`crate::hash::interface_hash`] of [`Self::NAME`] and [`Self::SIGNATURE`].
    const HASH: u64;
    /// Method names, numbered by position.
    const METHODS: &'static [&'static str];
    /// The generated typed client: one method per trait method, each returning
    /// `Result<Ret, T::Error>`.
    type Client<T: Transport>;
    /// Wraps a transport in the typed client.
    fn client<T: Transport>(transport: T) -> Self::Client<T>;
}

/// Guest-side dispatch of encoded calls to an implementation `T` of the interface.
pub trait Dispatch<T: ?Sized>: Interface {
    /// Decodes the arguments of `method` from `input`, calls it on `imp` and appends the
    /// encoded result to `out`.
    fn dispatch(imp: &T, method: u32, input: &[u8], out: &mut Vec<u8>)
        -> Result<(), DispatchError>;

    /// Decodes the arguments of async method `method` from `input` and starts it on `imp`:
    /// its future, not yet polled. `None` if `method` is not async (or does not exist).
    fn start<'a>(
        imp: &'a T,
        method: u32,
        input: &[u8],
    ) -> Option<Result<crate::future::BoxedCall<'a>, DispatchError>> {
        let _ = (imp, method, input);
        None
    }
}

/// How a typed client reaches an implementation. The host runtime provides one that calls the
/// current generation.
pub trait Transport {
    /// What a failed call returns.
    type Error;
    /// Calls method number `method` with the argument tuple `args`, and decodes its result.
    fn call<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: u32,
        args: &A,
    ) -> Result<R, Self::Error>;

    /// Calls method number `method` through its direct lane, with the arguments as they are.
    /// `#[interface]` calls this, rather than [`Transport::call`], for a method whose types are
    /// all plain data. The default encodes them and calls `call`: a transport that knows no
    /// lanes still works.
    #[inline]
    fn call_lane<A, R>(&self, method: u32, args: A) -> Result<R, Self::Error>
    where
        A: LaneArgs + Serialize,
        R: LaneResult + DeserializeOwned,
    {
        self.call(method, &args)
    }

    /// Calls async method number `method` with the argument tuple `args`, and decodes its
    /// result when it completes. `#[interface]` calls this for an `async fn`. The default
    /// makes a synchronous [`call`](Transport::call) when first polled: a transport that
    /// cannot await still reaches an async method that completes without awaiting (one that
    /// awaits fails with [`Status::WouldAwait`](crate::Status::WouldAwait)).
    fn call_async<A, R>(
        &self,
        method: u32,
        args: A,
    ) -> impl core::future::Future<Output = Result<R, Self::Error>> + Send
    where
        A: Serialize + Send,
        R: DeserializeOwned + Send,
        Self: Sync,
    {
        async move { self.call(method, &args) }
    }

    /// [`call_async`](Transport::call_async) for an async method whose arguments and result
    /// are plain data: a transport that knows lanes starts it through its async lane (ABI.md
    /// §11, "The async lane"), with no encoding step when it completes in its first poll. The
    /// default calls `call_async`.
    fn call_async_lane<A, R>(
        &self,
        method: u32,
        args: A,
    ) -> impl core::future::Future<Output = Result<R, Self::Error>> + Send
    where
        A: LaneArgs + Serialize + Send,
        R: LaneResult + DeserializeOwned + Send,
        Self: Sync,
    {
        self.call_async(method, args)
    }
}

/// Why a dispatch failed before or after the implementation ran.
#[derive(Debug)]
pub enum DispatchError {
    /// The input did not decode as the method's argument tuple.
    BadInput(wire::Error),
    /// No method has this number.
    UnknownMethod(u32),
    /// No exported interface has this number.
    UnknownInterface(u32),
    /// The result did not encode.
    Encode(wire::Error),
    /// An async method called synchronously awaited.
    WouldAwait,
}

impl core::fmt::Display for DispatchError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DispatchError::BadInput(e) => write!(f, "arguments did not decode: {e}"),
            DispatchError::UnknownMethod(m) => write!(f, "no method number {m}"),
            DispatchError::UnknownInterface(i) => write!(f, "no exported interface number {i}"),
            DispatchError::Encode(e) => write!(f, "result did not encode: {e}"),
            DispatchError::WouldAwait => f.write_str(
                "an async method awaited, but it was called synchronously (through a \
                 transport that cannot await); call it from async code",
            ),
        }
    }
}

impl DispatchError {
    /// The status code that reports this error across the boundary.
    pub fn status(&self) -> crate::Status {
        match self {
            DispatchError::BadInput(_) => crate::Status::BadInput,
            DispatchError::UnknownMethod(_) => crate::Status::UnknownMethod,
            DispatchError::UnknownInterface(_) => crate::Status::UnknownInterface,
            DispatchError::Encode(_) => crate::Status::EncodeFailed,
            DispatchError::WouldAwait => crate::Status::WouldAwait,
        }
    }
}
