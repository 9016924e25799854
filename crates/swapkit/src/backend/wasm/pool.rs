//! A plugin instance on the wasm backend: a bounded pool of wasm instances ("slots").
//!
//! The pool is a [`Places`] (in `swapkit-sync`, where Miri and loom check it), one place per
//! possible slot. After a call, the calling thread **keeps** its slot's place: its next call
//! enters that slot with a store to a flag only it writes and a compiler fence, no atomic
//! read-modify-write and no shared write, as if the slot lived in a thread-local, yet the
//! instance still belongs to the pool, which drops it (running `on_free`) with the plugin. A
//! thread without a place of its own claims an idle slot with one compare-and-swap, starting at
//! a place chosen by its thread, so threads mostly touch different cache lines. When
//! no slot is idle, the pool revokes the kept places nobody is using (one `membarrier`) before
//! it grows, waits or fails, so a kept slot never starves another thread nor makes the pool
//! grow past what its callers use at once; a revoked place waits a while before it is kept
//! again (see `Places`). A call made while the same thread runs the plugin already (a host
//! function calling its plugin back) is refused as re-entrant. Only growing the pool,
//! revoking, waiting for a slot, and throwing one away take a lock.

use std::mem::ManuallyDrop;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use swapkit_abi::Status;
use swapkit_sync::{Held, Miss, Places};

use super::slot::{hook, Computing, Fault, Hook, PoolMemory, Slot};
use super::{Exhausted, WasmModule};
use crate::backend::host::GuestCtx;
use crate::backend::{host_status, LaneFailure, Reply};
use swapkit_abi::lane::{LaneArgs, LaneResult};

/// A plugin instance on the wasm backend.
pub(crate) struct WasmInstance {
    module: Arc<WasmModule>,
    /// The module engine's call budget in epoch ticks, kept here so that a call reads it
    /// without going through the module.
    deadline: u64,
    ctx: Arc<GuestCtx>,
    /// The linear memory of all its slots, against `WasmLimits::max_pool_memory`.
    memory: Arc<PoolMemory>,
    cells: Places<Slot>,
    /// Places with no slot: where a new slot goes.
    vacant: Mutex<Vec<usize>>,
    /// Slots that exist, idle or busy.
    live: AtomicUsize,
    /// Callers waiting for a slot: threads blocked on `freed`, and async calls in `parked`.
    waiters: AtomicUsize,
    lock: Mutex<()>,
    freed: Condvar,
    /// The wakers of async calls waiting for a slot, each counted in `waiters` until it is
    /// taken out and woken.
    parked: Mutex<std::collections::VecDeque<Waker>>,
    /// Whether a slot whose hook log lines reach the sink exists. When it traps, the next new
    /// slot takes its place, so the plugin's lifecycle stays visible.
    primary: AtomicBool,
}

thread_local! {
    /// Where this thread starts looking for an idle slot when it keeps none, as a fraction of
    /// the pool (a 32-bit fixed-point number), so that picking a place is a multiply, not a
    /// division. Consecutive threads get well-spread fractions (Fibonacci hashing of a
    /// counter), so two threads seldom start at the same place and contend for its line.
    static START: u32 = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        (NEXT.fetch_add(1, Ordering::Relaxed) as u32).wrapping_mul(0x9E37_79B9)
    };
}

impl WasmInstance {
    /// Makes the first slot and runs `on_load` in it.
    pub fn load(
        module: Arc<WasmModule>,
        ctx: Arc<GuestCtx>,
    ) -> Result<WasmInstance, (u32, String)> {
        let size = module.shared.limits.pool_size.max(1);
        let memory = module.pool_memory();
        let mut first = module
            .slot(ctx.clone(), memory.clone(), false)
            .map_err(|e| (host_status::TRAP, format!("instantiating failed: {e:#}")))?;
        hook(&module, &mut first, Hook::Load)?;
        let cells = Places::new(size);
        drop(cells.fill(0, first));
        Ok(WasmInstance {
            deadline: module.shared.deadline_ticks,
            module,
            ctx,
            memory,
            cells,
            vacant: Mutex::new((1..size).rev().collect()),
            live: AtomicUsize::new(1),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            freed: Condvar::new(),
            parked: Mutex::new(std::collections::VecDeque::new()),
            primary: AtomicBool::new(true),
        })
    }

    /// Runs `on_init` in the first slot.
    pub fn init(&self) -> Result<(), (u32, String)> {
        let slot = self
            .take_idle()
            .map_err(|_| (host_status::TRAP, "no instance to initialise".to_owned()))?;
        let mut running = Running::new(self, slot);
        let result = hook(&self.module, &mut running, Hook::Init);
        let slot = running.returned();
        if result.is_ok() {
            drop(slot); // idle, for any thread
        } else {
            self.discard(slot);
        }
        result
    }

    /// Calls `method` of `interface`, handing the reply to `then`; a fault arrives as a reply
    /// with a `host_status` code and a message.
    #[inline]
    pub fn call<T>(
        &self,
        interface: u32,
        method: u32,
        input: &[u8],
        then: impl FnOnce(Reply<'_>) -> T,
    ) -> T {
        let slot = match self.take_idle() {
            Ok(slot) => slot,
            Err(miss) => match self.checkout_slow(miss) {
                Ok(slot) => slot,
                Err(fault) => return fault.reply(then),
            },
        };
        let deadline = self.deadline;
        let mut running = Running::new(self, slot);
        let called = running.call(deadline, interface, method, input, then);
        let slot = running.returned();
        match called {
            Ok(t) => {
                self.checkin(slot);
                t
            }
            Err((fault, then)) => {
                // Never reuse an instance that trapped: its memory may be half-written.
                self.discard(slot);
                fault.reply(then)
            }
        }
    }

    /// [`call`](Self::call) for a step of an async call (ABI.md §11), whose future lives in
    /// the memory of the one instance that started it: the step runs in `lease`'s slot if it
    /// holds one, and `then` says (with its result) whether the call must keep the slot,
    /// pending. Kept, the slot leaves the pool's places but stays counted, so the pool never
    /// grows past its size for it: its place waits, empty, for the slot to come back.
    ///
    /// The step runs on a fiber and yields to the executor every second epoch tick (every 2
    /// to 4 ms of computing), so a guest that computes for long does not hold its thread, a
    /// runtime's worker: the step is then `None`, its task is woken, and the lease keeps the
    /// step, which the call's next poll goes on with (here, with the same `then`). At the
    /// first tick after `until` (the call's deadline) it is interrupted, a timeout.
    ///
    /// A call that needs a slot when every one is busy does not block its thread either: by
    /// a `Wait` policy it leaves `waker` to be woken when one comes free and replies
    /// [`host_status::PARKED`].
    #[allow(clippy::too_many_arguments)]
    pub fn call_leased<T>(
        &self,
        lease: &mut Option<Lease>,
        waker: &Waker,
        until: Instant,
        interface: u32,
        method: u32,
        input: &[u8],
        then: impl FnOnce(Reply<'_>) -> (T, bool),
    ) -> Option<T> {
        let (slot, computing) = match lease.take() {
            Some(Lease {
                computing,
                home,
                slot,
            }) => (self.cells.fill(home, *slot), computing),
            None => match self.take_idle() {
                Ok(slot) => (slot, None),
                Err(miss) => match self.checkout_parked(miss, waker) {
                    Ok(slot) => (slot, None),
                    Err(fault) => return Some(fault.reply(|r| then(r).0)),
                },
            },
        };
        let mut running = Running::new(self, slot);
        let (mut step, staged) = match computing {
            Some(step) => step,
            None => {
                // Even past `until` (a drop after the call timed out), a step gets its first
                // slice: the deadline is looked at only at the slice's end.
                // SAFETY: the step is dropped before the slot is used or dropped: at its end
                // below, by the lease that keeps both (`Lease::computing` drops first), or
                // first when unwinding (declared after `running`).
                let started =
                    unsafe { running.compute(self.deadline, until, interface, method, input) };
                match started {
                    Ok(step) => (step, input.len()),
                    Err(fault) => {
                        self.discard(running.returned());
                        return Some(fault.reply(|r| then(r).0));
                    }
                }
            }
        };
        let polled = {
            let _polling = super::stacks::Polling::enter();
            step.as_mut().poll(&mut Context::from_waker(waker))
        };
        let std::task::Poll::Ready(result) = polled else {
            let slot = running.returned();
            let home = slot.index();
            *lease = Some(Lease {
                computing: Some((step, staged)),
                home,
                slot: Box::new(slot.discard()),
            });
            return None;
        };
        drop(step);
        let called = running.computed(result, staged, then);
        let slot = running.returned();
        Some(match called {
            Ok((t, true)) => {
                let home = slot.index();
                *lease = Some(Lease {
                    computing: None,
                    home,
                    slot: Box::new(slot.discard()),
                });
                t
            }
            Ok((t, false)) => {
                self.checkin(slot);
                t
            }
            Err((fault, then)) => {
                self.discard(slot);
                fault.reply(|r| then(r).0)
            }
        })
    }

    /// The limits of the engine this pool's module was compiled by.
    pub fn limits(&self) -> &super::WasmLimits {
        &self.module.shared.limits
    }

    /// Gives back the slot of an async call that ended without a last call into it; one
    /// whose step was left unfinished is thrown away, as after a trap.
    pub fn release(&self, lease: Lease) {
        let Lease {
            computing,
            home,
            slot,
        } = lease;
        if let Some((step, _)) = computing {
            // Unwinds the guest on its fiber, before its store goes.
            drop(step);
            self.forsake(*slot, home);
            return;
        }
        drop(self.cells.fill(home, *slot));
        self.wake_waiter();
    }

    /// Calls `method` of `interface` through the plugin's lane; a fault fails the call and
    /// throws the instance away, a result its type cannot hold only fails the call.
    #[inline]
    pub fn lane<A: LaneArgs, R: LaneResult>(
        &self,
        interface: u32,
        method: u32,
        args: A,
    ) -> Result<R, LaneFailure> {
        let slot = match self.take_idle() {
            Ok(slot) => slot,
            Err(miss) => match self.checkout_slow(miss) {
                Ok(slot) => slot,
                Err(fault) => return Err(LaneFailure::Status(fault.status, fault.message)),
            },
        };
        let deadline = self.deadline;
        let mut running = Running::new(self, slot);
        let called = running.lane(deadline, interface, method, args);
        let slot = running.returned();
        match called {
            Ok(result) => {
                self.checkin(slot);
                result.map_err(LaneFailure::Result)
            }
            Err(fault) => {
                // Never reuse an instance that trapped: its memory may be half-written.
                self.discard(slot);
                Err(LaneFailure::Status(fault.status, fault.message))
            }
        }
    }

    /// This thread's kept slot, or an idle one, if there is one.
    #[inline(always)]
    fn take_idle(&self) -> Result<Held<'_, Slot>, Miss> {
        self.cells.hold(|| {
            let start = START.try_with(|s| *s).unwrap_or(0);
            ((start as u64 * self.cells.len() as u64) >> 32) as usize
        })
    }

    /// When no slot is kept or idle: a slot that turned idle, a new one, or a wait, by the
    /// pool's policy.
    #[cold]
    fn checkout_slow(&self, first: Miss) -> Result<Held<'_, Slot>, Fault> {
        if first == Miss::Nested {
            return Err(self.reentered());
        }
        let limits = &self.module.shared.limits;
        let size = self.cells.len();
        let mut deadline: Option<Instant> = None;
        loop {
            if let Some(slot) = self.checkout_now()? {
                return Ok(slot);
            }
            let wait = match limits.when_exhausted {
                Exhausted::Fail => return Err(self.exhausted(Duration::ZERO)),
                Exhausted::Wait(wait) => wait,
            };
            let until = *deadline.get_or_insert_with(|| Instant::now() + wait);
            let now = Instant::now();
            if now >= until {
                return Err(self.exhausted(wait));
            }
            self.waiters.fetch_add(1, Ordering::AcqRel);
            let guard = crate::lock::lock(&self.lock);
            let idle = self.cells.any_idle();
            if !idle && self.live.load(Ordering::Acquire) >= size {
                // Bounded, so a wake-up lost between the check and the wait costs 10 ms at most.
                let _ = self
                    .freed
                    .wait_timeout(guard, (until - now).min(Duration::from_millis(10)));
            }
            self.waiters.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// [`checkout_slow`](Self::checkout_slow) for an async call: when the pool is full, by a
    /// `Wait` policy, its `waker` is parked to be woken by the next slot that comes free, and
    /// the call replies [`host_status::PARKED`] instead of blocking the thread.
    #[cold]
    fn checkout_parked(&self, first: Miss, waker: &Waker) -> Result<Held<'_, Slot>, Fault> {
        if first == Miss::Nested {
            return Err(self.reentered());
        }
        // A call parked before (and polled again now for any reason) is parked no more: its
        // entry would take a wake-up from a call that still waits.
        self.unpark(waker);
        if let Some(slot) = self.checkout_now()? {
            return Ok(slot);
        }
        if self.module.shared.limits.when_exhausted == Exhausted::Fail {
            return Err(self.exhausted(Duration::ZERO));
        }
        crate::lock::lock(&self.parked).push_back(waker.clone());
        self.waiters.fetch_add(1, Ordering::AcqRel);
        // Counted as a waiter, look once more: a slot given back before the count saw no
        // waiter to wake, and this look sees it (the fence pairs with `wake_waiter`'s), or a
        // slot kept since is revoked.
        fence(Ordering::SeqCst);
        if let Some(slot) = self.checkout_now()? {
            self.unpark(waker);
            return Ok(slot);
        }
        Err(Fault {
            status: host_status::PARKED,
            message: String::new(),
        })
    }

    /// Takes a parked async call's waker out (it got a slot, or was dropped), if it is there.
    pub fn unpark(&self, waker: &Waker) {
        let mut parked = crate::lock::lock(&self.parked);
        if let Some(i) = parked.iter().position(|w| w.will_wake(waker)) {
            parked.remove(i);
            self.waiters.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// A slot now, without waiting: an idle one, a kept one revoked, or a new one while the
    /// pool is under its size.
    fn checkout_now(&self) -> Result<Option<Held<'_, Slot>>, Fault> {
        let size = self.cells.len();
        loop {
            match self.take_idle() {
                Ok(slot) => return Ok(Some(slot)),
                Err(Miss::Nested) => return Err(self.reentered()),
                Err(Miss::Busy) => {}
            }
            // Slots kept by threads that are not calling now (or that exited) come back
            // before the pool grows: a revocation is cheaper than a new instance, and a slot
            // kept by a thread that exited would otherwise hold its memory for nothing.
            if self.cells.revoke() > 0 {
                continue;
            }
            let live = self.live.load(Ordering::Acquire);
            if live >= size {
                return Ok(None);
            }
            if self
                .live
                .compare_exchange(live, live + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return self.replica().map(Some);
            }
        }
    }

    /// The fault of a call made while this thread is running the plugin already, further up
    /// its stack: a host function it called (or a subscriber of its log) calling it again.
    /// Refused, as a dependency cycle is: on top of its own stack the plugin would wait for
    /// itself (a pool of one) or nest another instance (a larger one).
    #[cold]
    fn reentered(&self) -> Fault {
        Fault {
            status: host_status::REENTRANT,
            message: format!(
                "`{}` {} is already running on this thread, further up the stack (a host \
                 function it called calls it again); a plugin may not re-enter itself through \
                 the host: answer from the host function, or call the plugin from another thread",
                self.ctx.plugin, self.ctx.version
            ),
        }
    }

    #[cold]
    fn exhausted(&self, waited: Duration) -> Fault {
        Fault {
            status: host_status::EXHAUSTED,
            message: format!(
                "all {} wasm instances are busy (waited {waited:?}); raise WasmLimits::pool_size \
                 or the wait",
                self.cells.len()
            ),
        }
    }

    /// A new slot for the pool, loaded and initialised. The caller has counted it in `live`.
    #[cold]
    fn replica(&self) -> Result<Held<'_, Slot>, Fault> {
        let home = crate::lock::lock(&self.vacant)
            .pop()
            .expect("fewer live slots than cells leaves a vacant cell");
        let quiet = self.primary.swap(true, Ordering::AcqRel);
        let made = self
            .module
            .slot(self.ctx.clone(), self.memory.clone(), quiet)
            .map_err(|e| Fault {
                status: host_status::TRAP,
                message: format!("instantiating a pool instance failed: {e:#}"),
            });
        let mut slot = match made {
            Ok(slot) => slot,
            Err(fault) => {
                if !quiet {
                    self.primary.store(false, Ordering::Release);
                }
                self.vacate(home);
                return Err(fault);
            }
        };
        for which in [Hook::Load, Hook::Init] {
            if let Err((status, message)) = hook(&self.module, &mut slot, which) {
                self.forsake(slot, home);
                return Err(Fault {
                    status: if status == Status::Ok as u32 {
                        host_status::TRAP
                    } else {
                        status
                    },
                    message: format!("a new pool instance failed its hook: {message}"),
                });
            }
        }
        Ok(self.cells.fill(home, slot))
    }

    /// Gives a slot back after a call: this thread keeps it for its next call, unless callers
    /// are waiting for a slot, when it goes to them.
    #[inline(always)]
    fn checkin(&self, slot: Held<'_, Slot>) {
        if self.waiters.load(Ordering::Acquire) == 0 {
            slot.keep();
        } else {
            drop(slot);
            self.wake_waiter();
        }
    }

    /// Wakes one caller waiting for a slot, if any waits: a parked async call first (its task
    /// polls it again), else a blocked thread.
    #[inline]
    fn wake_waiter(&self) {
        // Pairs with the fence of `checkout_parked`: either this load sees its count, or its
        // look sees the slot given back before this.
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Acquire) > 0 {
            let parked = crate::lock::lock(&self.parked).pop_front();
            match parked {
                Some(waker) => {
                    self.waiters.fetch_sub(1, Ordering::AcqRel);
                    waker.wake();
                }
                None => {
                    let _guard = crate::lock::lock(&self.lock);
                    self.freed.notify_one();
                }
            }
        }
    }

    /// Drops a pooled slot that must not be used again, and frees its place.
    fn discard(&self, slot: Held<'_, Slot>) {
        let home = slot.index();
        self.forsake(slot.discard(), home);
    }

    /// Drops a slot that must not be used again, made for place `home`, and frees the place.
    fn forsake(&self, slot: Slot, home: usize) {
        if !slot.quiet() {
            self.primary.store(false, Ordering::Release);
        }
        drop(slot);
        self.vacate(home);
    }

    /// Counts a slot gone, gives its place back, and wakes a waiter, who may now make one.
    fn vacate(&self, home: usize) {
        crate::lock::lock(&self.vacant).push(home);
        self.live.fetch_sub(1, Ordering::AcqRel);
        self.wake_waiter();
    }
}

/// The slot an async call holds while it is pending, out of its place `home`.
pub(crate) struct Lease {
    /// The step left unfinished at an epoch yield, and the bytes of input it staged. It
    /// borrows the slot's store: declared first, it drops first.
    computing: Option<(Computing, usize)>,
    home: usize,
    /// Boxed: a slot is large, and a pending native call carries a lease too.
    slot: Box<Slot>,
}

/// A slot while wasm runs in it. If the call does not come back normally (a panic of the host
/// unwound through the guest, from a host function, the limiter or a subscriber), the guest
/// stopped halfway and its memory may be half-written: the slot is thrown away, never handed
/// to the next caller.
struct Running<'a> {
    pool: &'a WasmInstance,
    slot: ManuallyDrop<Held<'a, Slot>>,
}

impl<'a> Running<'a> {
    #[inline(always)]
    fn new(pool: &'a WasmInstance, slot: Held<'a, Slot>) -> Running<'a> {
        Running {
            pool,
            slot: ManuallyDrop::new(slot),
        }
    }

    /// The call came back: the slot, for the pool to keep or give back.
    #[inline(always)]
    fn returned(self) -> Held<'a, Slot> {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so the slot is taken out exactly once.
        unsafe { ManuallyDrop::take(&mut this.slot) }
    }
}

impl std::ops::Deref for Running<'_> {
    type Target = Slot;
    #[inline(always)]
    fn deref(&self) -> &Slot {
        &self.slot
    }
}

impl std::ops::DerefMut for Running<'_> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Slot {
        &mut self.slot
    }
}

impl Drop for Running<'_> {
    /// Only reached by unwinding: `returned` forgets the guard on every other path.
    #[cold]
    fn drop(&mut self) {
        // SAFETY: dropped once, and the slot is not used again.
        let slot = unsafe { ManuallyDrop::take(&mut self.slot) };
        self.pool.discard(slot);
    }
}

impl Drop for WasmInstance {
    fn drop(&mut self) {
        // Every caller holds the instance for the length of its call, so all slots are idle.
        for mut slot in self.cells.drain() {
            if let Err((status, message)) = hook(&self.module, &mut slot, Hook::Free) {
                tracing::error!(plugin = %self.ctx.plugin, version = %self.ctx.version, status, error = %message, "on_free failed");
            }
        }
    }
}
