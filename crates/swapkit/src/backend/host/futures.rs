//! The host's side of async calls (ABI.md §11): the scope a plugin's future is polled in, and
//! the host services it awaits.
//!
//! While the host polls a plugin's async call, this thread's [`Polling`] scope names the
//! plugin instance, the call, the waker of the task polling it, and the call's tickets: the
//! host futures the plugin awaits. `ASYNC_HOST` starts one and polls it at once with that
//! waker; `ASYNC_POLL` polls it again, each time within a later poll of the same call. So a
//! host future wakes exactly the task that drives the plugin's call, and no waker is handed
//! to the plugin.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use swapkit_abi::future::{PENDING, READY};
use swapkit_abi::service::DependencyCall;

use super::services::Refusal;
use crate::vault::ServiceFuture;

/// The host futures one async call awaits, by ticket. Dropped with the call, after the
/// plugin dropped its own future.
#[derive(Default)]
pub(crate) struct Tickets {
    next: u64,
    /// Each pending future, with the name of the host service it is (`None`: a dependency's
    /// method, whose errors name it already).
    pending: Vec<(u64, ServiceFuture, Option<Box<str>>)>,
    /// The instance and handle under which the plugin had this task's waker recorded (it
    /// cloned its waker): forgotten when the call ends, with its tickets.
    registered: Option<(u64, u64)>,
}

impl Drop for Tickets {
    fn drop(&mut self) {
        if let Some((instance, handle)) = self.registered {
            forget(instance, handle);
        }
    }
}

/// The async call a thread is polling.
struct Scope {
    instance: u64,
    handle: Option<u64>,
    waker: *const Waker,
    tickets: *mut Tickets,
    caller: *const Caller<'static>,
}

/// Starts a call the polled plugin makes to a dependency's async method, in the generation
/// (and version choice) of the call being polled: given by the layer that polls (`call`), so
/// that the backend names neither generations nor calls.
pub(crate) type Caller<'a> = dyn Fn(DependencyCall) -> ServiceFuture + 'a;

thread_local! {
    static SCOPE: Cell<*mut Scope> = const { Cell::new(std::ptr::null_mut()) };
}

/// Runs `f` (a call into the plugin that polls its async call) in the scope of that call:
/// plugin instance `instance` (its context's id), call `handle` (`None` when starting), the
/// task's `waker` and the call's `tickets`.
#[inline(always)]
pub(crate) fn polling<T>(
    instance: u64,
    handle: Option<u64>,
    waker: &Waker,
    tickets: &mut Tickets,
    caller: &Caller<'_>,
    f: impl FnOnce() -> T,
) -> T {
    // SAFETY: only the lifetime is erased: the scope that keeps this pointer is taken down
    // (by `Restore`) before `polling` returns, so it is never read after `caller` ends.
    let caller: &Caller<'static> = unsafe { std::mem::transmute(caller) };
    let mut scope = Scope {
        instance,
        handle,
        waker,
        tickets,
        caller,
    };
    let previous = SCOPE.replace(&mut scope);
    struct Restore(*mut Scope);
    impl Drop for Restore {
        #[inline(always)]
        fn drop(&mut self) {
            SCOPE.set(self.0);
        }
    }
    let _restore = Restore(previous);
    f()
}

/// Runs `f` with the scope of the call instance `instance` is being polled for. The scope is
/// taken while `f` runs, so a plugin call the host makes inside it sees none of this call's.
fn with_scope<T>(
    instance: u64,
    f: impl FnOnce(&Waker, &mut Tickets, Option<u64>) -> Result<T, Refusal>,
) -> Result<T, Refusal> {
    with_caller(instance, |waker, tickets, handle, _| {
        f(waker, tickets, handle)
    })
}

/// [`with_scope`], with what starts the call's dependency calls too.
fn with_caller<T>(
    instance: u64,
    f: impl FnOnce(&Waker, &mut Tickets, Option<u64>, &Caller<'_>) -> Result<T, Refusal>,
) -> Result<T, Refusal> {
    let scope = SCOPE.replace(std::ptr::null_mut());
    struct Restore(*mut Scope);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPE.set(self.0);
        }
    }
    let _restore = Restore(scope);
    // SAFETY: a scope is set only by `polling`, which outlives it on this thread's stack and
    // restores the previous one after; it was taken out above, so nothing else reaches its
    // tickets while `f` has them.
    let Some(scope) = (unsafe { scope.as_mut() }) else {
        return Err(Refusal::Failed(
            "an async host service is awaited only from an async method the host is polling \
             (on the thread polling it); a synchronous method or a thread of the plugin's own \
             cannot await one"
                .into(),
        ));
    };
    if scope.instance != instance {
        return Err(Refusal::Failed(
            "an async host service was asked for by another plugin than the one whose async \
             call this thread is polling"
                .into(),
        ));
    }
    // SAFETY: as above: the waker, tickets and caller outlive the scope.
    let (waker, tickets, caller) = unsafe { (&*scope.waker, &mut *scope.tickets, &*scope.caller) };
    f(waker, tickets, scope.handle, caller)
}

/// Polls a host future with the task's waker.
fn poll_once(future: &mut ServiceFuture, waker: &Waker) -> Poll<Result<Vec<u8>, String>> {
    future.as_mut().poll(&mut Context::from_waker(waker))
}

fn ready(service: Option<&str>, result: Result<Vec<u8>, String>) -> Result<Vec<u8>, Refusal> {
    let bytes = result.map_err(|e| {
        Refusal::Failed(match service {
            Some(name) => format!("host service `{name}`: {e}"),
            None => e,
        })
    })?;
    let mut reply = Vec::with_capacity(bytes.len() + 1);
    reply.push(READY);
    reply.extend_from_slice(&bytes);
    Ok(reply)
}

/// `ASYNC_HOST`: polls `future` at once; keeps it under a new ticket if it is pending.
pub(crate) fn start(instance: u64, name: &str, future: ServiceFuture) -> Result<Vec<u8>, Refusal> {
    with_scope(instance, |waker, tickets, _| {
        keep(Some(name), future, waker, tickets)
    })
}

/// `ASYNC_DEPENDENCY`: starts `call` in the caller's generation, as a host future the caller
/// awaits.
pub(crate) fn start_dependency(
    instance: u64,
    call: swapkit_abi::service::DependencyCall,
) -> Result<Vec<u8>, Refusal> {
    with_caller(instance, |waker, tickets, _, caller| {
        let future = caller(call);
        keep(None, future, waker, tickets)
    })
}

/// How many host futures one async call may await at once: a guest that starts more (a
/// hostile one, flooding the host with pending work) is refused, not given the host's memory.
pub(crate) const MAX_TICKETS: usize = 256;

/// Polls `future` (host service `service`, or a dependency's method) once; keeps it under a
/// new ticket if it is pending.
fn keep(
    service: Option<&str>,
    mut future: ServiceFuture,
    waker: &Waker,
    tickets: &mut Tickets,
) -> Result<Vec<u8>, Refusal> {
    if tickets.pending.len() >= MAX_TICKETS {
        let what = match service {
            Some(name) => format!("host service `{name}`"),
            None => "the dependency's method".to_owned(),
        };
        return Err(Refusal::Failed(format!(
            "a call may await at most {MAX_TICKETS} host futures at once; {what} was not started"
        )));
    }
    match poll_once(&mut future, waker) {
        Poll::Ready(result) => ready(service, result),
        Poll::Pending => {
            tickets.next += 1;
            let ticket = tickets.next;
            tickets
                .pending
                .push((ticket, future, service.map(Into::into)));
            let mut reply = vec![PENDING];
            reply.extend_from_slice(&ticket.to_le_bytes());
            Ok(reply)
        }
    }
}

/// `ASYNC_POLL`: polls the future under `ticket` again.
pub(crate) fn poll(instance: u64, ticket: u64) -> Result<Vec<u8>, Refusal> {
    with_scope(instance, |waker, tickets, _| {
        let i = tickets
            .pending
            .iter()
            .position(|(t, _, _)| *t == ticket)
            .ok_or_else(|| {
                Refusal::Failed(format!(
                    "no host service is pending under ticket {ticket} in this call"
                ))
            })?;
        match poll_once(&mut tickets.pending[i].1, waker) {
            Poll::Ready(result) => {
                let (_, future, service) = tickets.pending.swap_remove(i);
                drop(future);
                ready(service.as_deref(), result)
            }
            Poll::Pending => Ok(vec![PENDING]),
        }
    })
}

/// `ASYNC_CANCEL`: drops the future under `ticket`, if it is still there.
pub(crate) fn cancel(instance: u64, ticket: u64) -> Result<Vec<u8>, Refusal> {
    with_scope(instance, |_, tickets, _| {
        tickets.pending.retain(|(t, _, _)| *t != ticket);
        Ok(vec![])
    })
}

/// The wakers of async calls that are pending, by instance and handle: what a waker the
/// plugin kept wakes, from any thread, after the poll that gave it.
fn registry() -> &'static Mutex<HashMap<(u64, u64), Waker>> {
    static WAKERS: OnceLock<Mutex<HashMap<(u64, u64), Waker>>> = OnceLock::new();
    WAKERS.get_or_init(Default::default)
}

/// Records the waker of pending call `handle` of `instance` (after a poll that left it
/// pending), unless the same task's is there.
pub(crate) fn remember(instance: u64, handle: u64, waker: &Waker) {
    let mut wakers = registry().lock().unwrap_or_else(|p| p.into_inner());
    match wakers.get(&(instance, handle)) {
        Some(w) if w.will_wake(waker) => {}
        _ => {
            wakers.insert((instance, handle), waker.clone());
        }
    }
}

/// Forgets call `handle` of `instance` (it completed or was dropped).
pub(crate) fn forget(instance: u64, handle: u64) {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&(instance, handle));
}

/// `ASYNC_REGISTER`: records the waker of the task polling call `handle` of `instance` now
/// (the plugin cloned its waker within the poll), so that a wake from another thread before
/// the poll returns is not lost. Outside that call's poll it does nothing.
pub(crate) fn register(instance: u64, handle: u64) -> Result<Vec<u8>, Refusal> {
    let _ = with_scope(instance, |waker, tickets, current| {
        if current.is_none() || current == Some(handle) {
            tickets.registered = Some((instance, handle));
            remember(instance, handle, waker);
        }
        Ok(())
    });
    Ok(vec![])
}

/// `ASYNC_WAKE`: wakes the task polling call `handle` of `instance`: at once if this thread
/// is polling it, else through the registry. A call that is gone is not woken.
pub(crate) fn wake(instance: u64, handle: u64) -> Result<Vec<u8>, Refusal> {
    let here = with_scope(instance, |waker, _, current| {
        Ok((current.is_none() || current == Some(handle)).then(|| waker.wake_by_ref()))
    });
    if !matches!(here, Ok(Some(()))) {
        let waker = registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(instance, handle))
            .cloned();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
    Ok(vec![])
}
