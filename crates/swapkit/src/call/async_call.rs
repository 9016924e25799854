//! An async call into a plugin: the future a typed client's `async fn` awaits.
//!
//! At its first poll it takes the generation current then (or its pin's), resolves the
//! plugin (a canary's version is chosen here, once), and starts the method in the plugin
//! (ABI.md §11). From then on it holds that generation, as a [`Pin`](crate::Pin) does: the
//! plugin's future lives in that generation's instance, and every later poll drives it there,
//! however many swaps happen meanwhile. Dropping it drops the plugin's future inside the
//! plugin, then the host futures it awaited, then its hold on the generation.
//!
//! A wasm plugin's call is bounded as a whole: it fails with a timeout once
//! `WasmLimits::call_timeout` has passed since its first poll, awaits included (an alarm
//! polls it then if nothing else does), and it never blocks its thread for an instance of
//! the pool: it waits for one with its task's waker, up to the pool's `Wait` policy.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use swapkit_abi::future::{self as abi_future, PENDING, READY};
use swapkit_abi::lane::{LaneArgs, LaneResult};
use swapkit_abi::service::DependencyCall;
use swapkit_abi::{wire, ASYNC_INTERFACE};

use crate::backend::host::{self, Tickets};
use crate::backend::{host_status, Instance, LaneStart, Lease, Reply};
use crate::error::CallError;
use crate::generation::{Generation, Target};
use crate::hazard::Current;
use crate::route::Variant;

/// Where a call finds its generation.
pub(crate) enum Source<'a> {
    /// The generation current at the first poll.
    Current(&'a Current),
    /// A pin's generation, and its version choice.
    Pinned(&'a Arc<Generation>, Option<&'a Arc<OnceLock<Variant>>>),
    /// The generation of the caller of a dependency, and its version choice.
    Owned(Arc<Generation>, Option<Arc<OnceLock<Variant>>>),
}

/// Arguments as a call sends them: any serializable value, or bytes encoded already.
pub(crate) trait Args {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), wire::Error>;
}

impl<T: Serialize> Args for T {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), wire::Error> {
        wire::encode_into(self, out)
    }
}

/// The encoded argument tuple of a plugin's call to a dependency.
pub(crate) struct Encoded(pub Vec<u8>);

impl Args for Encoded {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), wire::Error> {
        out.extend_from_slice(&self.0);
        Ok(())
    }
}

/// A result as a call returns it: decoded, or the encoded bytes for a calling plugin.
pub(crate) trait Decode: Sized {
    fn decode(bytes: &[u8]) -> Result<Self, wire::Error>;
}

impl<T: DeserializeOwned> Decode for T {
    fn decode(bytes: &[u8]) -> Result<Self, wire::Error> {
        wire::from_bytes(bytes)
    }
}

/// A dependency's encoded result.
pub(crate) struct Raw(pub Vec<u8>);

impl Decode for Raw {
    fn decode(bytes: &[u8]) -> Result<Self, wire::Error> {
        Ok(Raw(bytes.to_vec()))
    }
}

/// What a call asks its generation for: a client's target, or a dependency call's own.
pub(crate) enum TargetOf<'a> {
    Borrowed(&'a Target),
    Owned(Box<Target>),
}

impl std::ops::Deref for TargetOf<'_> {
    type Target = Target;

    fn deref(&self) -> &Target {
        match self {
            TargetOf::Borrowed(target) => target,
            TargetOf::Owned(target) => target,
        }
    }
}

/// The future of one async call: `R` is the method's result type.
pub(crate) struct AsyncCall<'a, A, R> {
    source: Source<'a>,
    target: TargetOf<'a>,
    method: u32,
    stage: Stage<A>,
    _result: PhantomData<fn() -> R>,
}

enum Stage<A> {
    /// Not yet polled: the arguments.
    New(A),
    /// Pending in the plugin.
    Running(Box<Running>),
    Done,
}

/// A call pending in the plugin. Its fields drop in order: the host futures the plugin
/// awaited (after the plugin dropped its own future, in `Drop`), then the generation.
struct Running {
    tickets: Tickets,
    /// The wasm instance the plugin's future lives in, while it is pending.
    lease: Lease,
    handle: u64,
    /// The instance, as its index among the generation's plugins.
    plugin: usize,
    started: Option<Instant>,
    /// The drain report's record of this call, once it is pending.
    label: Option<u64>,
    /// The start's input, kept while the call waits for a wasm instance to start in.
    start_input: Option<Vec<u8>>,
    /// When the whole call times out (wasm).
    deadline: Option<Instant>,
    /// The step (`START` or `POLL`) a wasm guest was computing when it yielded at an epoch
    /// tick, left in the lease to go on at the next poll.
    computing: Option<u32>,
    /// What a wasm call that waits keeps (boxed: most calls never wait).
    waits: Option<Box<Waits>>,
    choice: Option<Arc<OnceLock<Variant>>>,
    generation: Arc<Generation>,
}

impl<'a, A, R> AsyncCall<'a, A, R> {
    pub(crate) fn new(source: Source<'a>, target: TargetOf<'a>, method: u32, args: A) -> Self {
        AsyncCall {
            source,
            target,
            method,
            stage: Stage::New(args),
            _result: PhantomData,
        }
    }

    fn names(&self) -> (&'static str, &'static str) {
        (
            self.target.interface,
            super::method_name(&self.target, self.method),
        )
    }
}

/// What a call that waits (for its deadline, or for a wasm instance) keeps.
#[derive(Default)]
struct Waits {
    /// When the call began to wait for a wasm instance, and how long it may.
    parked: Option<(Instant, Duration)>,
    /// The alarm set for this call, and the waker it wakes.
    alarm: Option<(Instant, Waker)>,
}

/// What one step of the call came to.
enum Step {
    Ready(Vec<u8>),
    Pending(Option<u64>),
    /// Every wasm instance was busy: the call did not start, and waits for one.
    Parked,
}

/// A status no guest sends: the plugin's reply broke the async protocol.
const PROTOCOL: u32 = u32::MAX;

impl Running {
    fn instance(&self) -> &Instance {
        &self.generation.plugins[self.plugin]
    }

    /// Calls `ASYNC_INTERFACE`/`method` in the plugin in this call's scope: its generation
    /// for dependency calls, its tickets and the task's waker for the host futures it awaits.
    /// `None` when a wasm guest yielded while it computed: its task is woken, and the next
    /// poll goes on with the step (see `computing`).
    fn enter<T>(
        &mut self,
        waker: &Waker,
        method: u32,
        input: &[u8],
        then: impl FnOnce(Reply<'_>) -> (T, bool),
    ) -> Option<T> {
        let Running {
            tickets,
            lease,
            handle,
            plugin,
            choice,
            generation,
            deadline,
            ..
        } = self;
        let instance = &generation.plugins[*plugin];
        let handle = (method != abi_future::START).then_some(*handle);
        let _scope = instance.scoped.then(|| {
            host::enter_routed(
                &generation.plugins,
                generation.id,
                generation.route(),
                choice.as_deref(),
            )
        });
        let (generation, choice): (&Arc<Generation>, &Option<_>) = (generation, choice);
        let caller = |call| dependency(generation.clone(), choice.clone(), call);
        host::polling(instance.id, handle, waker, tickets, &caller, || {
            instance.call_leased(
                lease,
                waker,
                *deadline,
                ASYNC_INTERFACE,
                method,
                input,
                then,
            )
        })
    }

    /// Has the alarm wake `waker` at `at`, unless an alarm still to come will wake it by
    /// then (it polls the call, which sets the next).
    fn alarm(&mut self, at: Instant, waker: &Waker) {
        let waits = self.waits.get_or_insert_with(Box::default);
        let now = Instant::now();
        if waits
            .alarm
            .as_ref()
            .is_some_and(|(set, w)| now < *set && *set <= at && w.will_wake(waker))
        {
            return;
        }
        crate::alarm::wake_at(at, waker);
        waits.alarm = Some((at, waker.clone()));
    }

    /// Drops the plugin's future inside the plugin, in its own generation, if it started.
    fn cancel(&mut self) {
        if self.start_input.is_some() {
            return; // never started: it waited for an instance
        }
        if self.computing.is_some() {
            // Stopped halfway through a step: the guest cannot run its future's drop, and
            // its instance is thrown away (`finish`), the future's memory with it.
            return;
        }
        let handle = self.handle.to_le_bytes();
        // A drop cannot wait: a guest that computes through a tick goes on here at once.
        let dropped = loop {
            let step = self.enter(Waker::noop(), abi_future::DROP, &handle, |r| {
                ((!r.is_ok()).then(|| r.message()), false)
            });
            if let Some(dropped) = step {
                break dropped;
            }
        };
        if let Some(message) = dropped {
            tracing::error!(plugin = %self.instance().code.name, error = %message, "dropping a plugin's async call failed");
        }
    }
}

/// A reply's step (and whether the call stays pending, holding its instance), or the status
/// and message it failed with.
fn step(reply: Reply<'_>, starting: bool) -> (Result<Step, (u32, String)>, bool) {
    let stepped = read(reply, starting);
    let pending = matches!(stepped, Ok(Step::Pending(_)));
    (stepped, pending)
}

fn read(reply: Reply<'_>, starting: bool) -> Result<Step, (u32, String)> {
    if reply.status == host_status::PARKED && starting {
        return Ok(Step::Parked);
    }
    if !reply.is_ok() {
        return Err((reply.status, reply.message()));
    }
    match reply.bytes.split_first() {
        Some((&READY, result)) => Ok(Step::Ready(result.to_vec())),
        Some((&PENDING, rest)) if !starting => rest
            .is_empty()
            .then_some(Step::Pending(None))
            .ok_or((PROTOCOL, "a malformed pending reply".into())),
        Some((&PENDING, rest)) => abi_future::handle(rest)
            .map(|h| Step::Pending(Some(h)))
            .ok_or((PROTOCOL, "a pending start without a handle".into())),
        _ => Err((PROTOCOL, "a reply with no async tag".into())),
    }
}

impl<A: Args, R: Decode> AsyncCall<'_, A, R> {
    /// The first poll: take the generation, resolve the plugin, start the method.
    fn start(&mut self, args: A, cx: &mut Context<'_>) -> Poll<Result<R, CallError>> {
        let (generation, choice) = match &self.source {
            Source::Current(current) => (current.load_full(), None),
            Source::Pinned(generation, choice) => ((*generation).clone(), choice.cloned()),
            Source::Owned(generation, choice) => (generation.clone(), choice.clone()),
        };
        let resolved = match generation.resolve(&self.target, choice.as_deref()) {
            Ok(resolved) => resolved,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let (plugin, interface, timed) = (
            index_of(&generation, resolved.instance),
            resolved.interface,
            resolved.timed,
        );
        self.start_resolved(args, generation, choice, (plugin, interface, timed), cx)
    }

    /// The encoded start of a call resolved to plugin number `plugin` of `generation` (its
    /// exported interface `interface`; `timed` for a canary's comparison).
    fn start_resolved(
        &mut self,
        args: A,
        generation: Arc<Generation>,
        choice: Option<Arc<OnceLock<Variant>>>,
        (plugin, interface, timed): (usize, u32, bool),
        cx: &mut Context<'_>,
    ) -> Poll<Result<R, CallError>> {
        let mut input = Vec::with_capacity(64);
        input.extend_from_slice(&interface.to_le_bytes());
        input.extend_from_slice(&self.method.to_le_bytes());
        if let Err(e) = args.encode(&mut input) {
            let (interface, method) = self.names();
            return Poll::Ready(Err(CallError::Encode {
                interface,
                method,
                reason: e.to_string(),
            }));
        }
        drop(args);
        // The clock is read only for a call that is timed or bounded: native calls outside a
        // canary skip it.
        let bounds = generation.plugins[plugin].async_bounds();
        let now = (timed || bounds.is_some()).then(Instant::now);
        let deadline = bounds.zip(now).map(|((timeout, _), now)| now + timeout);
        let running = Box::new(Running {
            tickets: Tickets::default(),
            lease: Lease::default(),
            handle: 0,
            plugin,
            started: now.filter(|_| timed),
            label: None,
            start_input: Some(input),
            deadline,
            computing: None,
            waits: None,
            choice,
            generation,
        });
        running.instance().stats.call();
        // Its deadline, if it has one, was set just now.
        self.step(running, cx)
    }

    /// Fails the call if its deadline passed, else takes its next [`step`](Self::step).
    fn advance(
        &mut self,
        mut running: Box<Running>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<R, CallError>> {
        if running.deadline.is_some_and(|d| Instant::now() >= d) {
            running.cancel();
            let error = super::failure(
                running.instance(),
                self.names(),
                host_status::TIMEOUT,
                String::new(),
            );
            finish(running);
            return Poll::Ready(Err(error));
        }
        self.step(running, cx)
    }

    /// Takes the call's next step in the plugin: the start, a poll, or the rest of a step a
    /// wasm guest yielded in.
    fn step(
        &mut self,
        mut running: Box<Running>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<R, CallError>> {
        let resumed = running.computing.is_some();
        let (method, stepped) = match (running.computing.take(), running.start_input.take()) {
            // A step a wasm guest yielded in goes on where it stopped.
            (Some(method), _) => (
                method,
                running.enter(cx.waker(), method, &[], |r| {
                    step(r, method == abi_future::START)
                }),
            ),
            (None, Some(input)) => {
                let stepped =
                    running.enter(cx.waker(), abi_future::START, &input, |r| step(r, true));
                if matches!(stepped, Some(Ok(Step::Parked))) {
                    running.start_input = Some(input);
                }
                (abi_future::START, stepped)
            }
            (None, None) => {
                let handle = running.handle.to_le_bytes();
                let stepped =
                    running.enter(cx.waker(), abi_future::POLL, &handle, |r| step(r, false));
                (abi_future::POLL, stepped)
            }
        };
        let Some(stepped) = stepped else {
            // Named in the drain report while it computes, as once it is pending.
            self.record(&mut running);
            running.computing = Some(method);
            self.stage = Stage::Running(running);
            return Poll::Pending;
        };
        if resumed && matches!(stepped, Ok(Step::Pending(_))) {
            // A wake that came while the guest was in the step (its own, or a host future's)
            // brought the poll that went on with the step, not one of the guest's future:
            // that one is owed still.
            cx.waker().wake_by_ref();
        }
        self.settle(running, stepped, cx)
    }

    /// Names the call in its generation's drain report, once.
    fn record(&self, running: &mut Running) {
        if running.label.is_some() {
            return;
        }
        let (interface, method) = self.names();
        let label = format!(
            "async call {interface}::{method} of plugin `{}`",
            running.instance().code.name
        );
        running.label = running.generation.add_pin(Some(label));
    }

    /// Acts on a step of `running`: completes, fails, or keeps it pending.
    fn settle(
        &mut self,
        mut running: Box<Running>,
        stepped: Result<Step, (u32, String)>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<R, CallError>> {
        let names = self.names();
        match stepped {
            Ok(Step::Parked) => {
                let now = Instant::now();
                let wait = running
                    .instance()
                    .async_bounds()
                    .and_then(|(_, wait)| wait)
                    .unwrap_or_default();
                let waits = running.waits.get_or_insert_with(Box::default);
                let (since, wait) = *waits.parked.get_or_insert((now, wait));
                if now >= since + wait {
                    let message = format!(
                        "all the wasm instances of its pool stayed busy for {wait:?} (each \
                         pending async call holds one); raise WasmLimits::pool_size or the wait"
                    );
                    let error =
                        super::failure(running.instance(), names, host_status::EXHAUSTED, message);
                    finish(running);
                    return Poll::Ready(Err(error));
                }
                let at = running
                    .deadline
                    .map_or(since + wait, |d| d.min(since + wait));
                running.alarm(at, cx.waker());
                self.stage = Stage::Running(running);
                Poll::Pending
            }
            Ok(Step::Pending(started)) => {
                if let Some(handle) = started {
                    running.handle = handle;
                    self.record(&mut running);
                }
                host::remember(running.instance().id, running.handle, cx.waker());
                if let Some(deadline) = running.deadline {
                    running.alarm(deadline, cx.waker());
                }
                self.stage = Stage::Running(running);
                Poll::Pending
            }
            Ok(Step::Ready(bytes)) => {
                let result = R::decode(&bytes)
                    .map_err(|e| super::decode_error(running.instance(), names.0, names.1, e));
                finish(running);
                Poll::Ready(result)
            }
            Err((status, message)) => {
                let error = if status == PROTOCOL {
                    CallError::Async {
                        site: super::site(running.instance(), names),
                        message,
                    }
                } else {
                    super::failure(running.instance(), names, status, message)
                };
                finish(running);
                Poll::Ready(Err(error))
            }
        }
    }
}

/// The future of an async call through the method's async lane: at its first poll, a
/// native or static plugin's method starts with its arguments as they are, and a call that
/// completes then costs no encoding, no allocation of the host's and no count on the
/// generation's `Arc` (it holds the generation through its hazard slot, as a synchronous
/// call does). A call that turns pending goes on as an [`AsyncCall`]; a plugin without the
/// lane, a wasm plugin and a canary's timed call take the encoded start.
pub(crate) struct LaneCall<'a, A, R>(AsyncCall<'a, A, R>);

impl<'a, A, R> LaneCall<'a, A, R> {
    pub(crate) fn new(call: AsyncCall<'a, A, R>) -> Self {
        LaneCall(call)
    }
}

impl<A, R> AsyncCall<'_, A, R>
where
    A: Args + LaneArgs,
    R: Decode + LaneResult,
{
    /// The first poll through the lane, where there is one.
    fn start_lane(&mut self, args: A, cx: &mut Context<'_>) -> Poll<Result<R, CallError>> {
        match &self.source {
            Source::Current(current) => {
                let guard = current.enter();
                self.lane_in(guard.get(), &|| guard.to_arc(), None, args, cx)
            }
            Source::Pinned(generation, choice) => {
                let (generation, choice) = (*generation, *choice);
                self.lane_in(generation, &|| generation.clone(), choice, args, cx)
            }
            Source::Owned(..) => self.start(args, cx),
        }
    }

    /// Starts the call through its lane in `generation` (`arc` makes the call's own hold on
    /// it, if it turns pending), or through the encoded start where it has no lane to take.
    fn lane_in(
        &mut self,
        generation: &Generation,
        arc: &dyn Fn() -> Arc<Generation>,
        choice: Option<&Arc<OnceLock<Variant>>>,
        args: A,
        cx: &mut Context<'_>,
    ) -> Poll<Result<R, CallError>> {
        let resolved = match generation.resolve(&self.target, choice.map(|c| &**c)) {
            Ok(resolved) => resolved,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let instance = resolved.instance;
        let lane = resolved
            .lanes
            .get(self.method as usize)
            .copied()
            .unwrap_or(std::ptr::null());
        if lane.is_null() || resolved.timed || !instance.has_async_lanes() {
            let how = (
                index_of(generation, instance),
                resolved.interface,
                resolved.timed,
            );
            return self.start_encoded(args, arc(), choice.cloned(), how, cx);
        }
        let mut tickets = Tickets::default();
        let started = {
            let _scope = instance.scoped.then(|| {
                host::enter_routed(
                    &generation.plugins,
                    generation.id,
                    generation.route(),
                    choice.map(|c| &**c),
                )
            });
            let caller = |call| dependency(arc(), choice.cloned(), call);
            host::polling(instance.id, None, cx.waker(), &mut tickets, &caller, || {
                instance.async_lane::<A, R>(lane, args)
            })
        };
        instance.stats.call();
        match started {
            Ok(LaneStart::Ready(result)) => Poll::Ready(Ok(result)),
            Ok(LaneStart::Pending(handle)) => {
                let running = Box::new(Running {
                    tickets,
                    lease: Lease::default(),
                    handle,
                    plugin: index_of(generation, instance),
                    started: None,
                    label: None,
                    start_input: None,
                    deadline: None,
                    computing: None,
                    waits: None,
                    choice: choice.cloned(),
                    generation: arc(),
                });
                self.pending(running, handle, cx)
            }
            Err(failure) => Poll::Ready(Err(super::lane_failure(
                instance,
                &self.target,
                self.method,
                failure,
            ))),
        }
    }
}

impl<A: Args, R: Decode> AsyncCall<'_, A, R> {
    /// [`start_resolved`](Self::start_resolved), out of line: the lane's hot path stays small.
    #[cold]
    #[inline(never)]
    fn start_encoded(
        &mut self,
        args: A,
        generation: Arc<Generation>,
        choice: Option<Arc<OnceLock<Variant>>>,
        how: (usize, u32, bool),
        cx: &mut Context<'_>,
    ) -> Poll<Result<R, CallError>> {
        self.start_resolved(args, generation, choice, how, cx)
    }

    /// A call its lane left pending under `handle`: from here on it is polled as any other.
    #[inline(never)]
    fn pending(
        &mut self,
        running: Box<Running>,
        handle: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Result<R, CallError>> {
        self.settle(running, Ok(Step::Pending(Some(handle))), cx)
    }
}

impl<A, R> Future for LaneCall<'_, A, R>
where
    A: Args + LaneArgs,
    R: Decode + LaneResult,
{
    type Output = Result<R, CallError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: nothing in a `LaneCall` is pinned (see `AsyncCall`'s `poll`).
        let call = &mut unsafe { self.get_unchecked_mut() }.0;
        if matches!(call.stage, Stage::New(_)) {
            let Stage::New(args) = std::mem::replace(&mut call.stage, Stage::Done) else {
                unreachable!("matched above")
            };
            return call.start_lane(args, cx);
        }
        // SAFETY: as above.
        unsafe { std::pin::Pin::new_unchecked(call) }.poll(cx)
    }
}

/// The index of `instance` among `generation`'s plugins.
fn index_of(generation: &Generation, instance: &Instance) -> usize {
    match generation
        .plugins
        .iter()
        .position(|p| std::ptr::eq(&**p, instance))
    {
        Some(plugin) => plugin,
        None => unreachable!("a resolved instance is one of its generation's plugins"),
    }
}

/// Ends a call the plugin is done with (completed, failed or dropped): its latency for a
/// canary's comparison, its waker, its drain record. Then its host futures and its hold on
/// the generation go, in that order.
#[allow(clippy::boxed_local)] // its callers hold it boxed: moving it out would copy it whole
fn finish(mut running: Box<Running>) {
    let lease = std::mem::take(&mut running.lease);
    running.instance().release(lease);
    let instance = running.instance();
    if let Some(waits) = running.waits.as_deref() {
        if let (Some(_), Some((_, waker)), true) =
            (waits.parked, &waits.alarm, running.start_input.is_some())
        {
            instance.unpark(waker);
        }
    }
    if let Some(started) = running.started {
        instance.stats.latency.record(started.elapsed());
    }
    if running.label.is_some() {
        host::forget(instance.id, running.handle);
        running.generation.remove_pin(running.label);
    }
}

impl<A: Args, R: Decode> Future for AsyncCall<'_, A, R> {
    type Output = Result<R, CallError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: nothing in an `AsyncCall` is pinned: it is moved out of and back into its
        // fields by value only, never through a pinned reference.
        let this = unsafe { self.get_unchecked_mut() };
        match std::mem::replace(&mut this.stage, Stage::Done) {
            Stage::New(args) => this.start(args, cx),
            Stage::Running(running) => this.advance(running, cx),
            Stage::Done => {
                let (interface, method) = this.names();
                Poll::Ready(Err(CallError::Encode {
                    interface,
                    method,
                    reason: "the call was polled again after it completed".into(),
                }))
            }
        }
    }
}

impl<A, R> Drop for AsyncCall<'_, A, R> {
    #[inline]
    fn drop(&mut self) {
        if !matches!(self.stage, Stage::Running(_)) {
            return; // never polled, or done: nothing in the plugin to drop
        }
        if let Stage::Running(mut running) = std::mem::replace(&mut self.stage, Stage::Done) {
            // The plugin drops its future first, in its own generation; its drop may cancel
            // host futures it awaited, through this call's scope.
            running.cancel();
            finish(running);
        }
    }
}

/// A plugin's async call to a dependency (`ASYNC_DEPENDENCY`), in `generation`, the caller's,
/// with its version choice: a host future the caller awaits.
pub(crate) fn dependency(
    generation: Arc<Generation>,
    choice: Option<Arc<OnceLock<Variant>>>,
    call: DependencyCall,
) -> crate::vault::ServiceFuture {
    // A failure names the interface as the caller sent it, and the method as the callee's
    // manifest does (an error's names are static; these go into its message).
    let target = Target {
        interface: DEPENDENCY_INTERFACE,
        hash: call.hash,
        methods: &[],
        plugin: Some(call.plugin.as_str().into()),
    };
    let names = (generation.clone(), call.interface, call.plugin);
    let future: AsyncCall<'static, Encoded, Raw> = AsyncCall::new(
        Source::Owned(generation, choice),
        TargetOf::Owned(Box::new(target)),
        call.method,
        Encoded(call.args),
    );
    let (hash, method) = (call.hash, call.method);
    Box::pin(async move {
        future.await.map(|raw| raw.0).map_err(|e| {
            let (generation, interface, plugin) = names;
            let method = generation
                .plugins
                .iter()
                .filter(|p| *p.code.name == plugin)
                .flat_map(|p| &p.code.manifest.interfaces)
                .find(|i| i.hash == hash)
                .and_then(|i| i.methods.get(method as usize).cloned())
                .unwrap_or_else(|| format!("#{method}"));
            e.to_string()
                .replacen(DEPENDENCY_INTERFACE, &interface, 1)
                .replacen(super::UNKNOWN_METHOD, &method, 1)
        })
    })
}

/// The interface name a dependency call's error is made with, and its message names the
/// interface the caller sent in its place.
const DEPENDENCY_INTERFACE: &str = "(a dependency's interface)";
