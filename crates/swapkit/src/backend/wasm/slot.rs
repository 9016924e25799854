//! One wasm instance and its store: the host functions it imports, its resource limiter,
//! and the calls into its entry points.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use swapkit_abi::lane::{LaneArgs, LaneError, LaneResult, WasmMemory, WasmStage};
use swapkit_abi::Status;
use wasmtime::{
    Caller, Extern, Memory, ResourceLimiter, Store, StoreContextMut, Trap, TypedFunc,
    UpdateDeadline,
};

use super::WasmModule;
use crate::backend::host::{emit, GuestCtx, MAX_LINE};
use crate::backend::{host_status, Reply};

/// What a store carries: the limiter, where log lines go, and the last panic message.
pub(super) struct SlotData {
    pub(super) limiter: Limiter,
    pub(super) ctx: Arc<GuestCtx>,
    /// A replica: its hook log lines go to `tracing` only.
    pub(super) quiet: bool,
    pub(super) panic: Option<String>,
    /// The last `swapkit.service` reply, until `swapkit.reply` copies it out.
    pub(super) reply: Vec<u8>,
    /// The last request went past the nesting bounds: `swapkit.reply` traps instead.
    pub(super) nesting: bool,
    /// While an async call's step runs on a fiber ([`Slot::compute`]): when it stops being
    /// let go on. Until then, each epoch tick it reaches yields to the executor; after, or
    /// outside a step, a tick interrupts it (see [`on_epoch`]).
    pub(super) yield_until: Option<Instant>,
}

/// The epoch ticks a step runs through before it yields: two, so that it computes for 2 to
/// 4 ms each time (with one, a step that had just begun would yield at the tick it met,
/// and a call that completes in nanoseconds would now and then take a trip through the
/// executor).
pub(super) const SLICE: u64 = 2;

/// What a store does when wasm reaches its epoch deadline: an async call's step yields to
/// the executor and goes on a tick later, until its call's deadline; any other entry point
/// (and a step past that deadline) is interrupted, a [`CallError::Timeout`].
///
/// [`CallError::Timeout`]: crate::CallError::Timeout
pub(super) fn on_epoch(ctx: StoreContextMut<'_, SlotData>) -> wasmtime::Result<UpdateDeadline> {
    Ok(match ctx.data().yield_until {
        Some(until) if Instant::now() < until => UpdateDeadline::Yield(SLICE),
        _ => UpdateDeadline::Interrupt,
    })
}

/// An async call's step in the guest, running on a fiber of its store: it may stop at an
/// epoch tick (pending, its task woken) and go on at a later poll, on any thread. It borrows
/// its slot's store (see [`Slot::compute`]), so it is dropped before the slot; dropped
/// unfinished, it unwinds the guest, whose instance is then thrown away.
pub(super) type Computing =
    std::pin::Pin<Box<dyn std::future::Future<Output = wasmtime::Result<u32>> + Send>>;

/// The linear memory all instances of one pool hold together, against its cap.
#[derive(Debug)]
pub(crate) struct PoolMemory {
    pub(super) used: AtomicUsize,
    pub(super) cap: usize,
}

impl PoolMemory {
    pub(crate) fn new(cap: usize) -> Arc<PoolMemory> {
        Arc::new(PoolMemory {
            used: AtomicUsize::new(0),
            cap,
        })
    }

    /// Counts `more` bytes if the sum stays within the cap; else the sum seen, uncounted.
    pub(super) fn reserve(&self, more: usize) -> Result<(), usize> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(more).filter(|&sum| sum <= self.cap)
            })
            .map(drop)
    }
}

/// The per-store resource caps, and this store's share of its pool's memory; remembers which
/// cap the current call hit.
pub(super) struct Limiter {
    pub(super) memory: usize,
    pub(super) table_elements: usize,
    pub(super) instances: usize,
    pub(super) tables: usize,
    pub(super) memories: usize,
    pub(super) pool: Arc<PoolMemory>,
    /// Bytes of the pool's memory this store holds.
    pub(super) held: usize,
    /// The last growth granted, taken back if wasmtime then fails to grow.
    pub(super) pending: usize,
    /// What the current entry point was refused, if anything; cleared as each one starts.
    pub(super) hit: Option<String>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit = Some(format!(
                "linear memory would grow to {desired} bytes, past the limit of {} bytes per \
                 instance (WasmLimits::max_memory)",
                self.memory
            ));
            return Ok(false);
        }
        let more = desired.saturating_sub(current);
        // Checked before it is counted: a growth that is refused never shows in the sum, so
        // it cannot make another instance's growth that fits look past the cap.
        if let Err(before) = self.pool.reserve(more) {
            self.hit = Some(format!(
                "the plugin's wasm instances would hold {} bytes of linear memory together, \
                 past the limit of {} bytes per plugin (WasmLimits::max_pool_memory)",
                before.saturating_add(more),
                self.pool.cap
            ));
            return Ok(false);
        }
        self.held += more;
        self.pending = more;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        let more = std::mem::take(&mut self.pending);
        self.held -= more;
        self.pool.used.fetch_sub(more, Ordering::AcqRel);
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.hit = Some(format!(
                "a table would grow to {desired} elements, past the limit of {}",
                self.table_elements
            ));
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.tables
    }

    fn memories(&self) -> usize {
        self.memories
    }
}

impl Drop for Limiter {
    /// The store, and with it its memory, is going: its share goes back to the pool.
    fn drop(&mut self) {
        self.pool.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

/// The trap a `service` call raises in a wasm caller whose request went past the nesting
/// bounds, so that the chain of guests unwinds to the host's call.
#[derive(Debug)]
pub(super) struct NestingTrap(pub(super) String);

impl std::fmt::Display for NestingTrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NestingTrap {}

/// The first `shown` bytes of `ptr..ptr + len` as text, if the whole range lies inside the
/// guest's memory.
fn guest_bytes(
    caller: &mut Caller<'_, SlotData>,
    ptr: u32,
    len: u32,
    shown: u32,
) -> Option<String> {
    guest_prefix(caller, ptr, len, shown).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn guest_slice(caller: &mut Caller<'_, SlotData>, ptr: u32, len: u32) -> Option<Vec<u8>> {
    guest_prefix(caller, ptr, len, len)
}

/// A copy of the first `shown` bytes of `ptr..ptr + len`, if the whole range lies inside the
/// guest's memory: the range is checked whole, and only the prefix is copied.
fn guest_prefix(
    caller: &mut Caller<'_, SlotData>,
    ptr: u32,
    len: u32,
    shown: u32,
) -> Option<Vec<u8>> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return None;
    };
    let data = memory.data(&*caller);
    let start = ptr as usize;
    data.get(start..start.checked_add(len as usize)?)?;
    Some(data[start..start + shown.min(len) as usize].to_vec())
}

/// `swapkit.service(op, ptr, len) -> status << 32 | reply length`: runs a host service (see
/// `backend/host/services.rs`) and keeps the reply for `swapkit.reply`.
///
/// A request past the nesting bounds traps the caller when it fetches the reply, which the
/// guest SDK always does: a host function that can fail costs a few percent of every service
/// call in wasmtime's wrapper, `reply` already can. A guest that skips `reply` only keeps
/// running with a refusal; the bound holds either way.
pub(super) fn host_service(mut caller: Caller<'_, SlotData>, op: u32, ptr: u32, len: u32) -> u64 {
    let (status, reply, nesting) = match guest_slice(&mut caller, ptr, len) {
        Some(input) => {
            let ctx = caller.data().ctx.clone();
            let served = crate::backend::host::serve_contained(&ctx, op, &input);
            (served.status, served.bytes, served.nesting)
        }
        None => (
            Status::ServiceFailed,
            b"the request lies outside linear memory".to_vec(),
            false,
        ),
    };
    let len = reply.len() as u64;
    let data = caller.data_mut();
    data.reply = reply;
    data.nesting = nesting;
    ((status as u64) << 32) | len
}

/// `swapkit.reply(ptr)`: copies the pending service reply to `ptr`, or traps if the request
/// went past the nesting bounds.
pub(super) fn host_reply(mut caller: Caller<'_, SlotData>, ptr: u32) -> wasmtime::Result<()> {
    let data = caller.data_mut();
    let reply = std::mem::take(&mut data.reply);
    if std::mem::take(&mut data.nesting) {
        let message = String::from_utf8_lossy(&reply).into_owned();
        return Err(wasmtime::Error::new(NestingTrap(message)));
    }
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Err(wasmtime::Error::msg("the plugin exports no memory"));
    };
    memory
        .write(&mut caller, ptr as usize, &reply)
        .map_err(|_| wasmtime::Error::msg("the reply buffer lies outside linear memory"))
}

/// `swapkit.log(level, ptr, len)`.
pub(super) fn host_log(mut caller: Caller<'_, SlotData>, level: u32, ptr: u32, len: u32) {
    // Only the first MAX_LINE bytes are copied out, however long the line the guest wrote.
    let shown = len.min(MAX_LINE as u32);
    let Some(message) = guest_bytes(&mut caller, ptr, len, shown) else {
        return;
    };
    let cut = (len - shown) as usize;
    let data = caller.data();
    // A panicking subscriber must not unwind into the guest: it would abort the call halfway
    // through, in an instance the pool could then hand to the next caller.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if data.quiet {
            tracing::debug!(target: "swapkit::guest", plugin = %data.ctx.plugin, version = %data.ctx.version, replica = true, cut, "{message}");
        } else {
            emit(&data.ctx, level, &message, cut);
        }
    }));
}

/// `swapkit.panic(ptr, len)`: the guest's panic hook reports the message before it traps.
pub(super) fn host_panic(mut caller: Caller<'_, SlotData>, ptr: u32, len: u32) {
    let message = guest_bytes(&mut caller, ptr, len, len).unwrap_or_else(|| "<unreadable>".into());
    caller.data_mut().panic = Some(message);
}

/// Where one instance's linear memory lies in the host, as last seen.
///
/// Asking wasmtime for the memory's bytes walks from the store to the instance to its memory
/// definition, about 5 ns each time, twice a call. The view skips that walk on the call path,
/// and is sound because:
/// - the engine sets `memory_may_move(false)`, so the base never changes while the store lives;
/// - wasm memory only grows, so a length seen once stays in bounds; an address past it makes
///   the view look again;
/// - the view is read only while no wasm runs in the store, by the slot's one owner.
pub(super) struct View {
    base: *mut u8,
    len: usize,
}

// SAFETY: the pointer is into the memory of the store in the same slot, which moves between
// threads with it, and is only used by the thread that holds the slot.
unsafe impl Send for View {}

impl View {
    pub(super) fn of(memory: &Memory, store: &Store<SlotData>) -> View {
        View {
            base: memory.data_ptr(store),
            len: memory.data_size(store),
        }
    }
}

/// One wasm instance and its store.
pub(super) struct Slot {
    pub(super) store: Store<SlotData>,
    pub(super) view: View,
    pub(super) f: Funcs,
    pub(super) in_ptr: u32,
    pub(super) in_cap: u32,
    /// [`TICKS`](super::TICKS) when the store's deadline was last set, or [`NOT_ARMED`].
    pub(super) armed: u64,
}

/// A slot whose deadline was not set by [`Slot::arm`] yet.
pub(super) const NOT_ARMED: u64 = u64::MAX;

/// The entry points and memory of one wasm instance.
pub(super) struct Funcs {
    pub(super) memory: Memory,
    pub(super) abi: TypedFunc<(), u32>,
    pub(super) manifest: TypedFunc<(), u32>,
    pub(super) load: TypedFunc<(), u32>,
    pub(super) init: TypedFunc<(), u32>,
    pub(super) free: TypedFunc<(), u32>,
    pub(super) input: TypedFunc<u32, u32>,
    pub(super) call: TypedFunc<(u32, u32, u32), u32>,
    /// `call` again, boxed: a computing step borrows it, and the slot moves meanwhile.
    pub(super) fiber_call: Box<TypedFunc<(u32, u32, u32), u32>>,
    /// `swapkit_lanes`, if the plugin has lanes.
    pub(super) lanes: Option<TypedFunc<(), u32>>,
    /// `swapkit_lane`, if the plugin has lanes.
    pub(super) lane: Option<TypedFunc<LaneParams, u64>>,
    pub(super) out_slot: u32,
}

/// `swapkit_lane`'s parameters: interface, method, and the argument words.
pub(super) type LaneParams = (u32, u32, u64, u64, u64, u64, u64, u64);

/// Stages a lane's borrowed arguments in the guest's input buffer, one after another, each at
/// its alignment.
struct Stager<'a> {
    slot: &'a mut Slot,
    /// Bytes of the buffer used.
    used: u32,
}

impl WasmStage for Stager<'_> {
    #[inline]
    fn stage(&mut self, bytes: &[u8], align: usize) -> Option<u32> {
        let start = self.slot.in_ptr.checked_add(self.used)?;
        let at = start.checked_next_multiple_of(align as u32)?;
        let len = u32::try_from(bytes.len()).ok()?;
        let end = at.checked_add(len)?;
        if end > self.slot.in_ptr.checked_add(self.slot.in_cap)?
            || !self.slot.covers(at as usize, bytes.len())
        {
            return None;
        }
        // SAFETY: in bounds (`covers`); the memory does not move (see `View`), no wasm runs
        // in this store now, and `bytes` is host memory, so the two do not overlap.
        unsafe { copy_small(bytes, self.slot.view.base.add(at as usize)) };
        self.used = end - self.slot.in_ptr;
        Some(at)
    }
}

/// Copies `bytes` to `to`, without a call into `memcpy` for the short strings and small
/// structs lanes mostly pass: up to 16 bytes move as two overlapping loads and stores.
///
/// # Safety
///
/// `to` must be valid for `bytes.len()` writes and not overlap `bytes`.
#[inline(always)]
unsafe fn copy_small(bytes: &[u8], to: *mut u8) {
    let (from, n) = (bytes.as_ptr(), bytes.len());
    // SAFETY: in each arm every read lies in `bytes` and every write in `to[..n]` (the
    // caller's contract): the first copy starts at 0 and the last ends at `n`, and between
    // them they cover all `n` bytes.
    unsafe {
        match n {
            0 => {}
            1..=3 => {
                *to = *from;
                *to.add(n / 2) = *from.add(n / 2);
                *to.add(n - 1) = *from.add(n - 1);
            }
            4..=7 => copy_ends::<u32>(from, to, n),
            8..=16 => copy_ends::<u64>(from, to, n),
            _ => std::ptr::copy_nonoverlapping(from, to, n),
        }
    }
}

/// Copies `n` bytes as two words of type `W`, the first at the start and the second ending
/// at `n` (they overlap when `n` is less than two words).
///
/// # Safety
///
/// `size_of::<W>() <= n <= 2 * size_of::<W>()`, `from` valid for `n` reads, `to` for `n`
/// writes, not overlapping.
#[inline(always)]
unsafe fn copy_ends<W: Copy>(from: *const u8, to: *mut u8, n: usize) {
    let last = n - std::mem::size_of::<W>();
    // SAFETY: both words lie in `[0, n)` of each side (the caller's contract).
    unsafe {
        to.cast::<W>()
            .write_unaligned(from.cast::<W>().read_unaligned());
        to.add(last)
            .cast::<W>()
            .write_unaligned(from.add(last).cast::<W>().read_unaligned());
    }
}

impl WasmMemory for Slot {
    #[inline]
    fn read(&mut self, ptr: u32, len: u32) -> Option<&[u8]> {
        self.bytes(ptr as usize, len as usize)
    }
}

/// Why a wasm entry point failed: its instance must be thrown away.
#[derive(Debug)]
pub(crate) struct Fault {
    /// A `host_status` code, or [`Status::Panic`].
    pub status: u32,
    pub message: String,
}

impl Fault {
    /// Hands the fault to a reply handler, as a reply with its status and message.
    #[cold]
    pub(super) fn reply<T>(self, then: impl FnOnce(Reply<'_>) -> T) -> T {
        then(Reply {
            status: self.status,
            bytes: self.message.as_bytes(),
        })
    }
}

impl Slot {
    /// Gives the next entry point `deadline` epoch ticks, unless no tick passed since the
    /// deadline was last set (see [`TICKS`](super::TICKS)).
    #[inline(always)]
    fn arm(&mut self, deadline: u64) {
        let now = super::TICKS.load(Ordering::Relaxed);
        if now != self.armed {
            self.store.set_epoch_deadline(deadline);
            self.armed = now;
        }
    }

    /// Whether its hook log lines stay out of the sink (a replica).
    pub(super) fn quiet(&self) -> bool {
        self.store.data().quiet
    }

    /// Calls `method` of `interface` with `input`. On a fault, `then` comes back unused.
    #[inline]
    pub(super) fn call<T, F: FnOnce(Reply<'_>) -> T>(
        &mut self,
        deadline: u64,
        interface: u32,
        method: u32,
        input: &[u8],
        then: F,
    ) -> Result<T, (Fault, F)> {
        if let Err(fault) = self.write_input(deadline, input) {
            return Err((fault, then));
        }
        let len = input.len() as u32;
        let result = self.run(
            deadline,
            |f, store| f.call.call(store, (interface, method, len)),
            then,
        );
        // After `then`, which may read a reply the guest left in its input buffer.
        self.clear_input(input.len());
        result
    }

    /// Zeroes the first `len` bytes of the guest's input buffer, where the host staged a
    /// call's arguments, so that the next caller to use this instance cannot read them there.
    /// What the guest copied elsewhere is the plugin's own business: the plugin, not the
    /// caller, is the unit of isolation (see the sandbox docs).
    #[inline]
    fn clear_input(&mut self, len: usize) {
        /// Zeroes for short arguments, copied as `copy_small` copies: no call into `memset`.
        static ZEROES: [u8; 16] = [0; 16];
        let at = self.in_ptr as usize;
        if len != 0 && self.covers(at, len) {
            // SAFETY: in bounds (`covers`), the memory does not move (see `View`), and no
            // wasm runs in this store now; `ZEROES` is host memory, so the two do not overlap.
            unsafe {
                let to = self.view.base.add(at);
                match ZEROES.get(..len) {
                    Some(zeroes) => copy_small(zeroes, to),
                    None => std::ptr::write_bytes(to, 0, len),
                }
            }
        }
    }

    /// Calls `method` of `interface` through the plugin's `swapkit_lane`: stages the
    /// arguments, calls, and reads the result, refusing one its type cannot hold.
    #[inline]
    pub(super) fn lane<A: LaneArgs, R: LaneResult>(
        &mut self,
        deadline: u64,
        interface: u32,
        method: u32,
        args: A,
    ) -> Result<Result<R, LaneError>, Fault> {
        if self.f.lane.is_none() {
            return Err(self.broken("the plugin has no lane export"));
        }
        let need = args.wasm_bytes();
        if need > self.in_cap as usize {
            self.reserve_input(deadline, need)?;
        }
        let mut stager = Stager {
            slot: self,
            used: 0,
        };
        let Some(w) = args.to_wasm(&mut stager) else {
            return Err(self.broken("the lane's arguments do not fit the input buffer"));
        };
        let staged = stager.used;
        self.arm(deadline);
        self.store.data_mut().limiter.hit = None;
        let params = (interface, method, w[0], w[1], w[2], w[3], w[4], w[5]);
        // Borrowed, not cloned: a `TypedFunc` clone counts a reference to its type, a shared
        // counter every thread would write.
        let called = match &self.f.lane {
            Some(lane) => lane.call(&mut self.store, params),
            None => unreachable!("checked above"),
        };
        match called {
            Ok(word) => {
                let result = R::from_wasm(word, self);
                // After the result is read: it may lie in the input buffer.
                self.clear_input(staged as usize);
                Ok(result)
            }
            Err(e) => Err(self.fault(e)),
        }
    }

    /// The method hashes the plugin's `swapkit_lanes` lists (none without the export), at most
    /// `max` of them.
    pub(super) fn lane_hashes(&mut self, deadline: u64, max: u64) -> Result<Vec<u64>, String> {
        let Some(lanes) = self.f.lanes.clone() else {
            return Ok(vec![]);
        };
        self.arm(deadline);
        let at = lanes
            .call(&mut self.store, ())
            .map_err(|e| format!("swapkit_lanes trapped: {e}"))? as usize;
        let word = |slot: &mut Slot, i: usize| {
            let bytes = slot.bytes(at.checked_add(i.checked_mul(8)?)?, 8)?;
            Some(u64::from_le_bytes(bytes.try_into().ok()?))
        };
        let outside = || "the lane table lies outside linear memory".to_owned();
        let count = word(self, 0).ok_or_else(outside)?;
        if count > max {
            return Err(format!(
                "the lane table claims {count} lanes, more than the {max} methods the manifest \
                 declares"
            ));
        }
        (1..=count as usize)
            .map(|i| word(self, i).ok_or_else(outside))
            .collect()
    }

    pub(super) fn abi_version(&mut self) -> wasmtime::Result<u32> {
        self.f.abi.call(&mut self.store, ())
    }

    /// Runs one entry point under the call deadline, then hands its reply (status and the
    /// bytes of the result slot) to `then`. On a fault, `then` comes back unused.
    #[inline]
    pub(super) fn run<T, F: FnOnce(Reply<'_>) -> T>(
        &mut self,
        deadline: u64,
        entry: impl FnOnce(&Funcs, &mut Store<SlotData>) -> wasmtime::Result<u32>,
        then: F,
    ) -> Result<T, (Fault, F)> {
        self.arm(deadline);
        self.store.data_mut().limiter.hit = None;
        let result = entry(&self.f, &mut self.store);
        self.read_reply(result, then)
    }

    /// Hands an entry point's reply to `then`; on a fault, `then` comes back unused.
    #[inline]
    fn read_reply<T, F: FnOnce(Reply<'_>) -> T>(
        &mut self,
        result: wasmtime::Result<u32>,
        then: F,
    ) -> Result<T, (Fault, F)> {
        match result {
            Ok(status) => {
                let Some(raw) = self.bytes(self.f.out_slot as usize, 8) else {
                    return Err((
                        self.broken("the result slot lies outside linear memory"),
                        then,
                    ));
                };
                let ptr = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
                let len = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]) as usize;
                match self.bytes(ptr, len) {
                    Some(bytes) => Ok(then(Reply { status, bytes })),
                    None => Err((self.broken("the result lies outside linear memory"), then)),
                }
            }
            Err(e) => Err((self.fault(e), then)),
        }
    }

    /// Starts `method` of `interface` with `input` as a step of an async call: the guest
    /// runs on a fiber, yields to the executor at the end of each slice ([`SLICE`] epoch
    /// ticks) that ends before `until`, and is interrupted at the first that ends after it.
    /// `deadline` bounds staging the input.
    ///
    /// # Safety
    ///
    /// The step borrows the store for as long as it lives: the caller drops it (or sees it
    /// complete, then calls [`computed`](Self::computed)) before it uses or drops this slot
    /// again. It may move the slot meanwhile: the step holds the store's own allocation
    /// (wasmtime keeps a store's state behind a pointer) and the boxed `fiber_call`, neither
    /// of which moves with it.
    pub(super) unsafe fn compute(
        &mut self,
        deadline: u64,
        until: Instant,
        interface: u32,
        method: u32,
        input: &[u8],
    ) -> Result<Computing, Fault> {
        self.write_input(deadline, input)?;
        let data = self.store.data_mut();
        data.limiter.hit = None;
        data.yield_until = Some(until);
        // The first slice's end yields, or interrupts; the next plain call sets its own
        // deadline.
        self.store.set_epoch_deadline(SLICE);
        self.armed = NOT_ARMED;
        let params = (interface, method, input.len() as u32);
        // SAFETY: both borrows outlive the step, which the caller drops first (the function's
        // contract): the store's state is a heap allocation of its own that moving the
        // `Store` does not move (`StoreContextMut` points at it, not at the `Store`), and
        // `fiber_call` is boxed.
        let (func, store) = unsafe {
            (
                &*(&*self.f.fiber_call as *const TypedFunc<(u32, u32, u32), u32>),
                std::mem::transmute::<
                    StoreContextMut<'_, SlotData>,
                    StoreContextMut<'static, SlotData>,
                >(wasmtime::AsContextMut::as_context_mut(&mut self.store)),
            )
        };
        Ok(Box::pin(func.call_async(store, params)))
    }

    /// The end of a step [`compute`](Self::compute) started with `staged` bytes of input:
    /// its reply to `then`, or its fault, with `then` back unused.
    pub(super) fn computed<T, F: FnOnce(Reply<'_>) -> T>(
        &mut self,
        result: wasmtime::Result<u32>,
        staged: usize,
        then: F,
    ) -> Result<T, (Fault, F)> {
        self.store.data_mut().yield_until = None;
        let reply = self.read_reply(result, then);
        // After `then`, which may read a reply the guest left in its input buffer.
        self.clear_input(staged);
        reply
    }

    #[cold]
    fn broken(&self, what: &str) -> Fault {
        Fault {
            status: host_status::TRAP,
            message: what.to_owned(),
        }
    }

    /// Classifies a failed entry point. A refused growth earlier in the same call explains
    /// an `unreachable` trap (how a Rust guest aborts when allocation fails); any other trap
    /// is reported as itself, with the refusal noted.
    #[cold]
    fn fault(&mut self, e: wasmtime::Error) -> Fault {
        let data = self.store.data_mut();
        if let Some(message) = data.panic.take() {
            return Fault {
                status: Status::Panic as u32,
                message,
            };
        }
        if let Some(nesting) = e.downcast_ref::<NestingTrap>() {
            return Fault {
                status: host_status::NESTING,
                message: nesting.0.clone(),
            };
        }
        let hit = data.limiter.hit.take();
        let trap = e.downcast_ref::<Trap>();
        if let (Some(message), Some(Trap::UnreachableCodeReached) | None) = (&hit, trap) {
            return Fault {
                status: host_status::MEMORY,
                message: message.clone(),
            };
        }
        let noted = |message: String| match &hit {
            Some(refused) => format!("{message} (earlier in this call: {refused})"),
            None => message,
        };
        match trap {
            Some(Trap::Interrupt) => Fault {
                status: host_status::TIMEOUT,
                message: "the call ran past its CPU-time limit and was interrupted".into(),
            },
            Some(trap) => Fault {
                status: host_status::TRAP,
                message: noted(trap.to_string()),
            },
            None => Fault {
                status: host_status::TRAP,
                message: noted(format!("{e:#}")),
            },
        }
    }

    /// Makes sure the guest's input buffer holds at least `len` bytes.
    #[inline]
    fn reserve_input(&mut self, deadline: u64, len: usize) -> Result<(), Fault> {
        let Ok(len) = u32::try_from(len) else {
            return Err(self.broken("the arguments are larger than a wasm memory"));
        };
        if len > self.in_cap || self.in_cap == 0 {
            self.arm(deadline);
            self.store.data_mut().limiter.hit = None;
            let want = len.max(256);
            match self.f.input.call(&mut self.store, want) {
                Ok(ptr) => {
                    self.in_ptr = ptr;
                    self.in_cap = want;
                }
                Err(e) => return Err(self.fault(e)),
            }
        }
        Ok(())
    }

    /// Copies the arguments into the guest's input buffer.
    #[inline]
    fn write_input(&mut self, deadline: u64, input: &[u8]) -> Result<(), Fault> {
        self.reserve_input(deadline, input.len())?;
        let at = self.in_ptr as usize;
        if !self.covers(at, input.len()) {
            return Err(self.broken("the input buffer lies outside linear memory"));
        }
        if !input.is_empty() {
            // SAFETY: `covers` checked the range against the memory's length, the memory does
            // not move (see `View`), no wasm runs in this store now, and `input` is host
            // memory, so the two do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(input.as_ptr(), self.view.base.add(at), input.len())
            };
        }
        Ok(())
    }

    /// Whether `len` bytes at guest address `at` lie in linear memory, looking at its length
    /// again if the view's is too short (the guest may have grown it).
    #[inline]
    fn covers(&mut self, at: usize, len: usize) -> bool {
        let Some(end) = at.checked_add(len) else {
            return false;
        };
        if end <= self.view.len {
            return true;
        }
        self.view = View::of(&self.f.memory, &self.store);
        end <= self.view.len
    }

    /// The `len` bytes at guest address `at`, if they lie in linear memory.
    #[inline]
    fn bytes(&mut self, at: usize, len: usize) -> Option<&[u8]> {
        if !self.covers(at, len) {
            return None;
        }
        if len == 0 {
            return Some(&[]);
        }
        // SAFETY: in bounds (`covers`), and the memory neither moves nor changes while the
        // slice lives: it borrows the slot, so no wasm can run in its store.
        Some(unsafe { std::slice::from_raw_parts(self.view.base.add(at), len) })
    }
}

/// A lifecycle entry point.
#[derive(Clone, Copy)]
pub(super) enum Hook {
    Load,
    Init,
    Free,
}

/// Runs a lifecycle entry point; an error is `(status, message)`.
pub(super) fn hook(module: &WasmModule, slot: &mut Slot, which: Hook) -> Result<(), (u32, String)> {
    let deadline = module.shared.deadline_ticks;
    let reply = slot.run(
        deadline,
        |f, store| {
            let entry = match which {
                Hook::Load => &f.load,
                Hook::Init => &f.init,
                Hook::Free => &f.free,
            };
            entry.call(store, ())
        },
        |reply| {
            (
                reply.status,
                String::from_utf8_lossy(reply.bytes).into_owned(),
            )
        },
    );
    match reply {
        Ok((status, _)) if status == Status::Ok as u32 => Ok(()),
        Ok(failed) => Err(failed),
        Err((fault, _)) => Err((fault.status, fault.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::{Limiter, PoolMemory};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use wasmtime::ResourceLimiter;

    fn limiter(pool: &std::sync::Arc<PoolMemory>) -> Limiter {
        Limiter {
            memory: usize::MAX,
            table_elements: 0,
            instances: 1,
            tables: 1,
            memories: 1,
            pool: pool.clone(),
            held: 0,
            pending: 0,
            hit: None,
        }
    }

    /// One instance asking again and again for more than the pool has left never makes a small
    /// growth of another instance look past the cap (it was counted first and taken back
    /// after, so the other saw the inflated sum for a moment and was refused).
    #[test]
    fn a_refused_growth_never_refuses_another_that_fits() {
        let cap = 1 << 30;
        let pool = PoolMemory::new(cap);
        let rounds = 200_000;
        let stop = AtomicBool::new(false);
        let refused = AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut greedy = limiter(&pool);
                while !stop.load(Ordering::Relaxed) {
                    assert!(!greedy.memory_growing(0, cap + 1, None).unwrap());
                }
            });
            s.spawn(|| {
                let mut small = limiter(&pool);
                for _ in 0..rounds {
                    if small.memory_growing(0, cap / 10, None).unwrap() {
                        small
                            .memory_grow_failed(wasmtime::Error::msg("undo"))
                            .unwrap();
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                stop.store(true, Ordering::Relaxed);
            });
        });
        assert_eq!(
            refused.load(Ordering::Relaxed),
            0,
            "of {rounds} growths that fit"
        );
        assert_eq!(
            pool.used.load(Ordering::Relaxed),
            0,
            "everything given back"
        );
    }

    /// Every length, short or long, copies exactly its bytes: none missed, none past the end.
    #[test]
    fn small_copies_write_exactly_their_bytes() {
        let source: Vec<u8> = (1..=40).collect();
        for n in 0..=40 {
            let mut target = [0u8; 48];
            // SAFETY: `target` holds 48 bytes and `source` 40, so both are valid for `n`.
            unsafe { super::copy_small(&source[..n], target.as_mut_ptr().add(4)) };
            assert_eq!(&target[4..4 + n], &source[..n], "length {n}");
            assert!(target[..4].iter().all(|&b| b == 0), "before, length {n}");
            assert!(target[4 + n..].iter().all(|&b| b == 0), "after, length {n}");
        }
    }
}
