//! The stacks an async call's steps run on (see `Slot::compute`), made here so that the host
//! knows where they are.
//!
//! A nested request (a guest calling the host calling a plugin) is refused when too little
//! native stack is left for another guest. On a thread's own stack, `stacker` says how much
//! is left; on a fiber it cannot (it knows the thread's stack only, and would see none or
//! plenty). So the fibers' stacks are mapped here, each listed while it lives, and a check
//! made while a step is being polled on this thread looks its stack pointer up among them.

use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The fiber stacks that exist: the usable range of each (its guard page below it).
static FIBERS: Mutex<Vec<Range<usize>>> = Mutex::new(Vec::new());

/// Counts the fiber stacks unmapped so far: a range a thread found before is still a fiber's
/// while this has not moved (a new stack only adds a range, which the lookup finds anyway).
static UNMAPPED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// How many steps this thread is polling now, one inside another (a dependency's step
    /// polled by a host function its caller's step called). No destructor.
    static POLLING: Cell<usize> = const { Cell::new(0) };
    /// The fiber stack this thread found last, and `UNMAPPED` then: a step's nested requests
    /// find it again without the lock.
    static FOUND: Cell<(u64, usize, usize)> = const { Cell::new((u64::MAX, 0, 0)) };
}

/// Marks this thread as polling a step, until it drops.
pub(super) struct Polling(());

impl Polling {
    #[inline]
    pub(super) fn enter() -> Polling {
        let _ = POLLING.try_with(|n| n.set(n.get() + 1));
        Polling(())
    }
}

impl Drop for Polling {
    #[inline]
    fn drop(&mut self) {
        let _ = POLLING.try_with(|n| n.set(n.get() - 1));
    }
}

/// The native stack left on the fiber this code runs on, if it runs on one (a host function
/// a step called, or a call nested in one); `None` on a thread's own stack.
pub(crate) fn fiber_remaining() -> Option<usize> {
    if POLLING.try_with(Cell::get).unwrap_or(0) == 0 {
        return None; // no step is running on this thread: its own stack
    }
    let here = 0u8;
    let sp = std::hint::black_box(&here) as *const u8 as usize;
    // Acquire: pairs with the unmapping's release, so a range seen unchanged is still mapped.
    let unmapped = UNMAPPED.load(Ordering::Acquire);
    let (seen, start, end) = FOUND.try_with(Cell::get).unwrap_or((u64::MAX, 0, 0));
    if seen == unmapped && (start..end).contains(&sp) {
        return Some(sp - start);
    }
    let fibers = crate::lock::lock(&FIBERS);
    let found = fibers.iter().find(|r| r.contains(&sp))?;
    let _ = FOUND.try_with(|f| f.set((unmapped, found.start, found.end)));
    Some(sp - found.start)
}

/// Makes the fiber stacks of an engine (`Config::with_host_stack`).
#[cfg(unix)]
pub(super) struct Stacks;

// SAFETY: each stack is a fresh private mapping of the size asked for, zero-filled, page
// aligned, with an inaccessible guard page below it, and unmapped only when wasmtime drops it.
#[cfg(unix)]
unsafe impl wasmtime::StackCreator for Stacks {
    fn new_stack(
        &self,
        size: usize,
        _zeroed: bool,
    ) -> wasmtime::Result<Box<dyn wasmtime::StackMemory>> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        let size = size
            .checked_next_multiple_of(page)
            .ok_or_else(|| wasmtime::format_err!("a fiber stack of {size} bytes"))?;
        let len = size + page;
        // SAFETY: a new anonymous mapping, at an address the kernel picks.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(wasmtime::format_err!(
                "mapping a fiber stack of {len} bytes failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        let stack = Stack {
            base: base as usize,
            len,
            guard: page,
        };
        // SAFETY: the first page of the mapping made above.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(wasmtime::format_err!(
                "protecting a fiber stack's guard page failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        crate::lock::lock(&FIBERS).push(stack.usable());
        Ok(Box::new(stack))
    }
}

/// One mapped fiber stack: `len` bytes from `base`, the first `guard` of them inaccessible.
#[cfg(unix)]
struct Stack {
    base: usize,
    len: usize,
    guard: usize,
}

#[cfg(unix)]
impl Stack {
    fn usable(&self) -> Range<usize> {
        self.base + self.guard..self.base + self.len
    }
}

// SAFETY: as `StackCreator`'s above.
#[cfg(unix)]
unsafe impl wasmtime::StackMemory for Stack {
    fn top(&self) -> *mut u8 {
        (self.base + self.len) as *mut u8
    }

    fn range(&self) -> Range<usize> {
        self.usable()
    }

    fn guard_range(&self) -> Range<*mut u8> {
        self.base as *mut u8..(self.base + self.guard) as *mut u8
    }
}

#[cfg(unix)]
impl Drop for Stack {
    fn drop(&mut self) {
        let usable = self.usable();
        crate::lock::lock(&FIBERS).retain(|r| *r != usable);
        UNMAPPED.fetch_add(1, Ordering::Release);
        // SAFETY: the mapping made in `new_stack`, which nothing runs on any more (wasmtime
        // drops a stack only after its fiber finished).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}
