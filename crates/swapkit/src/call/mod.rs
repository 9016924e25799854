//! The call path: typed clients, their transports, and pins.
//!
//! A call holds the current generation through a hazard slot of its own thread (see
//! `hazard.rs`: no lock, no shared counter, no atomic read-modify-write), encodes its
//! arguments on the stack, calls the plugin, and decodes the result from the plugin's own
//! buffer. The generation stays alive for the length of the call, so a swap during the call
//! never frees the code it runs in.

mod async_call;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;
use swapkit_abi::lane::{LaneArgs, LaneResult};
use swapkit_abi::{wire, Interface, Status, Transport};

use crate::backend::{host_status, Instance, LaneFailure};
use crate::error::{CallError, CallSite};
use crate::generation::{Generation, Target};
use crate::hazard::Current;
use crate::route::Variant;
use crate::stats::Fault;

/// Arguments up to this size are encoded on the stack; larger ones spill to the heap.
const STACK_ARGS: usize = 256;

/// Calls `method` of `target` in `generation` through the encoded path; `pin` is the version
/// choice of the pin the call runs under, if any.
#[inline(always)]
fn call_in<A: Serialize + ?Sized, R: DeserializeOwned>(
    generation: &Generation,
    target: &Target,
    pin: Option<&OnceLock<Variant>>,
    method: u32,
    args: &A,
) -> Result<R, CallError> {
    let resolved = generation.resolve(target, pin)?;
    let (instance, interface) = (resolved.instance, resolved.interface);
    if instance.scoped || resolved.timed {
        return held(generation, &resolved, pin, || {
            encode_and_call(instance, interface, target, method, args)
        });
    }
    encode_and_call(instance, interface, target, method, args)
}

/// Calls `method` of `target` in `generation` with `args` as they are: through the direct
/// lane where the plugin has one. Written without a closure on the common path, so that the
/// caller's arguments stay in registers on their way to the plugin.
#[inline(always)]
fn lane_in<A, R>(
    generation: &Generation,
    target: &Target,
    pin: Option<&OnceLock<Variant>>,
    method: u32,
    args: A,
) -> Result<R, CallError>
where
    A: LaneArgs + Serialize,
    R: LaneResult + DeserializeOwned,
{
    if let Some(fast) = generation.fast_lane(target, method) {
        fast.instance.stats.call();
        // SAFETY: the lane the plugin lists under this method's hash, which covers the
        // interface's hash (its types and plain layouts) and the lane rules, so it has exactly
        // the signature `A` and `R` give; the instance is one the generation holds.
        return unsafe {
            crate::backend::native::lane_at(fast.header, fast.handle, fast.lane, args)
        }
        .map_err(|f| lane_failure(fast.instance, target, method, f));
    }
    let resolved = generation.resolve(target, pin)?;
    let (instance, interface) = (resolved.instance, resolved.interface);
    if instance.scoped || resolved.timed {
        return held(generation, &resolved, pin, || {
            lane_or_encode(instance, interface, resolved.lanes, target, method, args)
        });
    }
    lane_or_encode(instance, interface, resolved.lanes, target, method, args)
}

/// `call`, for a plugin with dependencies (it calls them in this generation) or a call a
/// canary samples (timed, for the two versions' comparison). Out of line, so that the common
/// path stays small.
#[inline(never)]
fn held<R>(
    generation: &Generation,
    resolved: &crate::generation::Resolved<'_>,
    pin: Option<&OnceLock<Variant>>,
    call: impl FnOnce() -> Result<R, CallError>,
) -> Result<R, CallError> {
    let _scope = resolved.instance.scoped.then(|| {
        crate::backend::host::enter_routed(
            &generation.plugins,
            generation.id,
            generation.route(),
            pin,
        )
    });
    if !resolved.timed {
        return call();
    }
    let start = Instant::now();
    let result = call();
    resolved.instance.stats.latency.record(start.elapsed());
    result
}

/// A call of `method` with `args` as they are: through the plugin's direct lane if it lists
/// one for the method, else through the encoded path. Inlined into the typed client's method,
/// so the arguments go from the caller's registers to the plugin's.
#[inline(always)]
fn lane_or_encode<A, R>(
    instance: &Instance,
    interface: u32,
    lanes: &[*const ()],
    target: &Target,
    method: u32,
    args: A,
) -> Result<R, CallError>
where
    A: LaneArgs + Serialize,
    R: LaneResult + DeserializeOwned,
{
    let lane = lanes
        .get(method as usize)
        .copied()
        .unwrap_or(std::ptr::null());
    if lane.is_null() {
        return encoded(instance, interface, target, method, args);
    }
    instance.stats.call();
    instance
        .lane(lane, interface, method, args)
        .map_err(|f| lane_failure(instance, target, method, f))
}

/// The encoded path of a lane call into a plugin without that lane: out of line, so that the
/// lane path stays small where it is inlined.
#[inline(never)]
fn encoded<A: Serialize, R: DeserializeOwned>(
    instance: &Instance,
    interface: u32,
    target: &Target,
    method: u32,
    args: A,
) -> Result<R, CallError> {
    encode_and_call(instance, interface, target, method, &args)
}

/// The error of a failed lane call.
#[cold]
#[inline(never)]
fn lane_failure(instance: &Instance, target: &Target, method: u32, lane: LaneFailure) -> CallError {
    let names = (target.interface, method_name(target, method));
    match lane {
        LaneFailure::Status(status, message) => failure(instance, names, status, message),
        LaneFailure::Result(e) => {
            instance.stats.fault(Fault::Error);
            CallError::Decode {
                site: site(instance, names),
                reason: e.to_string(),
            }
        }
    }
}

/// Encodes the arguments, calls the instance, and decodes the reply.
#[inline]
fn encode_and_call<A: Serialize + ?Sized, R: DeserializeOwned>(
    instance: &Instance,
    interface: u32,
    target: &Target,
    method: u32,
    args: &A,
) -> Result<R, CallError> {
    let mut input = wire::StackBuf::<STACK_ARGS>::new();
    wire::encode_to_stack(args, &mut input).map_err(|e| encode_error(target, method, e))?;
    instance.stats.call();
    instance.call(interface, method, input.as_slice(), |reply| {
        if reply.status == Status::Ok as u32 {
            wire::from_bytes::<R>(reply.bytes).map_err(|e| {
                decode_error(instance, target.interface, method_name(target, method), e)
            })
        } else {
            let message = String::from_utf8_lossy(reply.bytes).into_owned();
            let names = (target.interface, method_name(target, method));
            Err(failure(instance, names, reply.status, message))
        }
    })
}

#[cold]
fn encode_error(target: &Target, method: u32, e: wire::Error) -> CallError {
    CallError::Encode {
        interface: target.interface,
        method: method_name(target, method),
        reason: e.to_string(),
    }
}

#[cold]
pub(crate) fn decode_error(
    instance: &Instance,
    interface: &'static str,
    method: &'static str,
    e: wire::Error,
) -> CallError {
    instance.stats.fault(Fault::Error);
    CallError::Decode {
        site: site(instance, (interface, method)),
        reason: e.to_string(),
    }
}

pub(crate) fn method_name(target: &Target, method: u32) -> &'static str {
    target
        .methods
        .get(method as usize)
        .copied()
        .unwrap_or(UNKNOWN_METHOD)
}

/// The method name of a method number the target does not list.
pub(crate) const UNKNOWN_METHOD: &str = "<unknown method>";

/// The call site of a call into `instance`; `names` are the interface and method names.
pub(crate) fn site(instance: &Instance, names: (&'static str, &'static str)) -> CallSite {
    CallSite {
        plugin: instance.code.name.clone(),
        version: instance.code.version.clone(),
        interface: names.0,
        method: names.1,
    }
}

/// The error of a call whose reply carried status `raw` and `message`; `names` are the
/// interface and method names the error reports.
#[cold]
pub(crate) fn failure(
    instance: &Instance,
    names: (&'static str, &'static str),
    raw: u32,
    message: String,
) -> CallError {
    instance.stats.fault(match raw {
        host_status::TRAP | host_status::TIMEOUT | host_status::MEMORY | host_status::NESTING => {
            Fault::Trap
        }
        r if r == Status::Panic as u32 => Fault::Panic,
        _ => Fault::Error,
    });
    let site = site(instance, names);
    match raw {
        host_status::TRAP => {
            tracing::error!(plugin = %site.plugin, version = %site.version, interface = site.interface, method = site.method, trap = %message, "wasm plugin trapped");
            return CallError::Trap { site, message };
        }
        host_status::TIMEOUT => return CallError::Timeout { site },
        host_status::MEMORY => return CallError::ResourceLimit { site, message },
        host_status::REENTRANT => return CallError::Reentrant { site, message },
        host_status::NESTING => {
            tracing::warn!(plugin = %site.plugin, version = %site.version, interface = site.interface, method = site.method, reason = %message, "nested plugin calls went past the sandbox's bounds");
            return CallError::Nesting { site, message };
        }
        host_status::EXHAUSTED => return CallError::PoolExhausted { site, message },
        _ => {}
    }
    match Status::from_raw(raw) {
        Some(Status::Panic) => {
            tracing::error!(plugin = %site.plugin, version = %site.version, interface = site.interface, method = site.method, panic = %message, "plugin panicked");
            CallError::Panic { site, message }
        }
        Some(status) => CallError::Guest {
            site,
            status,
            message,
        },
        None => CallError::UnknownStatus { site, raw },
    }
}

pub(crate) fn target<I: Interface + ?Sized>(plugin: Option<&str>) -> Target {
    Target {
        interface: I::NAME,
        hash: I::HASH,
        methods: I::METHODS,
        plugin: plugin.map(Into::into),
    }
}

/// The transport of a client made by [`Swapper::client`](crate::Swapper::client): each call
/// runs in the generation that is current when it starts.
#[derive(Clone)]
pub struct Binding {
    /// The current-generation cell and nothing else: the call path needs no more.
    current: Arc<Current>,
    target: Target,
}

impl Binding {
    pub(crate) fn new(current: Arc<Current>, target: Target) -> Binding {
        Binding { current, target }
    }
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("interface", &self.target.interface)
            .field("plugin", &self.target.plugin)
            .finish()
    }
}

impl Transport for Binding {
    type Error = CallError;

    #[inline]
    fn call<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: u32,
        args: &A,
    ) -> Result<R, CallError> {
        let guard = self.current.enter();
        call_in(guard.get(), &self.target, None, method, args)
    }

    #[inline(always)]
    fn call_lane<A, R>(&self, method: u32, args: A) -> Result<R, CallError>
    where
        A: LaneArgs + Serialize,
        R: LaneResult + DeserializeOwned,
    {
        let guard = self.current.enter();
        lane_in(guard.get(), &self.target, None, method, args)
    }

    fn call_async<A, R>(
        &self,
        method: u32,
        args: A,
    ) -> impl std::future::Future<Output = Result<R, CallError>> + Send
    where
        A: Serialize + Send,
        R: DeserializeOwned + Send,
    {
        async_call::AsyncCall::new(
            async_call::Source::Current(&self.current),
            async_call::TargetOf::Borrowed(&self.target),
            method,
            args,
        )
    }

    fn call_async_lane<A, R>(
        &self,
        method: u32,
        args: A,
    ) -> impl std::future::Future<Output = Result<R, CallError>> + Send
    where
        A: LaneArgs + Serialize + Send,
        R: LaneResult + DeserializeOwned + Send,
    {
        async_call::LaneCall::new(async_call::AsyncCall::new(
            async_call::Source::Current(&self.current),
            async_call::TargetOf::Borrowed(&self.target),
            method,
            args,
        ))
    }
}

/// A unit of work's hold on one generation.
///
/// While a `Pin` lives, its generation stays alive, and every client made from it calls that
/// generation, however many swaps happen meanwhile: a request that pins once never mixes two
/// versions. A `Pin` is `Send`, so it can follow a request across threads and tasks.
///
/// While a canary runs, the pin also keeps one version of the plugin with the canary: the one
/// its first call into that plugin chose (by the key current then), for every later call
/// made through it, its clients, and the plugins they call.
pub struct Pin {
    generation: Arc<Generation>,
    label: Option<u64>,
    /// The version chosen, in a generation with a canary; shared with the pin's clients.
    choice: Option<Arc<OnceLock<Variant>>>,
}

impl Pin {
    pub(crate) fn new(generation: Arc<Generation>, label: Option<String>) -> Pin {
        let choice = generation.route().map(|_| Arc::new(OnceLock::new()));
        Pin::with_choice(generation, label, choice)
    }

    /// A pin whose version choice is made already: `choice` (a candidate's smoke calls go to
    /// the canary).
    pub(crate) fn with_choice(
        generation: Arc<Generation>,
        label: Option<String>,
        choice: Option<Arc<OnceLock<Variant>>>,
    ) -> Pin {
        let label = generation.add_pin(label);
        Pin {
            generation,
            label,
            choice,
        }
    }

    /// The pinned generation's number.
    pub fn generation(&self) -> u64 {
        self.generation.id
    }

    /// While a canary runs: the version this pin's calls into that plugin go to, once its
    /// first call chose one. `None` before that, and in a generation without a canary.
    pub fn variant(&self) -> Option<Variant> {
        self.choice.as_ref().and_then(|c| c.get().copied())
    }

    /// The pinned generation's plugins, as `(name, version)`, dependencies first.
    pub fn plugins(&self) -> Vec<(String, String)> {
        self.generation
            .plugins
            .iter()
            .map(|p| (p.code.name.to_string(), p.code.version.to_string()))
            .collect()
    }

    /// A typed client for interface `I`, bound to this pin's generation.
    pub fn client<I: Interface + ?Sized>(&self) -> I::Client<Pinned> {
        I::client(Pinned {
            generation: self.generation.clone(),
            target: target::<I>(None),
            choice: self.choice.clone(),
        })
    }

    /// Like [`Pin::client`], for the plugin named `plugin`.
    pub fn client_of<I: Interface + ?Sized>(&self, plugin: &str) -> I::Client<Pinned> {
        I::client(Pinned {
            generation: self.generation.clone(),
            target: target::<I>(Some(plugin)),
            choice: self.choice.clone(),
        })
    }
}

/// The plugins of one generation that export interface `I`, with a client of each, in
/// dependency order: what [`Pin::each`] and [`Swapper::each`](crate::Swapper::each) return.
pub type Each<I> = Vec<(String, <I as Interface>::Client<Pinned>)>;

impl Pin {
    /// A client of interface `I` for each plugin of the pinned generation that exports it,
    /// with the plugin's name, in dependency order: a plugin comes after the plugins it
    /// depends on. Reverse it for teardown order. (Hotswap's `InvokeEach` and
    /// `InvokeEachBackward`.)
    pub fn each<I: Interface + ?Sized>(&self) -> Each<I> {
        self.generation
            .exporters(I::HASH)
            .into_iter()
            .map(|name| (name.to_string(), self.client_of::<I>(&name)))
            .collect()
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.generation.remove_pin(self.label);
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pin")
            .field("generation", &self.generation.id)
            .finish()
    }
}

/// The transport of a client made from a [`Pin`]: every call runs in the pinned generation.
#[derive(Clone)]
pub struct Pinned {
    generation: Arc<Generation>,
    target: Target,
    choice: Option<Arc<OnceLock<Variant>>>,
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinned")
            .field("generation", &self.generation.id)
            .field("interface", &self.target.interface)
            .finish()
    }
}

impl Transport for Pinned {
    type Error = CallError;

    #[inline]
    fn call<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: u32,
        args: &A,
    ) -> Result<R, CallError> {
        call_in(
            &self.generation,
            &self.target,
            self.choice.as_deref(),
            method,
            args,
        )
    }

    #[inline(always)]
    fn call_lane<A, R>(&self, method: u32, args: A) -> Result<R, CallError>
    where
        A: LaneArgs + Serialize,
        R: LaneResult + DeserializeOwned,
    {
        lane_in(
            &self.generation,
            &self.target,
            self.choice.as_deref(),
            method,
            args,
        )
    }

    fn call_async<A, R>(
        &self,
        method: u32,
        args: A,
    ) -> impl std::future::Future<Output = Result<R, CallError>> + Send
    where
        A: Serialize + Send,
        R: DeserializeOwned + Send,
    {
        async_call::AsyncCall::new(
            async_call::Source::Pinned(&self.generation, self.choice.as_ref()),
            async_call::TargetOf::Borrowed(&self.target),
            method,
            args,
        )
    }

    fn call_async_lane<A, R>(
        &self,
        method: u32,
        args: A,
    ) -> impl std::future::Future<Output = Result<R, CallError>> + Send
    where
        A: LaneArgs + Serialize + Send,
        R: LaneResult + DeserializeOwned + Send,
    {
        async_call::LaneCall::new(async_call::AsyncCall::new(
            async_call::Source::Pinned(&self.generation, self.choice.as_ref()),
            async_call::TargetOf::Borrowed(&self.target),
            method,
            args,
        ))
    }
}
