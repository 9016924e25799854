//! A plugin instance on the wasm backend: a bounded pool of wasm instances ("slots").
//!
//! The pool is a [`HomeCells`] (in `swapkit-sync`, where Miri and loom check it), one cell
//! per possible slot. A slot has a home cell and always goes back to it, so returning it is a
//! plain store. A call claims a slot by swapping a cell empty, starting at a cell chosen by its
//! thread, so threads mostly touch different cache lines: one atomic read-modify-write per
//! call, and no shared queue head. Only growing the pool, waiting for a slot, and throwing one
//! away take a lock.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use swapkit_abi::Status;
use swapkit_sync::HomeCells;

use super::slot::{hook, Fault, Hook, PoolMemory, Slot};
use super::{Exhausted, WasmModule};
use crate::backend::host::GuestCtx;
use crate::backend::{host_status, LaneFailure, Reply};
use swapkit_abi::lane::{LaneArgs, LaneResult};

/// A plugin instance on the wasm backend.
pub(crate) struct WasmInstance {
    module: Arc<WasmModule>,
    ctx: Arc<GuestCtx>,
    /// The linear memory of all its slots, against `WasmLimits::max_pool_memory`.
    memory: Arc<PoolMemory>,
    cells: HomeCells<Slot>,
    /// Cells with no slot of their own: where a new slot makes its home.
    vacant: Mutex<Vec<usize>>,
    /// Slots that exist, idle or busy.
    live: AtomicUsize,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    freed: Condvar,
    /// Whether a slot whose hook log lines reach the sink exists. When it traps, the next new
    /// slot takes its place, so the plugin's lifecycle stays visible.
    primary: AtomicBool,
}

thread_local! {
    /// Where this thread starts looking for an idle slot, as a fraction of the pool (a 32-bit
    /// fixed-point number), so that picking a cell is a multiply, not a division. Threads get
    /// well-spread fractions (Fibonacci hashing of a counter).
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
            .slot(ctx.clone(), memory.clone(), false, 0)
            .map_err(|e| (host_status::TRAP, format!("instantiating failed: {e:#}")))?;
        hook(&module, &mut first, Hook::Load)?;
        let cells = HomeCells::new(size);
        cells.put(0, first);
        Ok(WasmInstance {
            module,
            ctx,
            memory,
            cells,
            vacant: Mutex::new((1..size).rev().collect()),
            live: AtomicUsize::new(1),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            freed: Condvar::new(),
            primary: AtomicBool::new(true),
        })
    }

    /// Runs `on_init` in the first slot.
    pub fn init(&self) -> Result<(), (u32, String)> {
        let mut slot = self
            .take_idle()
            .ok_or((host_status::TRAP, "no instance to initialise".to_owned()))?;
        let result = hook(&self.module, &mut slot, Hook::Init);
        if result.is_ok() {
            self.checkin(slot);
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
        let mut slot = match self.checkout() {
            Ok(slot) => slot,
            Err(fault) => return fault.reply(then),
        };
        let deadline = self.module.shared.deadline_ticks;
        match slot.call(deadline, interface, method, input, then) {
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

    /// Calls `method` of `interface` through the plugin's lane; a fault fails the call and
    /// throws the instance away, a result its type cannot hold only fails the call.
    #[inline]
    pub fn lane<A: LaneArgs, R: LaneResult>(
        &self,
        interface: u32,
        method: u32,
        args: A,
    ) -> Result<R, LaneFailure> {
        let mut slot = match self.checkout() {
            Ok(slot) => slot,
            Err(fault) => return Err(LaneFailure::Status(fault.status, fault.message)),
        };
        let deadline = self.module.shared.deadline_ticks;
        match slot.lane(deadline, interface, method, args) {
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

    /// Claims an idle slot, if there is one.
    #[inline]
    fn take_idle(&self) -> Option<Box<Slot>> {
        let start = START.try_with(|s| *s).unwrap_or(0);
        let first = ((start as u64 * self.cells.len() as u64) >> 32) as usize;
        self.cells.take(first).map(|(_, slot)| slot)
    }

    /// An idle slot, a new one, or a wait, by the pool's policy.
    fn checkout(&self) -> Result<Box<Slot>, Fault> {
        if let Some(slot) = self.take_idle() {
            return Ok(slot);
        }
        self.checkout_slow()
    }

    #[cold]
    fn checkout_slow(&self) -> Result<Box<Slot>, Fault> {
        let limits = &self.module.shared.limits;
        let size = self.cells.len();
        let mut deadline: Option<Instant> = None;
        loop {
            if let Some(slot) = self.take_idle() {
                return Ok(slot);
            }
            let live = self.live.load(Ordering::Acquire);
            if live < size {
                if self
                    .live
                    .compare_exchange(live, live + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return self.replica();
                }
                continue;
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
    fn replica(&self) -> Result<Box<Slot>, Fault> {
        let home = crate::lock::lock(&self.vacant)
            .pop()
            .expect("fewer live slots than cells leaves a vacant cell");
        let quiet = self.primary.swap(true, Ordering::AcqRel);
        let made = self
            .module
            .slot(self.ctx.clone(), self.memory.clone(), quiet, home)
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
                self.discard(slot);
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
        Ok(slot)
    }

    /// Puts a slot back in its home cell, which it left empty.
    #[inline]
    fn checkin(&self, slot: Box<Slot>) {
        self.cells.put(slot.home, slot);
        self.wake_waiter();
    }

    /// Wakes one caller waiting for a slot, if any waits.
    #[inline]
    fn wake_waiter(&self) {
        if self.waiters.load(Ordering::Acquire) > 0 {
            let _guard = crate::lock::lock(&self.lock);
            self.freed.notify_one();
        }
    }

    /// Drops a slot that must not be used again, and frees its cell.
    fn discard(&self, slot: Box<Slot>) {
        if !slot.quiet() {
            self.primary.store(false, Ordering::Release);
        }
        let home = slot.home;
        drop(slot);
        self.vacate(home);
    }

    /// Counts a slot gone, gives its cell back, and wakes a waiter, who may now make one.
    fn vacate(&self, home: usize) {
        crate::lock::lock(&self.vacant).push(home);
        self.live.fetch_sub(1, Ordering::AcqRel);
        self.wake_waiter();
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
