//! Wakes a task at a time: what an async call that waits (for a deadline, or for a wasm
//! instance to come free) needs when nothing else would wake it then.
//!
//! One thread, started by the first alarm, sleeps until the earliest alarm is due and wakes
//! its task. An alarm cannot be cancelled: waking a task whose call finished meanwhile only
//! polls it once for nothing, and each waiting call sets at most a few.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::task::Waker;
use std::time::Instant;

/// Alarms by due time; the sequence number keeps the heap's order total without comparing
/// wakers.
struct Alarms {
    due: Mutex<BinaryHeap<Reverse<(Instant, u64, WakerBox)>>>,
    changed: Condvar,
}

/// A waker in the heap: ordered by nothing (the due time and sequence number come first and
/// are unique).
struct WakerBox(Waker);

impl PartialEq for WakerBox {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for WakerBox {}
impl PartialOrd for WakerBox {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for WakerBox {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

fn alarms() -> &'static Alarms {
    static ALARMS: OnceLock<&'static Alarms> = OnceLock::new();
    ALARMS.get_or_init(|| {
        let alarms: &'static Alarms = Box::leak(Box::new(Alarms {
            due: Mutex::new(BinaryHeap::new()),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("swapkit-alarm".into())
            .spawn(move || ring(alarms))
            .expect("cannot start swapkit's alarm thread");
        alarms
    })
}

/// Wakes `waker` at `when` (at once if that has passed).
pub(crate) fn wake_at(when: Instant, waker: &Waker) {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let alarms = alarms();
    let mut due = crate::lock::lock(&alarms.due);
    let earliest = due.peek().is_none_or(|Reverse((at, ..))| when < *at);
    due.push(Reverse((when, seq, WakerBox(waker.clone()))));
    drop(due);
    if earliest {
        alarms.changed.notify_one();
    }
}

/// The alarm thread: wakes each task when its alarm is due.
fn ring(alarms: &Alarms) {
    let mut due = crate::lock::lock(&alarms.due);
    loop {
        let now = Instant::now();
        let mut ready = vec![];
        while due.peek().is_some_and(|Reverse((at, ..))| *at <= now) {
            if let Some(Reverse((_, _, waker))) = due.pop() {
                ready.push(waker.0);
            }
        }
        if !ready.is_empty() {
            // Woken outside the lock: a waker may run code that sets another alarm.
            drop(due);
            ready.into_iter().for_each(Waker::wake);
            due = crate::lock::lock(&alarms.due);
            continue;
        }
        due = match due.peek() {
            Some(Reverse((at, ..))) => {
                let wait = at.saturating_duration_since(now);
                alarms
                    .changed
                    .wait_timeout(due, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => alarms.changed.wait(due).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    /// Counts its wakes and when the last came.
    struct Count(AtomicUsize, Mutex<Option<Instant>>);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            *self.1.lock().unwrap() = Some(Instant::now());
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0), Mutex::new(None)));
        (count.clone(), Waker::from(count))
    }

    fn wait_for(count: &Count, n: usize) {
        let start = Instant::now();
        while count.0.load(Ordering::SeqCst) < n {
            assert!(start.elapsed() < Duration::from_secs(10), "no wake");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn wakes_each_task_once_at_its_time_in_order() {
        let start = Instant::now();
        let (late, late_waker) = counter();
        let (early, early_waker) = counter();
        wake_at(start + Duration::from_millis(60), &late_waker);
        // Set after, due before: the thread sleeping for the first must wake for it.
        wake_at(start + Duration::from_millis(20), &early_waker);
        wait_for(&early, 1);
        wait_for(&late, 1);
        let at = |c: &Count| c.1.lock().unwrap().unwrap();
        assert!(at(&early) >= start + Duration::from_millis(20));
        assert!(at(&late) >= start + Duration::from_millis(60));
        assert!(at(&early) <= at(&late));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(early.0.load(Ordering::SeqCst), 1);
        assert_eq!(late.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_alarm_in_the_past_rings_at_once() {
        let (count, waker) = counter();
        wake_at(Instant::now() - Duration::from_secs(1), &waker);
        wait_for(&count, 1);
    }
}
