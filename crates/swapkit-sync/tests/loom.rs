//! Loom models of the hazard handshake and of the kept places' handshake, run over the real code (`RUSTFLAGS="--cfg loom"`, see
//! `scripts/verify-sync.sh`). Loom explores every interleaving, and every outcome the memory
//! model allows, of the threads below, up to its preemption bound.

#![cfg(loom)]

use std::sync::atomic::Ordering::SeqCst;

use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicUsize;
use loom::sync::Arc as LoomArc;
use std::sync::Arc;
use swapkit_sync::{HazardCell, Places};

/// A value that counts its drops in a loom atomic.
struct Tracked {
    drops: LoomArc<AtomicUsize>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, SeqCst);
    }
}

fn value(drops: &LoomArc<AtomicUsize>) -> Arc<Tracked> {
    Arc::new(Tracked {
        drops: drops.clone(),
    })
}

/// A call enters (perhaps failing validation and retrying) and leaves, while a writer swaps:
/// the call never sees its value freed, and once both are done the old value was freed exactly
/// once, by whichever came last, with nobody else to help.
#[test]
fn a_leaving_call_a_failed_validation_and_a_scan() {
    loom::model(|| {
        let old = LoomArc::new(AtomicUsize::new(0));
        let new = LoomArc::new(AtomicUsize::new(0));
        let next = value(&new);
        let cell = LoomArc::new(HazardCell::new(value(&old)));
        let reader = {
            let (cell, old, new) = (cell.clone(), old.clone(), new.clone());
            loom::thread::spawn(move || {
                let guard = cell.enter().expect("never empty");
                let drops = if std::ptr::eq(&*guard.drops, &*old) {
                    &old
                } else {
                    &new
                };
                assert_eq!(drops.load(SeqCst), 0, "freed under a guard");
                drop(guard);
            })
        };
        drop(cell.swap(Some(next)));
        reader.join().unwrap();
        assert_eq!(
            old.load(SeqCst),
            1,
            "the superseded value was not freed exactly once"
        );
        assert_eq!(new.load(SeqCst), 0);
        assert_eq!(cell.retiring(), 0);
    });
}

/// Two swaps race one call: both superseded values are freed, the current one is not.
#[test]
fn one_call_across_two_swaps() {
    loom::model(|| {
        let drops: Vec<LoomArc<AtomicUsize>> =
            (0..3).map(|_| LoomArc::new(AtomicUsize::new(0))).collect();
        // Made up front: a value allocated after another is freed may take its address, and
        // loom needs every execution of one schedule to take the same branches.
        let (second, third) = (value(&drops[1]), value(&drops[2]));
        let cell = LoomArc::new(HazardCell::new(value(&drops[0])));
        let reader = {
            let cell = cell.clone();
            loom::thread::spawn(move || {
                let guard = cell.enter().expect("never empty");
                assert_eq!(guard.drops.load(SeqCst), 0, "freed under a guard");
            })
        };
        drop(cell.swap(Some(second)));
        drop(cell.swap(Some(third)));
        reader.join().unwrap();
        let counts: Vec<usize> = drops.iter().map(|d| d.load(SeqCst)).collect();
        assert_eq!(counts, vec![1, 1, 0]);
    });
}

/// A call empties the cell (a restore) while another holds it: the holder keeps its value
/// until it leaves, and the value is freed once.
#[test]
fn a_restore_races_a_call() {
    loom::model(|| {
        let drops = LoomArc::new(AtomicUsize::new(0));
        let cell = LoomArc::new(HazardCell::new(value(&drops)));
        let reader = {
            let cell = cell.clone();
            loom::thread::spawn(move || {
                if let Some(guard) = cell.enter() {
                    assert_eq!(guard.drops.load(SeqCst), 0, "freed under a guard");
                }
            })
        };
        drop(cell.swap(None));
        reader.join().unwrap();
        assert_eq!(drops.load(SeqCst), 1);
    });
}

/// Two calls on two threads, one of them nested and dropped out of order, race a swap.
#[test]
fn two_callers_one_nested_out_of_order_and_a_swap() {
    loom::model(|| {
        let old = LoomArc::new(AtomicUsize::new(0));
        let new = LoomArc::new(AtomicUsize::new(0));
        let next = value(&new);
        let cell = LoomArc::new(HazardCell::new(value(&old)));
        let simple = {
            let cell = cell.clone();
            loom::thread::spawn(move || {
                let guard = cell.enter().expect("never empty");
                assert_eq!(guard.drops.load(SeqCst), 0, "freed under a guard");
            })
        };
        let nested = {
            let cell = cell.clone();
            loom::thread::spawn(move || {
                let outer = cell.enter().expect("never empty");
                let inner = cell.enter().expect("never empty");
                drop(outer);
                assert_eq!(inner.drops.load(SeqCst), 0, "freed under a guard");
            })
        };
        drop(cell.swap(Some(next)));
        simple.join().unwrap();
        nested.join().unwrap();
        assert_eq!((old.load(SeqCst), new.load(SeqCst)), (1, 0));
        assert_eq!(cell.retiring(), 0);
    });
}

/// A pooled value whose count loom checks for unsynchronised access: two users at once, or a
/// user that does not see the last one's write, fail the model.
struct Counted(UnsafeCell<usize>);

impl Counted {
    fn bump(&self) {
        self.0.with_mut(|n| unsafe { *n += 1 });
    }

    fn read(&self) -> usize {
        self.0.with(|n| unsafe { *n })
    }
}

/// An owner uses the place it keeps (twice: leaving, then entering again) while another
/// thread revokes it and then takes it: the two never use the value at once, each sees the
/// other's writes, and the value ends idle with every use counted.
#[test]
fn an_owner_uses_its_kept_place_while_another_thread_revokes_and_takes_it() {
    loom::model(|| {
        let pool = LoomArc::new(Places::new(1));
        drop(pool.fill(0, Counted(UnsafeCell::new(0))));
        let held = pool.hold(|| 0).expect("idle");
        held.bump();
        held.keep();
        let uses = LoomArc::new(AtomicUsize::new(1));
        let other = {
            let (pool, uses) = (pool.clone(), uses.clone());
            loom::thread::spawn(move || {
                pool.revoke();
                if let Ok(held) = pool.hold(|| 0) {
                    assert!(!held.is_kept());
                    held.bump();
                    uses.fetch_add(1, SeqCst);
                }
            })
        };
        for _ in 0..2 {
            if let Ok(held) = pool.hold(|| 0) {
                held.bump();
                uses.fetch_add(1, SeqCst);
            }
        }
        other.join().unwrap();
        let held = pool.hold(|| 0).expect("back in the pool");
        assert_eq!(held.read(), uses.load(SeqCst));
    });
}

/// Two threads race to take one idle value and keep it: one wins, and the loser never sees
/// it until it is revoked; then the value is handed over with its writes.
#[test]
fn two_threads_race_to_keep_one_place() {
    loom::model(|| {
        let pool = LoomArc::new(Places::new(1));
        drop(pool.fill(0, Counted(UnsafeCell::new(0))));
        let uses = LoomArc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (pool, uses) = (pool.clone(), uses.clone());
                loom::thread::spawn(move || {
                    if let Ok(held) = pool.hold(|| 0) {
                        held.bump();
                        uses.fetch_add(1, SeqCst);
                        held.keep();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        pool.revoke();
        let held = pool.hold(|| 0).expect("revoked, so idle");
        assert_eq!(held.read(), uses.load(SeqCst));
    });
}

/// A stale owner meets a new one: the main thread keeps the place; another thread revokes it,
/// takes it and keeps it for itself, and uses it again as its owner; meanwhile the main thread,
/// which still remembers the place, tries to use it. The stale owner never gets the value
/// while the new owner has it (loom's cell catches two users), writes only its own flag, and
/// never hands back the new owner's place; every use is counted.
#[test]
fn a_stale_owner_never_enters_a_place_kept_again_by_another_thread() {
    loom::model(|| {
        let pool = LoomArc::new(Places::new(1));
        drop(pool.fill(0, Counted(UnsafeCell::new(0))));
        pool.hold(|| 0).expect("idle").keep();
        let uses = LoomArc::new(AtomicUsize::new(0));
        let other = {
            let (pool, uses) = (pool.clone(), uses.clone());
            loom::thread::spawn(move || {
                pool.revoke();
                if let Ok(held) = pool.hold(|| 0) {
                    held.bump();
                    uses.fetch_add(1, SeqCst);
                    held.keep();
                    if let Ok(held) = pool.hold(|| 0) {
                        held.bump();
                        uses.fetch_add(1, SeqCst);
                    }
                }
            })
        };
        // A third thread revokes too: the stale owner, backing off, may find the new owner's
        // place REVOKED, and must leave it to the new owner.
        let revoker = {
            let pool = pool.clone();
            loom::thread::spawn(move || {
                pool.revoke();
            })
        };
        if let Ok(held) = pool.hold(|| 0) {
            held.bump();
            uses.fetch_add(1, SeqCst);
        }
        other.join().unwrap();
        revoker.join().unwrap();
        pool.revoke();
        let held = pool.hold(|| 0).expect("back in the pool");
        assert_eq!(held.read(), uses.load(SeqCst));
    });
}
