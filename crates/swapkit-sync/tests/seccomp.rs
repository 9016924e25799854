//! The writer's barrier failing after registration: a seccomp filter installed on the writer's
//! thread refuses `membarrier`, as a sandbox set up after start-up would. Readers keep using
//! compiler fences (they cannot be told in time), so the writer must still force a barrier on
//! them. Before the fix the writer fell back to `fence(SeqCst)` alone, and one reader and one
//! writer freed values under live guards 5 to 8 times in 15 s.

#![cfg(all(target_os = "linux", target_arch = "x86_64", not(miri)))]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Book;
use swapkit_sync::{fence, HazardCell};

/// Makes `membarrier` fail with EPERM on the calling thread (and threads it spawns later).
fn refuse_membarrier_on_this_thread() {
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let program = [
        // Load the system call number (offset 0 of `struct seccomp_data`).
        libc::sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_membarrier as u32,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with integer arguments, and a pointer to a filter program that outlives
    // the call (the kernel copies it).
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const _
            ),
            0,
            "installing the seccomp filter failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[test]
fn a_writer_refused_membarrier_still_never_frees_under_a_guard() {
    if !fence::asymmetric() {
        eprintln!("membarrier registration failed here: fences are symmetric, nothing to test");
        return;
    }
    let run = Duration::from_millis(if std::env::var_os("SWAPKIT_STRESS").is_some() {
        15_000
    } else {
        2_000
    });
    let max_swaps = 4_000_000;
    let book = Book::new(max_swaps + 1);
    let cell = HazardCell::new(book.value(0));
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    let before = fence::fallbacks();
    let swaps = std::thread::scope(|s| {
        let (cell_r, stop_r, calls_r, book_r) = (&cell, &stop, &calls, &book);
        s.spawn(move || {
            while !stop_r.load(Ordering::Relaxed) {
                let guard = cell_r.enter().unwrap();
                guard.check_alive(book_r);
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
                guard.check_alive(book_r);
                calls_r.fetch_add(1, Ordering::Relaxed);
            }
        });
        let writer = s.spawn(|| {
            refuse_membarrier_on_this_thread();
            let start = Instant::now();
            let mut id = 0;
            while start.elapsed() < run && id < max_swaps {
                id += 1;
                drop(cell.swap(Some(book.value(id))));
            }
            id
        });
        let swaps = writer.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        swaps
    });
    assert!(calls.load(Ordering::Relaxed) > 0 && swaps > 0);
    assert!(
        fence::fallbacks() > before,
        "the writer's barrier never failed: the filter did not take effect"
    );
    assert_eq!(cell.retiring(), 0);
    assert_eq!(
        book.not_freed_once(swaps),
        vec![],
        "(id, drops) of values not freed exactly once"
    );
    eprintln!(
        "{swaps} swaps, {} calls, {} fallback barriers",
        calls.load(Ordering::Relaxed),
        fence::fallbacks() - before
    );
}
