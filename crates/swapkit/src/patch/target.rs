//! Patch targets: the static slot behind each `#[patchable]` function, the stack of patches
//! put in it, and the per-call handle the generated code uses.
//!
//! A target holds an ordered stack of patches, newest first. A call runs the first patch whose
//! rollout admits its key, or the original when none does. The stack is immutable once
//! published: applying or restoring one patch publishes a new stack that shares the other
//! patches (and their counters) with the old one, and a call in flight keeps the stack it
//! entered alive until it returns.

use std::any::Any;
use std::cell::Cell;
use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use super::plugin::RemoteFn;
use super::rollout::{Kind, Rollout};
use super::{PatchError, PatchGuard, PatchStatus, TargetStatus};
use crate::key::{stable_hash, BUCKETS};
use swapkit_sync::{Guard, HazardCell, StripedCounter};

/// Where a patch came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchSource {
    /// A closure or function of this process, applied at this source location.
    InProcess {
        /// The file of the `patch!` call.
        file: &'static str,
        /// Its line.
        line: u32,
    },
    /// An export of a plugin.
    Plugin {
        /// The plugin's name.
        plugin: String,
        /// Its version.
        version: String,
        /// The artifact's path, or `static:<crate>`.
        origin: String,
    },
}

impl std::fmt::Display for PatchSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PatchSource::InProcess { file, line } => {
                write!(f, "in-process closure at {file}:{line}")
            }
            PatchSource::Plugin {
                plugin,
                version,
                origin,
            } => write!(f, "plugin `{plugin}` {version} ({origin})"),
        }
    }
}

/// What a patch does when its replacement panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PanicPolicy {
    /// Run the original for this call, when the call can be made again (every argument is a
    /// reference or a primitive); otherwise behave like [`PanicPolicy::Propagate`]. A target
    /// returning `Result<_, E>` with `E: From<PatchPanic>` gets the error instead. The default.
    #[default]
    Fallback,
    /// Let the panic continue to the caller (after turning it into the target's error, where
    /// the target returns `Result<_, E>` with `E: From<PatchPanic>`).
    Propagate,
}

/// A panic caught in a patch. Targets that return `Result<_, E>` get it as their error when
/// `E: From<PatchPanic>`.
#[derive(Debug)]
pub struct PatchPanic {
    /// The target.
    pub target: &'static str,
    /// The patch's id.
    pub patch: String,
    /// The panic message.
    pub message: String,
    payload: Box<dyn Any + Send>,
}

impl std::fmt::Display for PatchPanic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "patch `{}` of `{}` panicked: {}",
            self.patch, self.target, self.message
        )
    }
}

impl std::error::Error for PatchPanic {}

/// Static facts about a patchable function.
#[derive(Debug, Clone, Copy)]
pub struct TargetInfo {
    /// `module::path::function`, or `module::path::Type::method`.
    pub name: &'static str,
    /// The canonical signature text: argument types and return type.
    pub signature: &'static str,
    /// FNV-1a of the signature text.
    pub signature_hash: u64,
}

/// The patches of one target, newest first. Never empty: a target with no patch holds none.
/// The top one is held apart from the rest so that a call reaches it with one load fewer: a
/// target usually has one patch.
pub(crate) struct Stack<F: ?Sized> {
    top: Arc<Patch<F>>,
    below: Vec<Arc<Patch<F>>>,
}

impl<F: ?Sized> Stack<F> {
    /// A stack of `layers`, the first checked first; `None` when there are none.
    fn of(mut layers: Vec<Arc<Patch<F>>>) -> Option<Stack<F>> {
        if layers.is_empty() {
            return None;
        }
        let top = layers.remove(0);
        Some(Stack { top, below: layers })
    }

    /// The patches in the order a call checks them.
    fn iter(&self) -> impl Iterator<Item = &Arc<Patch<F>>> {
        std::iter::once(&self.top).chain(&self.below)
    }

    fn len(&self) -> usize {
        1 + self.below.len()
    }
}

/// The patches of a target's stack, if it has one, in the order a call checks them.
fn layers<F: ?Sized>(stack: Option<&Stack<F>>) -> impl Iterator<Item = &Arc<Patch<F>>> {
    stack.into_iter().flat_map(Stack::iter)
}

/// Which patches of a target a restore takes off.
#[doc(hidden)]
pub enum Pick<'a> {
    /// The one a guard holds.
    Serial(u64),
    /// The one with this id.
    Id(&'a str),
    /// All of them.
    All,
}

/// One applied patch.
pub(crate) struct Patch<F: ?Sized> {
    pub id: String,
    /// Unique for the life of the process: what a [`PatchGuard`] names its patch by. An
    /// address would not do: the next patch on a target often gets the freed one's.
    serial: u64,
    seed: u64,
    replacement: Box<F>,
    rollout: Rollout,
    /// The share of buckets admitted, changeable while the patch is live.
    share: AtomicU32,
    on_panic: PanicPolicy,
    pub source: PatchSource,
    pub applied_at: SystemTime,
    /// For patches applied as a set: one flag that makes the whole set visible at once.
    armed: Option<Arc<AtomicBool>>,
    /// Calls the patch served, counted with no locked instruction.
    hits: StripedCounter,
    panics: AtomicU64,
    healthy: AtomicBool,
}

thread_local! {
    /// The target whose original a `call_original` is running, if any.
    static BYPASS: Cell<*const ()> = const { Cell::new(std::ptr::null()) };
}

/// The patch slot of one `#[patchable]` function. The macro puts one in a `static` next to the
/// function; `swapkit::target!(path)` names it.
pub struct Target<F: ?Sized + 'static> {
    info: TargetInfo,
    cell: HazardCell<Stack<F>>,
    /// Serialises apply and restore on this target.
    changing: Mutex<()>,
    /// For `#[patchable(plugin)]`: wraps a plugin's export as a replacement.
    remote: Option<fn(RemoteFn) -> Box<F>>,
}

impl<F: ?Sized + 'static> Target<F> {
    /// A target with no patch. Used by `#[patchable]`.
    pub const fn new(info: TargetInfo) -> Target<F> {
        Target {
            info,
            cell: HazardCell::empty(),
            changing: Mutex::new(()),
            remote: None,
        }
    }

    /// A target with no patch that plugins may patch too. Used by `#[patchable(plugin)]`.
    pub const fn with_remote(info: TargetInfo, remote: fn(RemoteFn) -> Box<F>) -> Target<F> {
        Target {
            info,
            cell: HazardCell::empty(),
            changing: Mutex::new(()),
            remote: Some(remote),
        }
    }

    /// The target's static facts.
    pub fn info(&self) -> &TargetInfo {
        &self.info
    }

    /// Whether plugins may patch it: it is marked `#[patchable(plugin)]`.
    pub fn accepts_plugins(&self) -> bool {
        self.remote.is_some()
    }

    /// Whether any patch is applied (whatever its rollout). One atomic load: this is the
    /// whole cost of an unpatched call.
    #[inline(always)]
    pub fn is_patched(&self) -> bool {
        !self.cell.is_empty()
    }

    /// The generated code's entry: `None` (one load, one branch) when unpatched.
    #[doc(hidden)]
    #[inline(always)]
    pub fn enter(&'static self) -> Option<PatchCall<F>> {
        if self.cell.is_empty() {
            return None;
        }
        self.enter_patched()
    }

    #[inline(never)]
    fn enter_patched(&'static self) -> Option<PatchCall<F>> {
        self.cell.enter().map(|guard| PatchCall {
            target: self,
            guard,
        })
    }

    pub(crate) fn apply(
        &'static self,
        replacement: Box<F>,
        options: PatchOptions,
    ) -> Result<PatchGuard, PatchError>
    where
        F: Send + Sync,
    {
        let _changing = crate::lock::lock(&self.changing);
        let id = options.id.unwrap_or_else(|| self.info.name.to_owned());
        let below = self.cell.load_full();
        if layers(below.as_deref()).any(|p| p.id == id) {
            return Err(PatchError::AlreadyPatched {
                target: self.info.name,
                patch: id,
            });
        }
        let share = match options.rollout.kind {
            Kind::Share(n) => n,
            Kind::Matching(_) => BUCKETS,
        };
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let (source, rollout) = (options.source.to_string(), options.rollout.describe(share));
        let patch = Arc::new(Patch {
            serial,
            seed: stable_hash(id.as_bytes()),
            id: id.clone(),
            replacement,
            rollout: options.rollout,
            share: AtomicU32::new(share),
            on_panic: options.on_panic,
            source: options.source,
            applied_at: SystemTime::now(),
            armed: options.armed,
            hits: StripedCounter::new(),
            panics: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
        });
        let stack = Stack {
            top: patch,
            below: layers(below.as_deref()).cloned().collect(),
        };
        let depth = stack.len();
        self.cell.swap(Some(Arc::new(stack)));
        tracing::info!(target: "swapkit::patch", target_fn = self.info.name, patch = %id, source = %source, rollout = %rollout, depth, "patch applied");
        Ok(PatchGuard::new(self, serial))
    }

    /// The patch with this serial number, if it is on the stack.
    fn layer(&self, serial: u64) -> Result<Arc<Patch<F>>, PatchError> {
        self.cell
            .load_full()
            .and_then(|s| s.iter().find(|p| p.serial == serial).cloned())
            .ok_or(PatchError::NotPatched {
                target: self.info.name,
            })
    }
}

impl<F: ?Sized + Send + Sync> Caught for Patch<F> {
    fn caught(&self, target: &'static str, payload: Box<dyn Any + Send>) -> PatchPanic {
        Patch::caught(self, target, payload)
    }
}

impl<F: ?Sized> Patch<F> {
    /// Whether a call on this thread gets this patch: it is armed, and its rollout admits the
    /// current key.
    #[inline]
    fn admits(&self) -> bool {
        self.is_armed()
            && self
                .rollout
                .admits_current(self.seed, self.share.load(Ordering::Relaxed))
    }

    /// Whether it is live: a patch of a set is not, until the whole set is.
    #[inline]
    fn is_armed(&self) -> bool {
        self.armed
            .as_ref()
            .is_none_or(|a| a.load(Ordering::Acquire))
    }

    /// Counts a panic, flags the patch unhealthy and logs it.
    #[cold]
    fn caught(&self, target: &'static str, payload: Box<dyn Any + Send>) -> PatchPanic {
        let panics = self.panics.fetch_add(1, Ordering::Relaxed) + 1;
        let was_healthy = self.healthy.swap(false, Ordering::Relaxed);
        let message = crate::error::panic_message(&*payload);
        tracing::error!(target: "swapkit::patch", target_fn = target, patch = %self.id, source = %self.source, panics, panic = %message, "patch panicked");
        if was_healthy {
            tracing::warn!(target: "swapkit::patch", target_fn = target, patch = %self.id, healthy = false, "patch health changed: unhealthy after its first panic; restore it or let its rollout shrink");
        }
        PatchPanic {
            target,
            patch: self.id.clone(),
            message,
            payload,
        }
    }
}

/// Records a panic in a patch, whatever its signature.
trait Caught: Send + Sync {
    fn caught(&self, target: &'static str, payload: Box<dyn Any + Send>) -> PatchPanic;
}

/// The future an async replacement returns, boxed.
pub type BoxFuture<R> = Pin<Box<dyn Future<Output = R> + Send + 'static>>;

/// A call into an async replacement: its output, or the panic it raised. It keeps the patch
/// alive until it completes, so a restore while it is pending lets it finish in the patch.
#[doc(hidden)]
pub struct PatchFuture<R> {
    future: Option<BoxFuture<R>>,
    /// A panic raised while the replacement made its future.
    early: Option<Box<dyn Any + Send>>,
    patch: Arc<dyn Caught>,
    target: &'static str,
}

impl<R> Future for PatchFuture<R> {
    type Output = Result<R, PatchPanic>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(payload) = this.early.take() {
            return Poll::Ready(Err(this.patch.caught(this.target, payload)));
        }
        let future = this
            .future
            .as_mut()
            .expect("a patch future polled after it completed");
        match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(r)) => {
                this.future = None;
                Poll::Ready(Ok(r))
            }
            Err(payload) => {
                this.future = None;
                Poll::Ready(Err(this.patch.caught(this.target, payload)))
            }
        }
    }
}

/// Continues a panic caught in a patch, for generated code that no longer holds the call.
#[doc(hidden)]
pub fn resume_panic(panic: PatchPanic) -> ! {
    resume_unwind(panic.payload)
}

/// What a [`PatchGuard`] and the registry need from a target, whatever its signature.
#[doc(hidden)]
pub trait AnyTarget: Send + Sync {
    fn info(&self) -> &TargetInfo;
    fn status(&self) -> TargetStatus;
    /// Takes the picked patches off the stack, leaving the others as they are. Returns their
    /// ids; an error when none matched.
    fn restore(&self, pick: Pick<'_>) -> Result<Vec<String>, PatchError>;
    /// Changes the live share of the patch with this serial number.
    fn set_share(&self, serial: u64, share: u32) -> Result<(), PatchError>;
    /// Whether plugins may patch it (`#[patchable(plugin)]`).
    fn accepts_plugins(&self) -> bool;
    /// Applies a plugin's export as the patch.
    fn apply_remote(
        &'static self,
        remote: RemoteFn,
        options: PatchOptions,
    ) -> Result<PatchGuard, PatchError>;
}

impl<F: ?Sized + Send + Sync + 'static> AnyTarget for Target<F> {
    fn info(&self) -> &TargetInfo {
        &self.info
    }

    fn status(&self) -> TargetStatus {
        let stack = self.cell.load_full();
        let patches = layers(stack.as_deref())
            .map(|p| PatchStatus {
                id: p.id.clone(),
                source: p.source.clone(),
                applied_at: p.applied_at,
                rollout: p.rollout.describe(p.share.load(Ordering::Relaxed)),
                armed: p.is_armed(),
                hits: p.hits.sum(),
                panics: p.panics.load(Ordering::Relaxed),
                healthy: p.healthy.load(Ordering::Relaxed),
            })
            .collect();
        TargetStatus {
            name: self.info.name,
            signature: self.info.signature,
            patches,
        }
    }

    fn restore(&self, pick: Pick<'_>) -> Result<Vec<String>, PatchError> {
        let _changing = crate::lock::lock(&self.changing);
        let stack = self.cell.load_full();
        let (gone, kept): (Vec<_>, Vec<_>) =
            layers(stack.as_deref()).cloned().partition(|p| match pick {
                Pick::Serial(serial) => p.serial == serial,
                Pick::Id(id) => p.id == id,
                Pick::All => true,
            });
        if gone.is_empty() {
            return Err(PatchError::NotPatched {
                target: self.info.name,
            });
        }
        drop(stack);
        let depth = kept.len();
        // Each patch is freed once no call is inside it (a call holds the stack it entered).
        self.cell.swap(Stack::of(kept).map(Arc::new));
        let ids: Vec<String> = gone.iter().map(|p| p.id.clone()).collect();
        for id in &ids {
            tracing::info!(target: "swapkit::patch", target_fn = self.info.name, patch = %id, depth, "patch restored");
        }
        Ok(ids)
    }

    fn set_share(&self, serial: u64, share: u32) -> Result<(), PatchError> {
        let current = self.layer(serial)?;
        if let Kind::Matching(_) = current.rollout.kind {
            return Err(PatchError::NotAShare {
                target: self.info.name,
                patch: current.id.clone(),
            });
        }
        current.share.store(share.min(BUCKETS), Ordering::Release);
        Ok(())
    }

    fn accepts_plugins(&self) -> bool {
        Target::accepts_plugins(self)
    }

    fn apply_remote(
        &'static self,
        remote: RemoteFn,
        options: PatchOptions,
    ) -> Result<PatchGuard, PatchError> {
        let wrap = self.remote.ok_or(PatchError::NotOpenToPlugins {
            target: self.info.name,
        })?;
        self.apply(wrap(remote), options)
    }
}

/// How a patch is applied.
#[doc(hidden)]
pub struct PatchOptions {
    pub(crate) id: Option<String>,
    pub(crate) rollout: Rollout,
    pub(crate) on_panic: PanicPolicy,
    pub(crate) source: PatchSource,
    pub(crate) armed: Option<Arc<AtomicBool>>,
}

/// A call's hold on the patch stack of a target: no patch of it can be freed until this drops.
#[doc(hidden)]
pub struct PatchCall<F: ?Sized + 'static> {
    target: &'static Target<F>,
    guard: Guard<'static, Stack<F>>,
}

impl<F: ?Sized + 'static> PatchCall<F> {
    /// The patch this call gets: the first of the stack that is armed and whose rollout
    /// admits the current key, unless the original is being called on purpose.
    #[inline]
    pub fn choose(&self) -> Option<Chosen<'_, F>> {
        let me = self.target as *const Target<F> as *const ();
        if BYPASS.try_with(|b| b.get() == me).unwrap_or(false) {
            return None;
        }
        let stack = self.guard.get();
        // The top first, on its own: the usual stack has one patch.
        let patch = if stack.top.admits() {
            &stack.top
        } else {
            stack.below.iter().find(|p| p.admits())?
        };
        Some(Chosen {
            target: self.target,
            patch,
        })
    }
}

/// The patch one call runs, for the generated code.
#[doc(hidden)]
pub struct Chosen<'a, F: ?Sized + 'static> {
    target: &'static Target<F>,
    patch: &'a Arc<Patch<F>>,
}

impl<F: ?Sized + 'static> Chosen<'_, F> {
    /// Calls the replacement. A panic is caught, counted, and returned.
    #[inline]
    pub fn try_call<R>(&self, invoke: impl FnOnce(&F) -> R) -> Result<R, PatchPanic> {
        let p = self.patch;
        p.hits.add_one();
        match catch_unwind(AssertUnwindSafe(|| invoke(&p.replacement))) {
            Ok(r) => Ok(r),
            Err(payload) => Err(self.caught(payload)),
        }
    }

    #[cold]
    fn caught(&self, payload: Box<dyn Any + Send>) -> PatchPanic {
        Patch::caught(self.patch, self.target.info.name, payload)
    }

    /// Calls an async replacement. The returned future holds the patch (not the call's
    /// hazard slot, which cannot cross an `.await`), and reports a panic in the replacement,
    /// while it is made or while it is polled, as its output.
    pub fn call_async<R>(&self, invoke: impl FnOnce(&F) -> BoxFuture<R>) -> PatchFuture<R>
    where
        F: Send + Sync,
    {
        let p = self.patch;
        p.hits.add_one();
        let (future, early) = match catch_unwind(AssertUnwindSafe(|| invoke(&p.replacement))) {
            Ok(f) => (Some(f), None),
            Err(payload) => (None, Some(payload)),
        };
        PatchFuture {
            future,
            early,
            patch: p.clone(),
            target: self.target.info.name,
        }
    }

    /// After a panic in a call that can be made again: returns to run the original under
    /// [`PanicPolicy::Fallback`], or resumes the panic under [`PanicPolicy::Propagate`].
    #[cold]
    pub fn fall_back(&self, panic: PatchPanic) {
        if self.patch.on_panic == PanicPolicy::Propagate {
            resume_unwind(panic.payload)
        }
    }

    /// After a panic in a call that cannot be made again: resumes the panic.
    #[cold]
    pub fn propagate(&self, panic: PatchPanic) -> ! {
        resume_unwind(panic.payload)
    }
}

/// Runs `f` with the patch of `target` bypassed on this thread: calls to the target inside `f`
/// run its original code. This is how a replacement calls the function it replaces.
pub fn call_original<F: ?Sized + 'static, R>(
    target: &'static Target<F>,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore(*const ());
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = BYPASS.try_with(|b| b.set(self.0));
        }
    }
    let me = target as *const Target<F> as *const ();
    let _restore = Restore(BYPASS.with(|b| b.replace(me)));
    f()
}

/// Turns a [`PatchPanic`] into `E` when `E: From<PatchPanic>`, and into nothing otherwise, by
/// method resolution on `&&Wrap<E>` (autoref specialisation). Used by generated code.
#[doc(hidden)]
pub mod convert {
    use super::PatchPanic;
    use std::marker::PhantomData;

    pub struct Wrap<E>(PhantomData<E>);

    impl<E> Wrap<E> {
        pub fn new() -> Self {
            Wrap(PhantomData)
        }
    }

    impl<E> Default for Wrap<E> {
        fn default() -> Self {
            Self::new()
        }
    }

    pub trait ViaFrom<E> {
        fn convert(&self, panic: &mut Option<PatchPanic>) -> Option<E>;
    }

    impl<E: From<PatchPanic>> ViaFrom<E> for &Wrap<E> {
        fn convert(&self, panic: &mut Option<PatchPanic>) -> Option<E> {
            panic.take().map(E::from)
        }
    }

    pub trait NoFrom<E> {
        fn convert(&self, panic: &mut Option<PatchPanic>) -> Option<E>;
    }

    impl<E> NoFrom<E> for Wrap<E> {
        fn convert(&self, _: &mut Option<PatchPanic>) -> Option<E> {
            None
        }
    }
}
