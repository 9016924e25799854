//! The `service` host function of ABI v1: the Vault, the host's own functions, calls to a
//! plugin's dependencies and live-type factories, for native and wasm guests alike.
//!
//! A dependency call is resolved in the caller's own generation. The call path records that
//! generation's plugins in a thread-local [`Scope`] before it calls a plugin that has
//! dependencies (and a reload does so around every hook), so a plugin serving a pinned request
//! reaches the dependency instance of the same generation, never a newer one.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use swapkit_abi::service::{self, Cas, CasReply, DependencyCall, Invoke, Key, Put};
use swapkit_abi::{wire, LiveKind, RawSlice, Status, LIVE_INTERFACE};
use swapkit_sync::HazardCell;

use super::GuestCtx;
use crate::backend::Instance;

/// The plugins of the generation a call on this thread runs in.
#[derive(Clone, Copy)]
struct Scope {
    plugins: *const [Arc<Instance>],
    generation: u64,
}

thread_local! {
    static SCOPE: Cell<Option<Scope>> = const { Cell::new(None) };
    /// The reply of the last native service call on this thread.
    static REPLY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Makes `plugins` the scope of dependency calls on this thread until dropped.
pub(crate) struct ScopeGuard<'a> {
    previous: Option<Scope>,
    _plugins: PhantomData<&'a [Arc<Instance>]>,
}

/// Enters the scope of generation `generation`, whose plugins are `plugins`.
pub(crate) fn enter(plugins: &[Arc<Instance>], generation: u64) -> ScopeGuard<'_> {
    let previous = SCOPE.replace(Some(Scope {
        plugins: plugins as *const [Arc<Instance>],
        generation,
    }));
    ScopeGuard {
        previous,
        _plugins: PhantomData,
    }
}

impl Drop for ScopeGuard<'_> {
    fn drop(&mut self) {
        SCOPE.set(self.previous);
    }
}

/// Runs `f` with the current scope's plugins and generation number.
fn with_scope<T>(f: impl FnOnce(&[Arc<Instance>], u64) -> Result<T, String>) -> Result<T, String> {
    let Some(scope) = SCOPE.get() else {
        return Err(
            "no generation is calling this plugin on this thread; call dependencies and \
                    live types from a method or hook the host called, not from a thread of the \
                    plugin's own"
                .into(),
        );
    };
    // SAFETY: a scope is only set by `enter`, whose guard borrows the slice and restores the
    // previous scope when dropped, so the slice is alive while it is the current scope.
    f(unsafe { &*scope.plugins }, scope.generation)
}

/// Serves one request with any host panic contained, since an unwind must never cross into
/// the guest: the status, and the encoded reply or a message. Both backends' `service` host
/// functions answer through this.
pub(crate) fn serve_contained(ctx: &GuestCtx, op: u32, input: &[u8]) -> (Status, Vec<u8>) {
    let result = catch_unwind(AssertUnwindSafe(|| serve(ctx, op, input)))
        .unwrap_or_else(|_| Err("the host panicked serving the request".into()));
    match result {
        Ok(bytes) => (Status::Ok, bytes),
        Err(message) => (Status::ServiceFailed, message.into_bytes()),
    }
}

/// Serves one request from the plugin behind `ctx`: the encoded reply, or a message.
fn serve(ctx: &GuestCtx, op: u32, input: &[u8]) -> Result<Vec<u8>, String> {
    fn req<'a, T: serde::Deserialize<'a>>(input: &'a [u8]) -> Result<T, String> {
        wire::from_bytes(input).map_err(|e| format!("the service request did not decode: {e}"))
    }
    fn reply<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, String> {
        wire::to_vec(value).map_err(|e| format!("the service reply did not encode: {e}"))
    }
    let vault = &ctx.vault;
    match op {
        service::VAULT_GET => reply(&vault.get_versioned(&req::<Key>(input)?.key)),
        service::VAULT_PUT => {
            let put: Put = req(input)?;
            reply(&vault.put_raw(&put.key, put.value))
        }
        service::VAULT_CAS => {
            let cas: Cas = req(input)?;
            reply(
                &match vault.compare_and_swap(&cas.key, cas.expected, cas.value) {
                    Ok(version) => CasReply::Done(version),
                    Err(current) => CasReply::Conflict(current),
                },
            )
        }
        service::VAULT_DELETE => reply(&vault.delete(&req::<Key>(input)?.key)),
        service::VAULT_LIST => reply(&vault.list(&req::<Key>(input)?.key)),
        service::HOST_FN => {
            let call: Invoke = req(input)?;
            let f = vault.function(&call.name).ok_or_else(|| {
                format!(
                    "the host offers no function `{}`; register it with Vault::provide",
                    call.name
                )
            })?;
            f(&call.args).map_err(|e| format!("host function `{}`: {e}", call.name))
        }
        service::DEPENDENCY => dependency(ctx, req(input)?),
        service::LIVE_NEW => live_new(req(input)?),
        other => Err(format!(
            "unknown host service {other}; the plugin is newer than the host"
        )),
    }
}

fn dependency(ctx: &GuestCtx, call: DependencyCall) -> Result<Vec<u8>, String> {
    if !ctx.dependencies.iter().any(|d| d.plugin == call.plugin) {
        return Err(format!(
            "plugin `{}` calls `{}`, which it does not declare; add it to `dependencies` of \
             export_plugin!",
            ctx.plugin, call.plugin
        ));
    }
    with_scope(|plugins, generation| {
        let instance = plugins
            .iter()
            .find(|p| *p.code.name == *call.plugin)
            .ok_or_else(|| format!("generation {generation} has no plugin `{}`", call.plugin))?;
        let index = instance
            .code
            .manifest
            .interfaces
            .iter()
            .position(|i| i.hash == call.hash)
            .ok_or_else(|| {
                format!(
                    "`{}` {} does not export `{}` with the caller's hash",
                    call.plugin, instance.code.version, call.interface
                )
            })?;
        invoke(instance, index as u32, call.method, &call.args)
    })
}

fn live_new(call: Invoke) -> Result<Vec<u8>, String> {
    with_scope(|plugins, generation| {
        let (instance, index) = find_live(plugins, None, &call.name, LiveKind::Factory)
            .ok_or_else(|| format!("generation {generation} has no live type `{}`", call.name))?;
        invoke(instance, LIVE_INTERFACE, index, &call.args)
    })
}

/// The plugin and position of the live export `name` of `kind` among `plugins`.
pub(crate) fn find_live<'a>(
    plugins: &'a [Arc<Instance>],
    plugin: Option<&str>,
    name: &str,
    kind: LiveKind,
) -> Option<(&'a Arc<Instance>, u32)> {
    plugins
        .iter()
        .filter(|p| plugin.is_none_or(|want| *p.code.name == *want))
        .find_map(|p| {
            let at = p
                .code
                .manifest
                .live
                .iter()
                .position(|l| l.kind == kind && l.name == name)?;
            Some((p, at as u32))
        })
}

/// Calls a plugin for another plugin: the encoded result, or what went wrong.
fn invoke(
    instance: &Instance,
    interface: u32,
    method: u32,
    args: &[u8],
) -> Result<Vec<u8>, String> {
    instance.call(interface, method, args, |reply| {
        if reply.status == Status::Ok as u32 {
            Ok(reply.bytes.to_vec())
        } else {
            Err(format!(
                "`{}` {} failed (status {}): {}",
                instance.code.name,
                instance.code.version,
                reply.status,
                String::from_utf8_lossy(reply.bytes)
            ))
        }
    })
}

/// The native `service` host function. A request made after the instance was freed (by a
/// thread the plugin left running) fails with `ServiceFailed`.
///
/// # Safety
/// `ctx` must be the pointer the instance's host table was made with (a leaked
/// `HazardCell<GuestCtx>`), `input` must point to `len` readable bytes, and `out` must be
/// writable.
pub(crate) unsafe extern "C" fn host_service(
    ctx: *const c_void,
    op: u32,
    input: *const u8,
    len: usize,
    out: *mut RawSlice,
) -> u32 {
    // SAFETY: upheld by the caller; the cell is never freed.
    let (cell, input) = unsafe {
        (
            &*(ctx as *const HazardCell<GuestCtx>),
            RawSlice { ptr: input, len }.as_slice(),
        )
    };
    let (status, bytes) = match cell.enter() {
        Some(ctx) => serve_contained(&ctx, op, input),
        None => (
            Status::ServiceFailed,
            b"this plugin instance was freed: a thread it left running called the host after \
              its on_free; stop such threads in on_free"
                .to_vec(),
        ),
    };
    REPLY.with(|r| {
        let mut r = r.borrow_mut();
        *r = bytes;
        // SAFETY: the caller passes a writable `out`; the bytes stay until the next service
        // call on this thread.
        unsafe { out.write(RawSlice::from_slice(&r)) };
    });
    status as u32
}
