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
use std::sync::{Arc, OnceLock};

use swapkit_abi::service::{self, Cas, CasReply, DependencyCall, Invoke, Key, Put};
use swapkit_abi::{wire, LiveKind, RawSlice, Status, LIVE_INTERFACE};
use swapkit_sync::HazardCell;

use super::{GuestCtx, Services};
use crate::backend::{host_status, Instance};
use crate::route::{Route, Variant};

/// The plugins of the generation a call on this thread runs in.
#[derive(Clone, Copy)]
struct Scope {
    plugins: *const [Arc<Instance>],
    generation: u64,
    /// The generation's split between a plugin and its canary, or null.
    route: *const Route,
    /// The version choice of the pin the call runs under, or null.
    pin: *const OnceLock<Variant>,
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
    enter_routed(plugins, generation, None, None)
}

/// [`enter`], for a generation whose calls into a plugin with a canary go through `route`,
/// under the pin whose choice is `pin`: a dependency call picks its version as the host's
/// calls do.
pub(crate) fn enter_routed<'a>(
    plugins: &'a [Arc<Instance>],
    generation: u64,
    route: Option<&'a Route>,
    pin: Option<&'a OnceLock<Variant>>,
) -> ScopeGuard<'a> {
    let previous = SCOPE.replace(Some(Scope {
        plugins: plugins as *const [Arc<Instance>],
        generation,
        route: route.map_or(std::ptr::null(), |r| r as *const Route),
        pin: pin.map_or(std::ptr::null(), |p| p as *const OnceLock<Variant>),
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
fn with_scope<T>(
    f: impl FnOnce(&[Arc<Instance>], u64) -> Result<T, Refusal>,
) -> Result<T, Refusal> {
    with_routed_scope(|plugins, generation, _| f(plugins, generation))
}

/// [`with_scope`], with the version choice of the scope: `pick(i)` is the index of the
/// instance that serves calls to the plugin at index `i`.
fn with_routed_scope<T>(
    f: impl FnOnce(&[Arc<Instance>], u64, &dyn Fn(usize) -> usize) -> Result<T, Refusal>,
) -> Result<T, Refusal> {
    let Some(scope) = SCOPE.get() else {
        return Err(Refusal::Failed(
            "no generation is calling this plugin on this thread; call dependencies and live \
             types from a method or hook the host called, not from a thread of the plugin's own"
                .into(),
        ));
    };
    // SAFETY: a scope is only set by `enter_routed`, whose guard borrows the slice, the route
    // and the pin's choice, and restores the previous scope when dropped, so all three are
    // alive while it is the current scope.
    let (plugins, route, pin) =
        unsafe { (&*scope.plugins, scope.route.as_ref(), scope.pin.as_ref()) };
    let pick = |i: usize| match route {
        Some(route) if route.stable == i => route.index(route.choose(pin)),
        _ => i,
    };
    f(plugins, scope.generation, &pick)
}

/// What a refused request says: a plain failure the guest sees as an error, or one past the
/// sandbox's nesting bounds, which also traps a wasm caller so that the whole chain unwinds to
/// the host's call, which fails with [`CallError::Nesting`](crate::CallError::Nesting).
pub(crate) enum Refusal {
    Failed(String),
    Nesting(String),
}

impl From<String> for Refusal {
    fn from(message: String) -> Refusal {
        Refusal::Failed(message)
    }
}

/// How much native stack a nested call must find left, beyond the wasm stack it may use: the
/// host's own frames between the two guests (service, wasmtime's entry, decoding) and a host
/// function's.
pub(crate) const HOST_STACK: usize = 256 << 10;

thread_local! {
    /// The instances whose requests this thread is serving, outermost first: how deep plugin
    /// → host → plugin calls are nested here, and which instances are running below.
    static OPEN: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// One open nested request; closes it when dropped.
struct Open;

impl Drop for Open {
    fn drop(&mut self) {
        OPEN.with(|o| o.borrow_mut().pop());
    }
}

/// Opens a request of `ctx` that may call a plugin: refused past the sandbox's depth, or when
/// too little native stack is left for another guest on top of this thread.
fn open(ctx: &GuestCtx, services: &Services) -> Result<Open, Refusal> {
    let depth = OPEN.with(|o| o.borrow().len());
    if depth >= ctx.policy.max_nesting {
        return Err(Refusal::Nesting(format!(
            "plugin `{}` {} made a nested call {} deep (plugin -> host -> plugin), past the \
             limit of {} (Sandbox::max_nesting)",
            ctx.plugin,
            ctx.version,
            depth + 1,
            ctx.policy.max_nesting
        )));
    }
    let need = services.nested_stack;
    // An async call's step runs on a fiber, whose stack `stacker` does not know.
    #[cfg(feature = "wasm")]
    let (left, fiber) = match crate::backend::wasm::fiber_remaining() {
        Some(left) => (Some(left), true),
        None => (stacker::remaining_stack(), false),
    };
    #[cfg(not(feature = "wasm"))]
    let (left, fiber) = (stacker::remaining_stack(), false);
    if let Some(left) = left {
        if left < need {
            let (on, what_to_do) = if fiber {
                (
                    "the fiber its async call's step runs on",
                    "a fiber has room for four nested guests of WasmLimits::max_stack; nest \
                     less deeply from an async method",
                )
            } else {
                (
                    "this thread",
                    "run the call on a thread with a larger stack",
                )
            };
            return Err(Refusal::Nesting(format!(
                "plugin `{}` {} made a nested call with {} KiB of native stack left on {on}, \
                 less than the {} KiB another guest may need (WasmLimits::max_stack plus the \
                 host's frames); {what_to_do}",
                ctx.plugin,
                ctx.version,
                left >> 10,
                need >> 10
            )));
        }
    }
    OPEN.with(|o| o.borrow_mut().push(ctx.id));
    Ok(Open)
}

/// What a service call returned: the status, the reply or message, and whether the request
/// went past the nesting bounds.
pub(crate) struct Served {
    pub status: Status,
    pub bytes: Vec<u8>,
    /// A wasm caller traps on it; a native one sees a plain failure, as native code cannot be
    /// stopped from outside.
    #[cfg_attr(not(feature = "wasm"), allow(dead_code))]
    pub nesting: bool,
}

/// Serves one request with any host panic contained, since an unwind must never cross into
/// the guest. Both backends' `service` host functions answer through this.
pub(crate) fn serve_contained(ctx: &GuestCtx, op: u32, input: &[u8]) -> Served {
    let result = catch_unwind(AssertUnwindSafe(|| serve(ctx, op, input)))
        .unwrap_or_else(|_| Err("the host panicked serving the request".to_owned().into()));
    match result {
        Ok(bytes) => Served {
            status: Status::Ok,
            bytes,
            nesting: false,
        },
        Err(Refusal::Failed(message)) => Served {
            status: Status::ServiceFailed,
            bytes: message.into_bytes(),
            nesting: false,
        },
        Err(Refusal::Nesting(message)) => Served {
            status: Status::ServiceFailed,
            bytes: message.into_bytes(),
            nesting: true,
        },
    }
}

/// Serves one request from the plugin behind `ctx`: the encoded reply, or why not. Every
/// request is checked against the plugin's [`Policy`](crate::sandbox::Policy) first.
fn serve(ctx: &GuestCtx, op: u32, input: &[u8]) -> Result<Vec<u8>, Refusal> {
    fn req<'a, T: serde::Deserialize<'a>>(input: &'a [u8]) -> Result<T, String> {
        wire::from_bytes(input).map_err(|e| format!("the service request did not decode: {e}"))
    }
    fn reply<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Refusal> {
        wire::to_vec(value)
            .map_err(|e| Refusal::Failed(format!("the service reply did not encode: {e}")))
    }
    let (vault, policy) = (&ctx.services.vault, &ctx.policy);
    let readable = |key: &str| {
        if policy.may_read(key) {
            Ok(())
        } else {
            Err(policy.refusal(&ctx.plugin, "read", key))
        }
    };
    let writable = |key: &str| {
        policy
            .namespace_for_write(key)
            .ok_or_else(|| policy.refusal(&ctx.plugin, "write", key))
    };
    match op {
        service::VAULT_GET => {
            let key = req::<Key>(input)?.key;
            readable(&key)?;
            reply(&vault.get_versioned(&key))
        }
        service::VAULT_PUT => {
            let put: Put = req(input)?;
            let ns = writable(&put.key)?;
            let written = vault.write_within(&put.key, None, Some(put.value), ns, &policy.quota)?;
            reply(&written.unwrap_or_default())
        }
        service::VAULT_CAS => {
            let cas: Cas = req(input)?;
            let ns = writable(&cas.key)?;
            let written =
                vault.write_within(&cas.key, Some(cas.expected), cas.value, ns, &policy.quota)?;
            reply(&match written {
                Ok(version) => CasReply::Done(version),
                Err(current) => CasReply::Conflict(current),
            })
        }
        service::VAULT_DELETE => {
            let key = req::<Key>(input)?.key;
            writable(&key)?;
            reply(&vault.delete(&key))
        }
        service::VAULT_LIST => {
            let mut keys = vault.list(&req::<Key>(input)?.key);
            keys.retain(|k| policy.may_read(k));
            reply(&keys)
        }
        service::HOST_FN => {
            let call: Invoke = req(input)?;
            if !policy.may_call(&call.name) {
                return Err(Refusal::Failed(format!(
                    "plugin `{}` may not call host function `{}`; grant it with \
                     Sandbox::grant(\"{}\", Grant::HostFn(\"{}\".into()))",
                    ctx.plugin,
                    call.name,
                    policy.identity(),
                    call.name
                )));
            }
            let f = vault.function(&call.name).ok_or_else(|| {
                format!(
                    "the host offers no function `{}`; register it with Vault::provide",
                    call.name
                )
            })?;
            let _open = open(ctx, &ctx.services)?;
            Ok(f(&call.args).map_err(|e| format!("host function `{}`: {e}", call.name))?)
        }
        service::ASYNC_HOST => {
            let call: Invoke = req(input)?;
            if !policy.may_call(&call.name) {
                return Err(Refusal::Failed(format!(
                    "plugin `{}` may not call host service `{}`; grant it with \
                     Sandbox::grant(\"{}\", Grant::HostFn(\"{}\".into()))",
                    ctx.plugin,
                    call.name,
                    policy.identity(),
                    call.name
                )));
            }
            let f = vault.service(&call.name).ok_or_else(|| {
                format!(
                    "the host offers no async service `{}`; register it with \
                     Vault::provide_async",
                    call.name
                )
            })?;
            let future = f(&call.args).map_err(|e| format!("host service `{}`: {e}", call.name))?;
            let _open = open(ctx, &ctx.services)?;
            super::futures::start(ctx.id, &call.name, future)
        }
        service::ASYNC_POLL => {
            let _open = open(ctx, &ctx.services)?;
            super::futures::poll(ctx.id, raw_u64(input)?)
        }
        service::ASYNC_DEPENDENCY => {
            let call: DependencyCall = req(input)?;
            declared(ctx, &call)?;
            let _open = open(ctx, &ctx.services)?;
            super::futures::start_dependency(ctx.id, call)
        }
        service::ASYNC_CANCEL => super::futures::cancel(ctx.id, raw_u64(input)?),
        service::ASYNC_WAKE => super::futures::wake(ctx.id, raw_u64(input)?),
        service::ASYNC_REGISTER => super::futures::register(ctx.id, raw_u64(input)?),
        service::LOAD_DATA => reply(&ctx.services.load_data.get(&ctx.plugin)),
        service::DEPENDENCY => dependency(ctx, req(input)?),
        service::LIVE_NEW => live_new(ctx, req(input)?),
        other => {
            Err(format!("unknown host service {other}; the plugin is newer than the host").into())
        }
    }
}

/// A ticket or handle: 8 bytes, little-endian.
fn raw_u64(input: &[u8]) -> Result<u64, Refusal> {
    swapkit_abi::future::handle(input)
        .ok_or_else(|| Refusal::Failed("the request is not an 8-byte ticket".into()))
}

fn dependency(ctx: &GuestCtx, call: DependencyCall) -> Result<Vec<u8>, Refusal> {
    declared(ctx, &call)?;
    let _open = open(ctx, &ctx.services)?;
    with_routed_scope(|plugins, generation, pick| {
        let found = plugins
            .iter()
            .position(|p| *p.code.name == *call.plugin)
            .ok_or_else(|| format!("generation {generation} has no plugin `{}`", call.plugin))?;
        let instance = &plugins[pick(found)];
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

/// Refuses a call to a plugin the caller does not declare, or to an interface of it the
/// caller's manifest does not name.
fn declared(ctx: &GuestCtx, call: &DependencyCall) -> Result<(), Refusal> {
    let Some(declared) = ctx.dependencies.iter().find(|d| d.plugin == call.plugin) else {
        return Err(format!(
            "plugin `{}` calls `{}`, which it does not declare; add it to `dependencies` of \
             export_plugin!",
            ctx.plugin, call.plugin
        )
        .into());
    };
    if !declared
        .interfaces
        .iter()
        .any(|(_, hash)| *hash == call.hash)
    {
        return Err(format!(
            "plugin `{}` calls `{}` of `{}` with hash {:#x}, which its manifest does not declare \
             (it declares {}); rebuild it",
            ctx.plugin,
            call.interface,
            call.plugin,
            call.hash,
            declared
                .interfaces
                .iter()
                .map(|(name, hash)| format!("`{name}` {hash:#x}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
        .into());
    }
    Ok(())
}

/// A live-type constructor of the caller's declared dependencies: a plugin reaches no other
/// plugin's types, and builds its own without the host.
fn live_new(ctx: &GuestCtx, call: Invoke) -> Result<Vec<u8>, Refusal> {
    if ctx.dependencies.is_empty() {
        return Err(Refusal::Failed(format!(
            "plugin `{}` declares no dependencies, so no live type is in its reach through the \
             host: it builds its own types directly; to use `{}` of another plugin, declare that \
             plugin in `dependencies` of export_plugin!",
            ctx.plugin, call.name
        )));
    }
    let _open = open(ctx, &ctx.services)?;
    with_scope(|plugins, generation| {
        let declared = |p: &&Arc<Instance>| {
            *p.code.name == *ctx.plugin
                || ctx.dependencies.iter().any(|d| *d.plugin == *p.code.name)
        };
        let in_reach: Vec<Arc<Instance>> = plugins.iter().filter(declared).cloned().collect();
        let (instance, index) = find_live(&in_reach, None, &call.name, LiveKind::Factory)
            .ok_or_else(|| {
                format!(
                    "generation {generation} has no live type `{}` in `{}` or the plugins it \
                     declares in `dependencies`",
                    call.name, ctx.plugin
                )
            })?;
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

/// Calls a plugin for another plugin: the encoded result, or what went wrong. The callee
/// must not be running on this thread already: a plugin never re-enters itself through the
/// host, whichever backend (on wasm it would run in another instance of its pool, on top of
/// this thread's stack).
fn invoke(
    instance: &Instance,
    interface: u32,
    method: u32,
    args: &[u8],
) -> Result<Vec<u8>, Refusal> {
    if OPEN.with(|o| o.borrow().contains(&instance.id)) {
        return Err(Refusal::Nesting(format!(
            "`{}` {} is already running on this thread below this call; a plugin may not \
             re-enter itself through the host (a dependency cycle or its own live type)",
            instance.code.name, instance.code.version
        )));
    }
    instance.call(interface, method, args, |reply| {
        if reply.status == Status::Ok as u32 {
            return Ok(reply.bytes.to_vec());
        }
        let message = format!(
            "`{}` {} failed (status {}): {}",
            instance.code.name,
            instance.code.version,
            reply.status,
            String::from_utf8_lossy(reply.bytes)
        );
        Err(if reply.status == host_status::NESTING {
            Refusal::Nesting(message)
        } else {
            Refusal::Failed(message)
        })
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
        Some(ctx) => {
            let served = serve_contained(&ctx, op, input);
            (served.status, served.bytes)
        }
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
