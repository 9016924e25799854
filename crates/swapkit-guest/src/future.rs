//! Async methods in the guest: the calls the host drives (ABI.md §11), and the futures of the
//! host's async services that a method awaits.
//!
//! A method's future is kept here between the host's polls, under a handle. It is polled only
//! inside the host's call, on the host's thread; the host futures it awaits are polled by the
//! host during that same call, with the waker of the task that polls it. So a plugin needs no
//! runtime, and wakes its caller through the host. The waker a method sees wakes that task
//! through the host too ([`service::ASYNC_WAKE`]); only a waker it clones costs an allocation.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use serde::de::DeserializeOwned;
use serde::Serialize;
use swapkit_abi::future::{self as abi_future, BoxedCall, PENDING, READY};
use swapkit_abi::service::{self, Invoke};
use swapkit_abi::{wire, Status};

use crate::{Error, Host};

/// The async calls of one instance that are pending, by handle.
#[derive(Default)]
pub(crate) struct Calls {
    pending: Mutex<HashMap<u64, BoxedCall<'static>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Calls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, BoxedCall<'static>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops every pending call: before the plugin they borrow goes.
    pub(crate) fn clear(&self) {
        let calls = std::mem::take(&mut *self.lock());
        for (_, call) in calls {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(call)));
        }
    }

    /// START, POLL or DROP, writing the reply to `buf`.
    ///
    /// `start` makes the future of a method from `START`'s input.
    pub(crate) fn drive<'a>(
        &self,
        host: &Host,
        method: u32,
        input: &[u8],
        buf: &mut Vec<u8>,
        start: impl FnOnce(u32, u32, &[u8]) -> Option<Result<BoxedCall<'a>, swapkit_abi::DispatchError>>,
    ) -> Result<(), (Status, String)> {
        let bad = |what: &str| (Status::BadInput, format!("{what} of an async call"));
        match method {
            abi_future::START => {
                let (interface, m, args) =
                    abi_future::split_start(input).ok_or_else(|| bad("a malformed start"))?;
                let call = start(interface, m, args)
                    .ok_or_else(|| {
                        (
                            Status::UnknownMethod,
                            format!("method {m} of interface {interface} is not async"),
                        )
                    })?
                    .map_err(|e| (e.status(), e.to_string()))?;
                // SAFETY: the future borrows the plugin, which lives until `free`; `free`
                // drops every pending call first, and the host drops each call before it
                // frees the instance (ABI.md §11).
                let call: BoxedCall<'static> = unsafe { std::mem::transmute(call) };
                let handle = self.next_handle();
                self.poll(host, handle, call, buf)?;
                if buf.first() == Some(&PENDING) {
                    buf.extend_from_slice(&handle.to_le_bytes());
                }
                Ok(())
            }
            abi_future::POLL => {
                let handle = abi_future::handle(input).ok_or_else(|| bad("a malformed poll"))?;
                let call = self.lock().remove(&handle).ok_or_else(|| {
                    (
                        Status::BadInput,
                        format!("no pending async call {handle}: it completed or was dropped"),
                    )
                })?;
                self.poll(host, handle, call, buf)
            }
            abi_future::DROP => {
                let handle = abi_future::handle(input).ok_or_else(|| bad("a malformed drop"))?;
                let call = self.lock().remove(&handle);
                // Dropped here, in the plugin, while the host still holds its generation.
                catch_unwind(AssertUnwindSafe(move || drop(call))).map_err(|p| {
                    (
                        Status::Panic,
                        format!(
                            "dropping an async call panicked: {}",
                            crate::glue::panic_message(&*p)
                        ),
                    )
                })
            }
            other => Err((
                Status::UnknownMethod,
                format!("no async method number {other}"),
            )),
        }
    }

    /// An async lane's first poll: boxes `future` (pinned from here on), polls it once with
    /// the task's waker through the host, and keeps it if it is pending, under a handle taken
    /// only then (or when the future cloned its waker). A panic drops the future (its own
    /// drop's panic caught too) and comes back as its message.
    pub(crate) fn start_lane<'a, F, R>(&self, host: &Host, future: F) -> Result<Started<R>, String>
    where
        F: Future<Output = R> + Send + 'a,
        R: Serialize,
    {
        let mut call = Box::pin(Encoding { future });
        let wake = FirstWake {
            host: *host,
            calls: self,
            handle: std::cell::Cell::new(0),
        };
        // SAFETY: `wake` outlives the waker, which is used only in this block (its drop does
        // nothing, so it is not called).
        let waker = std::mem::ManuallyDrop::new(unsafe {
            Waker::from_raw(RawWaker::new((&wake as *const FirstWake).cast(), &FIRST))
        });
        let polled = catch_unwind(AssertUnwindSafe(|| {
            call.as_mut().typed().poll(&mut Context::from_waker(&waker))
        }));
        match polled {
            Ok(Poll::Ready(value)) => Ok(Started::Ready(value)),
            Ok(Poll::Pending) => {
                let handle = wake.handle();
                let call: BoxedCall<'a> = call;
                // SAFETY: as in `drive`: the future borrows the plugin, which lives until
                // `free`; `free` drops every pending call first, and the host drops each call
                // before it frees the instance (ABI.md §11).
                let call: BoxedCall<'static> = unsafe { std::mem::transmute(call) };
                self.lock().insert(handle, call);
                Ok(Started::Pending(handle))
            }
            Err(payload) => {
                let message = crate::glue::panic_message(&*payload);
                let _ = catch_unwind(AssertUnwindSafe(move || drop(call)));
                Err(message)
            }
        }
    }

    /// A new handle: never 0 (the mark of a first poll's handle not yet taken).
    fn next_handle(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    /// Polls `call` once; keeps it under `handle` if it is pending. A panic drops it (its
    /// own drop's panic caught too) and fails this call alone.
    fn poll(
        &self,
        host: &Host,
        handle: u64,
        mut call: BoxedCall<'static>,
        buf: &mut Vec<u8>,
    ) -> Result<(), (Status, String)> {
        let wake = WakeData {
            host: *host,
            handle,
        };
        let waker = wake.borrowed();
        let polled = catch_unwind(AssertUnwindSafe(|| {
            call.as_mut().poll(&mut Context::from_waker(&waker))
        }));
        match polled {
            Ok(Poll::Ready(result)) => {
                let bytes = result.map_err(|e| (e.status(), e.to_string()))?;
                buf.push(READY);
                buf.extend_from_slice(&bytes);
                Ok(())
            }
            Ok(Poll::Pending) => {
                self.lock().insert(handle, call);
                buf.push(PENDING);
                Ok(())
            }
            Err(payload) => {
                let message = crate::glue::panic_message(&*payload);
                let _ = catch_unwind(AssertUnwindSafe(move || drop(call)));
                Err((Status::Panic, message))
            }
        }
    }
}

/// What an async lane's first poll made of its method's future.
pub(crate) enum Started<R> {
    /// It completed, with this result.
    Ready(R),
    /// It is pending, kept under this handle.
    Pending(u64),
}

/// A method's future, with the encoding of its result: polled for its typed result by its
/// async lane's first poll, and as a [`BoxedCall`] (the encoded result) after it.
struct Encoding<F> {
    future: F,
}

impl<F> Encoding<F> {
    fn typed(self: Pin<&mut Self>) -> Pin<&mut F> {
        // SAFETY: `future` is structurally pinned: it is never moved out of an `Encoding`,
        // which has no `Drop` of its own and is not `Unpin` unless `F` is.
        unsafe { self.map_unchecked_mut(|e| &mut e.future) }
    }
}

impl<F: Future<Output = R>, R: Serialize> Future for Encoding<F> {
    type Output = Result<Vec<u8>, swapkit_abi::DispatchError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.typed().poll(cx).map(|result| {
            let mut out = Vec::new();
            wire::encode_into(&result, &mut out).map_err(swapkit_abi::DispatchError::Encode)?;
            Ok(out)
        })
    }
}

/// The waker of an async lane's first poll: the call has no handle until it turns pending
/// or its waker is cloned (a wake within the poll wakes the polling task whatever the
/// handle: the host is inside that very call).
struct FirstWake<'a> {
    host: Host,
    calls: &'a Calls,
    handle: std::cell::Cell<u64>,
}

impl FirstWake<'_> {
    fn handle(&self) -> u64 {
        if self.handle.get() == 0 {
            self.handle.set(self.calls.next_handle());
        }
        self.handle.get()
    }
}

static FIRST: RawWakerVTable = RawWakerVTable::new(
    |data| {
        // SAFETY: `data` is the live `FirstWake` of the first poll's waker.
        let first = unsafe { &*data.cast::<FirstWake>() };
        let d = WakeData {
            host: first.host,
            handle: first.handle(),
        };
        d.register();
        RawWaker::new(Arc::into_raw(Arc::new(d)).cast(), &OWNED)
    },
    // SAFETY: as above.
    |data| unsafe { wake_first(data) },
    // SAFETY: as above.
    |data| unsafe { wake_first(data) },
    |_| {},
);

/// # Safety
/// `data` is the live `FirstWake` of a first poll's waker.
unsafe fn wake_first(data: *const ()) {
    // SAFETY: by the contract.
    let first = unsafe { &*data.cast::<FirstWake>() };
    WakeData {
        host: first.host,
        handle: first.handle.get(),
    }
    .wake();
}

/// What a method's waker wakes: the host's task polling call `handle`.
#[derive(Clone, Copy)]
struct WakeData {
    host: Host,
    handle: u64,
}

impl WakeData {
    fn wake(&self) {
        let _ = self
            .host
            .service_bytes(service::ASYNC_WAKE, &self.handle.to_le_bytes());
    }

    /// Has the host record the polling task's waker under this handle now: the waker was
    /// cloned within the poll, and its clone may wake from another thread before it returns.
    fn register(&self) {
        let _ = self
            .host
            .service_bytes(service::ASYNC_REGISTER, &self.handle.to_le_bytes());
    }

    /// A waker borrowing `self`, valid while `self` is: cloning it makes an owned one.
    fn borrowed(&self) -> Waker {
        // SAFETY: the vtable's functions treat the pointer as a `&WakeData` that outlives
        // every use of the borrowed waker (it lives on the poll's stack frame, and the waker
        // is dropped before it), and `clone` makes an owned waker that does not borrow it.
        unsafe { Waker::from_raw(RawWaker::new((self as *const WakeData).cast(), &BORROWED)) }
    }
}

static BORROWED: RawWakerVTable = RawWakerVTable::new(
    |data| {
        // SAFETY: `data` is the live `WakeData` of a borrowed waker.
        let d = unsafe { *data.cast::<WakeData>() };
        d.register();
        RawWaker::new(Arc::into_raw(Arc::new(d)).cast(), &OWNED)
    },
    // SAFETY: `data` is the live `WakeData` of a borrowed waker.
    |data| unsafe { (*data.cast::<WakeData>()).wake() },
    // SAFETY: as above.
    |data| unsafe { (*data.cast::<WakeData>()).wake() },
    |_| {},
);

static OWNED: RawWakerVTable = RawWakerVTable::new(
    |data| {
        // SAFETY: `data` came from `Arc::into_raw` and this waker holds one count.
        unsafe { Arc::increment_strong_count(data.cast::<WakeData>()) };
        RawWaker::new(data, &OWNED)
    },
    // SAFETY: consumes this waker's count.
    |data| unsafe { Arc::from_raw(data.cast::<WakeData>()).wake() },
    // SAFETY: `data` came from `Arc::into_raw`; the count stays.
    |data| unsafe { (*data.cast::<WakeData>()).wake() },
    // SAFETY: releases this waker's count.
    |data| unsafe { drop(Arc::from_raw(data.cast::<WakeData>())) },
);

/// A host async service, or an async method of a dependency, being awaited:
/// [`Host::call_async`]'s future, and a dependency client's.
#[must_use = "a future does nothing unless awaited"]
pub struct HostCall<R> {
    host: Host,
    /// What it calls, for messages.
    name: String,
    /// The service that starts it.
    op: u32,
    state: State,
    _result: PhantomData<fn() -> R>,
}

enum State {
    /// Not started: the encoded request.
    New(Result<Vec<u8>, Error>),
    /// Pending under this ticket.
    Waiting(u64),
    Done,
}

impl Host {
    /// Awaits the async service the host offers as `name` (`Vault::provide_async`) with the
    /// argument tuple `args`. It runs on the host's runtime, and its waiting wakes the task
    /// that polls this plugin's call: await it from an async method the host called.
    ///
    /// ```no_run
    /// # async fn f(host: swapkit_guest::Host) -> Result<(), swapkit_guest::Error> {
    /// let order: Option<String> = host.call_async("orders.get", &(42u64,)).await?;
    /// # let _ = order; Ok(()) }
    /// ```
    pub fn call_async<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        name: &str,
        args: &A,
    ) -> HostCall<R> {
        let request = wire::to_vec(args)
            .map_err(|e| {
                Error::msg(format!(
                    "arguments of host service `{name}` did not encode: {e}"
                ))
            })
            .and_then(|args| {
                let invoke = Invoke {
                    name: name.to_owned(),
                    args,
                };
                wire::to_vec(&invoke)
                    .map_err(|e| Error::msg(format!("a service request did not encode: {e}")))
            });
        HostCall::new(
            *self,
            format!("host service `{name}`"),
            service::ASYNC_HOST,
            request,
        )
    }
}

impl<R> HostCall<R> {
    /// A call started by service `op` with the encoded `request`.
    pub(crate) fn new(host: Host, name: String, op: u32, request: Result<Vec<u8>, Error>) -> Self {
        HostCall {
            host,
            name,
            op,
            state: State::New(request),
            _result: PhantomData,
        }
    }
}

impl<R: DeserializeOwned> HostCall<R> {
    fn decode(&self, bytes: &[u8]) -> Poll<Result<R, Error>> {
        let name = &self.name;
        Poll::Ready(match bytes.split_first() {
            Some((&READY, result)) => wire::from_bytes(result)
                .map_err(|e| Error::msg(format!("the result of {name} did not decode: {e}"))),
            _ => Err(Error::msg(format!(
                "{name} answered with a malformed reply"
            ))),
        })
    }
}

impl<R: DeserializeOwned> Future for HostCall<R> {
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<R, Error>> {
        // `HostCall` holds nothing pinned.
        let this = self.get_mut();
        let (reply, ticket) = match std::mem::replace(&mut this.state, State::Done) {
            State::New(request) => (this.host.service_bytes(this.op, &request?), None),
            State::Waiting(ticket) => (
                this.host
                    .service_bytes(service::ASYNC_POLL, &ticket.to_le_bytes()),
                Some(ticket),
            ),
            State::Done => {
                return Poll::Ready(Err(Error::msg(format!(
                    "{} was polled after it completed",
                    this.name
                ))))
            }
        };
        // An error or a result ends the ticket in the host.
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                return Poll::Ready(Err(Error::msg(format!("{}: {}", this.name, e.message()))))
            }
        };
        match reply.split_first() {
            Some((&PENDING, rest)) => {
                let Some(ticket) = ticket.or_else(|| abi_future::handle(rest)) else {
                    return Poll::Ready(Err(Error::msg(format!(
                        "{} answered pending with no ticket",
                        this.name
                    ))));
                };
                this.state = State::Waiting(ticket);
                Poll::Pending
            }
            _ => this.decode(&reply),
        }
    }
}

impl<R> Drop for HostCall<R> {
    fn drop(&mut self) {
        if let State::Waiting(ticket) = self.state {
            let _ = self
                .host
                .service_bytes(service::ASYNC_CANCEL, &ticket.to_le_bytes());
        }
    }
}
