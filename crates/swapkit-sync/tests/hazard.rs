//! Deterministic tests of hazard cells, one per way a guard was found to fail.

mod common;

use std::cell::RefCell;
use std::sync::mpsc;

use common::Book;
use swapkit_sync::{HazardCell, SLOTS_PER_THREAD};

#[test]
fn a_guard_keeps_a_superseded_value_until_it_drops() {
    let book = Book::new(2);
    let cell = HazardCell::new(book.value(0));
    let guard = cell.enter().unwrap();
    drop(cell.swap(Some(book.value(1))));
    assert_eq!(book.drops(0), 0, "released under a live guard");
    assert_eq!(cell.guards_on(guard.get()), 1);
    assert!(cell.is_retiring(guard.get()));
    drop(guard);
    assert_eq!(book.drops(0), 1, "the last guard out releases it");
    assert_eq!(cell.retiring(), 0);
    assert_eq!(cell.enter().unwrap().id, 1);
}

#[test]
fn an_unheld_value_is_released_by_the_swap() {
    let book = Book::new(2);
    let cell = HazardCell::new(book.value(0));
    drop(cell.swap(Some(book.value(1))));
    assert_eq!(book.drops(0), 1);
    drop(cell);
    assert_eq!(book.drops(1), 1, "dropping the cell drops its value");
}

#[test]
fn an_emptied_cell_releases_its_value_when_the_last_guard_leaves() {
    let book = Book::new(1);
    let cell = HazardCell::new(book.value(0));
    let guard = cell.enter().unwrap();
    drop(cell.swap(None));
    assert!(cell.is_empty() && cell.enter().is_none());
    assert_eq!(book.drops(0), 0);
    drop(guard);
    assert_eq!(book.drops(0), 1);
}

#[test]
fn guards_dropped_out_of_order_keep_their_values() {
    // A (slot i), B (slot i+1); dropping A first and taking C must not reuse B's slot.
    let book = Book::new(3);
    let cell = HazardCell::new(book.value(0));
    let a = cell.enter().unwrap();
    let b = cell.enter().unwrap();
    drop(a);
    let c = cell.enter().unwrap();
    drop(cell.swap(Some(book.value(1))));
    drop(c);
    assert_eq!(book.drops(0), 0, "B still holds value 0");
    b.check_alive(&book);
    assert_eq!(cell.guards_on(b.get()), 1);
    drop(b);
    assert_eq!(book.drops(0), 1);
}

#[test]
fn guards_interleaved_across_two_cells_in_any_order() {
    let book = Book::new(4);
    let x = HazardCell::new(book.value(0));
    let y = HazardCell::new(book.value(1));
    let gx = x.enter().unwrap();
    let gy = y.enter().unwrap();
    drop(gx);
    let gx2 = x.enter().unwrap();
    drop(y.swap(Some(book.value(2))));
    drop(x.swap(Some(book.value(3))));
    drop(gx2);
    assert_eq!((book.drops(0), book.drops(1)), (1, 0));
    gy.check_alive(&book);
    drop(gy);
    assert_eq!(book.drops(1), 1);
}

#[test]
fn nesting_past_the_slots_uses_spare_records() {
    let book = Book::new(2);
    let cell = HazardCell::new(book.value(0));
    let n = SLOTS_PER_THREAD * 2 + 3;
    let mut guards: Vec<_> = (0..n).map(|_| cell.enter().unwrap()).collect();
    assert_eq!(cell.guards_on(guards[0].get()), n);
    drop(cell.swap(Some(book.value(1))));
    // Drop from the middle outwards: order does not matter.
    while !guards.is_empty() {
        assert_eq!(book.drops(0), 0);
        let g = guards.remove(guards.len() / 2);
        drop(g);
    }
    assert_eq!(book.drops(0), 1);
    let after = cell.enter().unwrap();
    assert_eq!(
        cell.guards_on(after.get()),
        1,
        "every spare slot was cleared"
    );
}

#[test]
fn to_arc_outlives_the_guard_and_the_swap() {
    let book = Book::new(2);
    let cell = HazardCell::new(book.value(0));
    let strong = cell.enter().unwrap().to_arc();
    drop(cell.swap(Some(book.value(1))));
    assert_eq!(book.drops(0), 0);
    assert_eq!(strong.id, 0);
    drop(strong);
    assert_eq!(book.drops(0), 1);
}

static SHARED: HazardCell<common::Tracked> = HazardCell::empty();

struct KeptGuard(
    Option<swapkit_sync::Guard<'static, common::Tracked>>,
    mpsc::Sender<()>,
    mpsc::Receiver<()>,
);

impl Drop for KeptGuard {
    fn drop(&mut self) {
        if self.0.is_some() {
            // The thread's own record has been given back (or orphaned) by now: its
            // destructor was registered after this thread-local's, so it ran first. Let the
            // main thread hand records to other threads and swap, then check our value.
            self.1.send(()).unwrap();
            self.2.recv().unwrap();
        }
        self.0.take();
    }
}

thread_local! {
    static KEPT: RefCell<Option<KeptGuard>> = const { RefCell::new(None) };
}

#[test]
fn a_guard_kept_in_a_thread_local_outlives_its_threads_record() {
    let book = Book::new(2);
    drop(SHARED.swap(Some(book.value(0))));
    let (to_main, from_thread) = mpsc::channel();
    let (to_thread, from_main) = mpsc::channel();
    let (alive_tx, alive_rx) = mpsc::channel();
    let book2 = book.clone();
    let thread = std::thread::spawn(move || {
        // Register this thread-local's destructor before the hazard record's.
        KEPT.with(|k| k.borrow_mut().take());
        let guard = SHARED.enter().unwrap();
        KEPT.with(|k| *k.borrow_mut() = Some(KeptGuard(Some(guard), to_main, from_main)));
        let _ = &book2;
        alive_tx.send(()).unwrap();
    });
    alive_rx.recv().unwrap();
    // The thread is in its teardown, holding the guard; its record must not be handed out.
    from_thread.recv().unwrap();
    let others: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let g = SHARED.enter().unwrap();
                let nested = SHARED.enter().unwrap();
                drop(g);
                drop(nested);
            })
        })
        .collect();
    others.into_iter().for_each(|t| t.join().unwrap());
    drop(SHARED.swap(Some(book.value(1))));
    assert_eq!(
        book.drops(0),
        0,
        "value 0 was freed under the thread-local's guard"
    );
    to_thread.send(()).unwrap();
    thread.join().unwrap();
    SHARED.reclaim();
    assert_eq!(book.drops(0), 1, "released once the kept guard dropped");
    drop(SHARED.swap(None));
    assert_eq!(book.drops(1), 1);
}

#[test]
#[cfg_attr(miri, ignore = "leaks on purpose")]
fn a_leaked_guard_leaks_its_value_and_frees_nothing_else() {
    let book = Book::new(3);
    let cell: &'static HazardCell<common::Tracked> =
        Box::leak(Box::new(HazardCell::new(book.value(0))));
    std::thread::spawn(move || std::mem::forget(cell.enter().unwrap()))
        .join()
        .unwrap();
    // Other threads, which may reuse records, never clear the leaked slot.
    for _ in 0..4 {
        std::thread::spawn(move || drop(cell.enter().unwrap()))
            .join()
            .unwrap();
    }
    drop(cell.swap(Some(book.value(1))));
    assert_eq!(book.drops(0), 0, "a leaked guard keeps its value forever");
    drop(cell.swap(Some(book.value(2))));
    assert_eq!(book.drops(1), 1, "values it does not name are freed");
}
