//! The current generation, held by calls through hazard slots.
//!
//! The protocol, its proof obligations and its tests live in the `swapkit-sync` crate (see
//! `HazardCell`); this module only says what the swapper keeps in one: the current
//! generation, which is never empty.

use std::sync::Arc;

use swapkit_sync::{Guard, HazardCell};

use crate::generation::Generation;

/// The current generation: a hazard cell that is never empty.
pub(crate) struct Current(HazardCell<Generation>);

impl Current {
    pub fn new(generation: Arc<Generation>) -> Current {
        Current(HazardCell::new(generation))
    }

    /// Protects the current generation for as long as the guard lives: a store to this
    /// thread's hazard slot, a compiler fence and two loads.
    #[inline(always)]
    pub fn enter(&self) -> Guard<'_, Generation> {
        let guard = self.0.enter_full();
        debug_assert!(guard.get().is_alive(), "a call reached a freed generation");
        guard
    }

    pub fn load_full(&self) -> Arc<Generation> {
        self.enter().to_arc()
    }

    pub fn swap(&self, next: Arc<Generation>) -> Arc<Generation> {
        self.0
            .swap(Some(next))
            .expect("the current generation is never empty")
    }

    /// How many calls hold `generation` right now.
    pub fn calls_in(&self, generation: &Generation) -> usize {
        self.0.guards_on(generation)
    }

    pub fn is_retiring(&self, generation: &Generation) -> bool {
        self.0.is_retiring(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::Ledger;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Weak;

    fn generation(id: u64, ledger: &Arc<Ledger>) -> Arc<Generation> {
        Arc::new(Generation::new(id, vec![], None, ledger.clone()))
    }

    #[test]
    fn a_call_keeps_a_superseded_generation_until_it_leaves() {
        let ledger = Arc::new(Ledger::default());
        let current = Current::new(generation(1, &ledger));
        let guard = current.enter();
        let old: Weak<Generation> = Arc::downgrade(&current.swap(generation(2, &ledger)));
        assert!(old.upgrade().is_some(), "released under a live call");
        assert_eq!(guard.get().id, 1);
        assert_eq!(current.calls_in(guard.get()), 1);
        assert!(current.is_retiring(guard.get()));
        drop(guard);
        assert!(old.upgrade().is_none(), "the last call out retires it");
        assert_eq!(current.enter().get().id, 2);
    }

    #[test]
    fn generations_retire_under_concurrent_calls() {
        let ledger = Arc::new(Ledger::default());
        let current = Current::new(generation(0, &ledger));
        let stop = AtomicBool::new(false);
        let calls = AtomicU64::new(0);
        let mut weaks = vec![];
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (current, stop, calls) = (&current, &stop, &calls);
                s.spawn(move || {
                    let mut last = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let guard = current.enter();
                        let inner = current.enter();
                        assert!(guard.get().is_alive() && inner.get().is_alive());
                        assert!(guard.get().id >= last && inner.get().id >= guard.get().id);
                        last = guard.get().id;
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            while calls.load(Ordering::Relaxed) == 0 {
                std::thread::yield_now();
            }
            for id in 1..=2_000 {
                weaks.push(Arc::downgrade(&current.swap(generation(id, &ledger))));
            }
            stop.store(true, Ordering::Relaxed);
        });
        // Every superseded generation was released once the calls stopped.
        assert_eq!(weaks.iter().filter(|w| w.upgrade().is_some()).count(), 0);
    }
}
