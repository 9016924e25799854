//! Stress and randomised tests: more threads than cores, swaps racing calls. Each asserts that
//! no value is freed while a guard holds it and that every superseded value is freed exactly
//! once; the last one, that no pooled value ever has two users while threads keep, revoke and
//! take places. `SWAPKIT_STRESS=<n>` multiplies their length (the long form, `scripts/stress-sync.sh`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::{scaled, Book, Rng, Tracked};
use swapkit_sync::{Guard, HazardCell, Miss, Places};

/// One reader enters and leaves in a tight loop while one writer swaps, and one more thread
/// spins, so that on two cores the reader is often preempted mid-call. After
/// each swap the writer waits until the reader has finished a call that began after it; no
/// guard can hold the superseded value then, so it must be freed already, with no later swap
/// to help. This is how values left held after a failed validation showed: the scan saw the
/// reader's slot naming the old value, and the reader's retry cleared it without scanning.
#[test]
fn every_superseded_value_is_freed_once_its_last_call_leaves() {
    let swaps = scaled(600);
    let book = Book::new(swaps + 1);
    let cell = HazardCell::new(book.value(0));
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    let mut late = vec![];
    std::thread::scope(|s| {
        for _ in 0..1 {
            let stop = &stop;
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            });
        }
        let (cell_r, stop_r, calls_r, book_r) = (&cell, &stop, &calls, &book);
        s.spawn(move || {
            while !stop_r.load(Ordering::Relaxed) {
                let guard = cell_r.enter().unwrap();
                guard.check_alive(book_r);
                drop(guard);
                calls_r.fetch_add(1, Ordering::SeqCst);
            }
        });
        for id in 1..=swaps {
            drop(cell.swap(Some(book.value(id))));
            // The reader's call in flight at the swap ends within two counts.
            let seen = calls.load(Ordering::SeqCst);
            let mut spins = 0u32;
            while calls.load(Ordering::SeqCst) < seen + 2 {
                spins += 1;
                if spins > 100 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            if book.drops(id - 1) != 1 {
                late.push(id - 1);
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(
        late,
        Vec::<usize>::new(),
        "values still held after their last call left"
    );
    assert_eq!(cell.retiring(), 0);
    assert_eq!(
        book.not_freed_once(swaps),
        vec![],
        "(id, drops) of values not freed exactly once"
    );
    assert_eq!(book.drops(swaps), 0, "the current value is alive");
}

/// Readers on six threads (three per core here) enter, nest, spin and leave while one writer
/// swaps: nothing is freed under a guard, and everything is freed once the readers stop.
#[test]
fn thousands_of_swaps_under_concurrent_nested_calls() {
    let swaps = scaled(2_000);
    let book = Book::new(swaps + 1);
    let cell = HazardCell::new(book.value(0));
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..6 {
            let (cell, stop, calls, book) = (&cell, &stop, &calls, &book);
            s.spawn(move || {
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    let guard = cell.enter().unwrap();
                    guard.check_alive(book);
                    assert!(guard.id >= last, "values only move forward on one thread");
                    last = guard.id;
                    if t % 2 == 0 {
                        let inner = cell.enter().unwrap();
                        assert!(inner.id >= guard.id);
                        inner.check_alive(book);
                    }
                    for _ in 0..(t * 7) {
                        std::hint::spin_loop();
                    }
                    guard.check_alive(book);
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while calls.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        for id in 1..=swaps {
            drop(cell.swap(Some(book.value(id))));
            if id % 16 == 0 {
                std::thread::yield_now();
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(cell.retiring(), 0);
    assert_eq!(
        book.not_freed_once(swaps),
        vec![],
        "(id, drops) of values not freed exactly once"
    );
}

/// What one thread holds in the randomised test.
enum Held<'a> {
    Guard(Guard<'a, Tracked>),
    Pin(Arc<Tracked>),
}

/// Random sequences of enter, nested enter, pin (`to_arc`), drop in any order, swap, empty
/// (a restore), refill and reclaim, over three cells, on six threads. Every thread checks that
/// whatever it holds is alive; at the end, every value that left a cell was freed exactly once.
#[test]
fn random_sequences_of_calls_pins_swaps_and_restores() {
    let steps = scaled(20_000);
    let threads = 6;
    let per_thread_ids = steps + 1;
    let book = Book::new(3 + threads * per_thread_ids);
    let cells: Vec<HazardCell<Tracked>> = (0..3).map(|i| HazardCell::new(book.value(i))).collect();
    let seed = std::env::var("SWAPKIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64);
    eprintln!("random_sequences: SWAPKIT_SEED={seed}");
    let made_until: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (cells, book) = (&cells, &book);
                s.spawn(move || {
                    let mut rng = Rng::new(seed + t as u64);
                    let mut held: Vec<Held<'_>> = vec![];
                    let mut next_id = 3 + t * per_thread_ids;
                    for _ in 0..steps {
                        let cell = &cells[rng.below(3) as usize];
                        match rng.below(100) {
                            0..=39 => {
                                if let Some(g) = cell.enter() {
                                    g.check_alive(book);
                                    held.push(Held::Guard(g));
                                }
                            }
                            40..=44 => {
                                if let Some(p) = cell.load_full() {
                                    held.push(Held::Pin(p));
                                }
                            }
                            45..=79 => {
                                if !held.is_empty() {
                                    let i = rng.below(held.len() as u64) as usize;
                                    drop(held.swap_remove(i));
                                }
                            }
                            80..=93 => {
                                drop(cell.swap(Some(book.value(next_id))));
                                next_id += 1;
                            }
                            94..=96 => drop(cell.swap(None)),
                            _ => cell.reclaim(),
                        }
                        for h in &held {
                            match h {
                                Held::Guard(g) => g.check_alive(book),
                                Held::Pin(p) => p.check_alive(book),
                            }
                        }
                        // Mostly within the thread's own slots, now and then in spare records.
                        if held.len() > 10 {
                            held.clear();
                        }
                    }
                    held.clear();
                    next_id
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Values still in a cell are alive; every other value made was freed exactly once.
    let current: Vec<usize> = cells
        .iter()
        .filter_map(|c| c.enter().map(|g| g.id))
        .collect();
    for c in &cells {
        assert_eq!(
            c.retiring(),
            0,
            "a superseded value is held with no guard left"
        );
    }
    let made = (0..3).chain((0..threads).flat_map(|t| 3 + t * per_thread_ids..made_until[t]));
    for id in made {
        let drops = book.drops(id);
        let want = u32::from(!current.contains(&id));
        assert_eq!(
            drops, want,
            "value {id} dropped {drops} times, not {want} (seed {seed})"
        );
    }
}

/// A pooled value that notices two users at once: its holder stores into it and reads back,
/// with another thread's use in between visible as a changed owner or a lost count.
#[derive(Default)]
struct Pooled {
    user: AtomicU64,
    uses: AtomicU64,
}

/// Threads hold values from a pool smaller than their number, keep their places (again and
/// again: a revoked place may be kept again), try a nested hold inside the first, pause
/// between holds, and discard and refill values, while another thread revokes kept places in
/// a loop: no value is ever used by two threads at once, no use is lost, and every place ends
/// filled. Many short-lived pools, so that new pools meet threads' stale entries. The wasm
/// backend's instance pool stands on this.
#[test]
fn kept_places_never_have_two_users_under_revocation() {
    let seed: u64 = std::env::var("SWAPKIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    for round in 0..scaled(25) as u64 {
        one_pool_under_revocation(seed * 1_000_000 + round, 200);
    }
}

fn one_pool_under_revocation(seed: u64, rounds: u64) {
    let size = 3;
    let mut pool = Places::new(size);
    for i in 0..size {
        drop(pool.fill(i, Pooled::default()));
    }
    let vacant = std::sync::Mutex::new(Vec::new());
    let (uses, stop) = (AtomicU64::new(0), AtomicBool::new(false));
    let use_once = |held: &Pooled, me: u64| {
        assert_eq!(
            held.user.swap(me, Ordering::Relaxed),
            0,
            "two users at once"
        );
        let n = held.uses.load(Ordering::Relaxed);
        std::hint::spin_loop();
        held.uses.store(n + 1, Ordering::Relaxed);
        assert_eq!(
            held.user.swap(0, Ordering::Relaxed),
            me,
            "two users at once"
        );
        uses.fetch_add(1, Ordering::Relaxed);
    };
    std::thread::scope(|s| {
        let (pool, vacant, stop, uses, use_once) = (&pool, &vacant, &stop, &uses, &use_once);
        s.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                pool.revoke();
                std::hint::spin_loop();
            }
        });
        /// Stops the revoker however the workers end, so a failed assertion fails the test
        /// instead of leaving the scope waiting.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(stop);
        let workers: Vec<_> = (1..=4u64)
            .map(|me| {
                s.spawn(move || {
                    let mut rng = Rng::new(seed * 8 + me);
                    for r in 0..rounds {
                        if rng.below(4) == 0 {
                            std::thread::yield_now();
                        }
                        let Ok(held) = pool.hold(|| r as usize) else {
                            // Refill a place another thread emptied.
                            if let Some(i) = vacant.lock().unwrap().pop() {
                                drop(pool.fill(i, Pooled::default()));
                            }
                            continue;
                        };
                        use_once(&held, me);
                        if rng.below(8) == 0 {
                            assert!(
                                matches!(pool.hold(|| me as usize), Err(Miss::Nested)),
                                "a nested hold is refused"
                            );
                        }
                        match rng.below(50) {
                            0 => {
                                let i = held.index();
                                let gone = held.discard();
                                uses.fetch_sub(
                                    gone.uses.load(Ordering::Relaxed),
                                    Ordering::Relaxed,
                                );
                                vacant.lock().unwrap().push(i);
                            }
                            1..=9 => drop(held),
                            _ => held.keep(),
                        }
                    }
                })
            })
            .collect();
        let failed = workers.into_iter().filter_map(|w| w.join().err()).next();
        drop(_stop);
        if let Some(panic) = failed {
            std::panic::resume_unwind(panic);
        }
    });
    for i in vacant.into_inner().unwrap() {
        drop(pool.fill(i, Pooled::default()));
    }
    let all = pool.drain();
    assert_eq!(all.len(), size, "every place ends filled");
    let counted: u64 = all.iter().map(|v| v.uses.load(Ordering::Relaxed)).sum();
    assert_eq!(counted, uses.load(Ordering::Relaxed), "no use was lost");
}
