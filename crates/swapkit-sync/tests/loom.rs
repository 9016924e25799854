//! Loom models of the hazard handshake, run over the real code (`RUSTFLAGS="--cfg loom"`, see
//! `scripts/verify-sync.sh`). Loom explores every interleaving, and every outcome the memory
//! model allows, of the threads below, up to its preemption bound.

#![cfg(loom)]

use std::sync::atomic::Ordering::SeqCst;

use loom::sync::atomic::AtomicUsize;
use loom::sync::Arc as LoomArc;
use std::sync::Arc;
use swapkit_sync::HazardCell;

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
