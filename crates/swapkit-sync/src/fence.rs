//! The two halves of an asymmetric fence: a cheap one for readers (every call) and an
//! expensive one for writers (every retirement scan).
//!
//! Readers and writers each store, fence, then load (the store-buffer pattern). Both fences
//! must be full fences, or the writer's must force one on every running thread. On Linux the
//! writer does the latter with `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which lets the
//! reader's fence be a compiler fence: a call pays nothing at run time.
//!
//! # What happens when the writer's barrier fails
//!
//! Readers read [`ASYMMETRIC`] on every fence. It turns true once, when registration for
//! private expedited membarrier succeeds, and never turns false again: a reader may have read
//! `true` an instant ago and be between its store and its load right now, so nothing the
//! writer does later can make that reader's compiler fence a full one. From then on every
//! writer's fence must be a real barrier on every thread. A plain `fence(SeqCst)` on the
//! writer's side alone is **not** one, and pairing it with readers' compiler fences frees
//! values under live guards (seen with a seccomp filter that refused membarrier to one thread).
//!
//! So [`heavy`] never degrades silently. If membarrier fails after registration (a seccomp
//! filter installed later, a sandbox), it retries on `EINTR`/`EAGAIN`, then falls back, as
//! Folly's `asymmetric_thread_fence_heavy` does, to changing the protection of a dirty page
//! it owns: on x86-64 the kernel must shoot down that page's TLB entry on every CPU running a
//! thread of the process, with an inter-processor interrupt, and an interrupt serialises the
//! CPU it lands on. If that fails too, or the CPU is not x86-64 (where TLB invalidation is
//! broadcast without interrupting anyone), the process aborts with a message: a process that
//! cannot fence must not go on freeing memory that another thread may be reading.
//!
//! Where registration itself fails (an old kernel, no Linux), readers and writers both use
//! `fence(SeqCst)`, which is correct and a few nanoseconds slower per call. Under Miri, loom
//! and `--cfg swapkit_symmetric_fences` (set for ThreadSanitizer, which does not see
//! membarrier), both sides always use `fence(SeqCst)`.

use crate::sync::fence;
use std::sync::atomic::Ordering;

/// Whether readers may use compiler fences: set once, after membarrier registration
/// succeeded, and never cleared (see the module docs).
static ASYMMETRIC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Registration is tried once per process.
static DECIDED: std::sync::Once = std::sync::Once::new();

/// Whether the platform may use asymmetric fences at all.
const MAY_BE_ASYMMETRIC: bool = cfg!(all(
    target_os = "linux",
    not(miri),
    not(loom),
    not(swapkit_symmetric_fences)
));

/// Settles the fence mode, once per process. Every writer calls it before its first barrier,
/// so a writer never pairs a plain fence with readers that already use compiler fences.
pub(crate) fn init() {
    if MAY_BE_ASYMMETRIC {
        DECIDED.call_once(|| ASYMMETRIC.store(membarrier::register(), Ordering::SeqCst));
    }
}

/// The reader's fence, between publishing its hazard slot and checking the cell again, and
/// between clearing its slot and checking whether it must scan.
#[inline(always)]
pub(crate) fn light() {
    if MAY_BE_ASYMMETRIC && ASYMMETRIC.load(Ordering::Relaxed) {
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
}

/// The writer's fence, between retiring a value and scanning the hazard slots: a full barrier
/// on every thread of the process.
pub(crate) fn heavy() {
    init();
    if MAY_BE_ASYMMETRIC && ASYMMETRIC.load(Ordering::Relaxed) {
        membarrier::barrier();
    } else {
        fence(Ordering::SeqCst);
    }
}

/// Whether readers use compiler fences (membarrier registration succeeded).
pub fn asymmetric() -> bool {
    init();
    ASYMMETRIC.load(Ordering::Relaxed)
}

/// How many writer barriers fell back to the page-protection barrier because membarrier
/// failed after registration.
pub fn fallbacks() -> u64 {
    membarrier::FALLBACKS.load(Ordering::Relaxed)
}

#[cfg(target_os = "linux")]
mod membarrier {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    const CMD_PRIVATE_EXPEDITED: libc::c_long = 8;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 16;

    /// Barriers that fell back to [`page_barrier`].
    pub static FALLBACKS: AtomicU64 = AtomicU64::new(0);

    /// Registers the process for private expedited barriers; false if the kernel refuses.
    pub fn register() -> bool {
        // SAFETY: membarrier takes two integer arguments and touches no memory of ours.
        unsafe { libc::syscall(libc::SYS_membarrier, CMD_REGISTER_PRIVATE_EXPEDITED, 0) == 0 }
    }

    /// Runs a full barrier on every running thread of the process, or aborts.
    pub fn barrier() {
        let mut errno = 0;
        for _ in 0..16 {
            // SAFETY: as in `register`.
            if unsafe { libc::syscall(libc::SYS_membarrier, CMD_PRIVATE_EXPEDITED, 0) } == 0 {
                return;
            }
            errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if errno != libc::EINTR && errno != libc::EAGAIN {
                break;
            }
        }
        if FALLBACKS.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::error!(
                errno,
                "membarrier failed after registration (a seccomp filter?); hazard scans now use \
                 the page-protection barrier, which costs more per swap"
            );
        }
        if let Err(why) = page_barrier() {
            fatal(errno, &why);
        }
    }

    #[cold]
    fn fatal(errno: i32, why: &str) -> ! {
        eprintln!(
            "swapkit: membarrier failed after registration (errno {errno}) and no other \
             barrier is available ({why}); aborting, because freeing a retired value now could \
             free it under a call that is still using it. Allow the membarrier system call in \
             this process's seccomp filter."
        );
        std::process::abort()
    }

    /// One page of our own, mapped read-only, whose protection we flip.
    struct Page(*mut u8);
    // SAFETY: the page is only touched under `PAGE`'s lock.
    unsafe impl Send for Page {}

    static PAGE: Mutex<Option<Page>> = Mutex::new(None);

    /// Folly's fallback: make a dirty page writable, write it, make it read-only again. The
    /// kernel then flushes its TLB entry on every CPU that runs a thread of this process, with
    /// an interrupt on x86-64, which is a full barrier on that CPU.
    #[cfg(target_arch = "x86_64")]
    fn page_barrier() -> Result<(), String> {
        let mut page = PAGE.lock().unwrap_or_else(|e| e.into_inner());
        if page.is_none() {
            // SAFETY: an anonymous private mapping of one page, at an address the kernel picks.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(format!("mmap: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: `p` is the page just mapped. Locking keeps it resident, so the write
            // below always dirties a present entry; failing to lock only costs a page fault.
            unsafe { libc::mlock(p, 4096) };
            *page = Some(Page(p.cast()));
        }
        let Some(Page(p)) = *page else {
            unreachable!("mapped above")
        };
        // SAFETY: `p` is our page, mapped above and never unmapped; it is written only here,
        // under the lock, while it is writable.
        unsafe {
            if libc::mprotect(p.cast(), 4096, libc::PROT_READ | libc::PROT_WRITE) != 0 {
                return Err(format!("mprotect: {}", std::io::Error::last_os_error()));
            }
            std::ptr::write_volatile(p, p.read_volatile().wrapping_add(1));
            if libc::mprotect(p.cast(), 4096, libc::PROT_READ) != 0 {
                return Err(format!("mprotect: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn page_barrier() -> Result<(), String> {
        let _ = &PAGE;
        Err("TLB shootdowns do not interrupt other CPUs on this architecture".to_owned())
    }
}

#[cfg(not(target_os = "linux"))]
mod membarrier {
    use std::sync::atomic::AtomicU64;

    pub static FALLBACKS: AtomicU64 = AtomicU64::new(0);

    pub fn register() -> bool {
        false
    }

    pub fn barrier() {
        unreachable!("asymmetric fences are only used on Linux")
    }
}
