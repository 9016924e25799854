//! Async calls across the boundary (ABI.md §11): the plugin's future lives in the plugin, and
//! the host drives it through `call` on [`ASYNC_INTERFACE`](crate::ASYNC_INTERFACE):
//!
//! | method | input | reply |
//! |---|---|---|
//! | [`START`] | interface (u32 LE), method (u32 LE), the encoded argument tuple | [`READY`] and the encoded result, or [`PENDING`] and the call's handle (u64 LE) |
//! | [`POLL`] | the handle (u64 LE) | [`READY`] and the encoded result, or [`PENDING`] |
//! | [`DROP`] | the handle (u64 LE) | nothing: the plugin dropped the future |
//!
//! No waker crosses the boundary. While the host polls a plugin's future it is inside that
//! call, on its own thread, with its own task's waker; the host futures the plugin awaits
//! (its async services, [`crate::service::ASYNC_HOST`]) are polled by the host during that
//! same call, with that waker, so they wake the task that polls the call. A plugin's future
//! never needs a runtime, and never holds a waker past its call.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use crate::DispatchError;

/// Starts an async method: polls it once, and keeps it if it is pending.
pub const START: u32 = 0;
/// Polls a pending call again.
pub const POLL: u32 = 1;
/// Drops a pending call's future (the caller dropped its own).
pub const DROP: u32 = 2;

/// A reply's first byte: the call is pending (after [`START`], the handle follows).
pub const PENDING: u8 = 0;
/// A reply's first byte: the call completed; its encoded result follows.
pub const READY: u8 = 1;

/// The status an async lane returns when the method's future is pending: the plugin kept it,
/// and wrote its handle through the lane's `handle` pointer. The host polls and drops it with
/// [`POLL`] and [`DROP`], as a call [`START`] began. (Not a [`Status`](crate::Status): no
/// encoded call replies with it.)
pub const LANE_PENDING: u32 = 0x100;

/// A plugin's running async method: its future, which yields the encoded result.
pub type BoxedCall<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, DispatchError>> + Send + 'a>>;

/// Polls `call` once with a waker that does nothing: what a synchronous caller of an async
/// method gets. `Err(`[`DispatchError::WouldAwait`]`)` if it did not complete at once.
pub fn now(mut call: BoxedCall<'_>) -> Result<Vec<u8>, DispatchError> {
    let mut cx = Context::from_waker(core::task::Waker::noop());
    match call.as_mut().poll(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(DispatchError::WouldAwait),
    }
}

/// The interface and method numbers [`START`]'s input begins with, and the arguments after
/// them.
pub fn split_start(input: &[u8]) -> Option<(u32, u32, &[u8])> {
    let interface = u32::from_le_bytes(input.get(0..4)?.try_into().ok()?);
    let method = u32::from_le_bytes(input.get(4..8)?.try_into().ok()?);
    Some((interface, method, &input[8..]))
}

/// A handle read from a [`POLL`] or [`DROP`] input, or from a pending [`START`] reply's tail.
pub fn handle(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?))
}
