//! `#[patchable]` on async functions: patched with async closures, restored while a call is
//! pending, panics in the replacement's future, and rollout keys carried across `.await`.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use swapkit::patch::{self, PatchPanic, Rollout, WithKey};

/// A minimal executor: polls on this thread, parking between wake-ups.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// Returns `Pending` once, then `Ready`: an await point.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[swapkit::patchable]
async fn fetch(id: u64, mut name: String) -> String {
    yield_now().await;
    name.push('!');
    format!("{name}#{id}")
}

#[derive(Debug, PartialEq)]
enum LookupError {
    Missing,
    Patch(String),
}

impl From<PatchPanic> for LookupError {
    fn from(p: PatchPanic) -> Self {
        LookupError::Patch(p.message)
    }
}

#[swapkit::patchable]
async fn lookup(id: u64) -> Result<u64, LookupError> {
    if id == 0 {
        Err(LookupError::Missing)
    } else {
        Ok(id * 2)
    }
}

struct Store;

#[swapkit::patchable]
impl Store {
    async fn size(bytes: Vec<u8>) -> usize {
        bytes.len()
    }
}

#[test]
fn an_async_fn_is_patched_with_an_async_closure_and_restored() {
    let _serial = serial();
    assert_eq!(block_on(fetch(1, "a".into())), "a!#1");
    let guard = swapkit::patch!(fetch, |id, name| async move {
        yield_now().await;
        format!("patched {name} {id}")
    })
    .apply()
    .unwrap();
    assert!(patch::is_patched(swapkit::target!(fetch)));
    assert_eq!(block_on(fetch(2, "b".into())), "patched b 2");
    let status = patch::active()
        .into_iter()
        .find(|t| t.name.ends_with("::fetch"))
        .unwrap();
    assert_eq!(status.signature, "async (u64,String)->String");
    assert_eq!(status.patches[0].hits, 1);
    guard.restore().unwrap();
    assert_eq!(block_on(fetch(3, "c".into())), "c!#3");
}

#[test]
fn an_associated_async_fn_is_patchable() {
    let _serial = serial();
    let guard = swapkit::patch!(
        Store::size,
        |bytes: Vec<u8>| async move { bytes.len() * 10 }
    )
    .apply()
    .unwrap();
    assert_eq!(block_on(Store::size(vec![1, 2])), 20);
    drop(guard);
    assert_eq!(block_on(Store::size(vec![1, 2])), 2);
}

#[test]
fn a_pending_call_finishes_in_the_patch_after_a_restore() {
    let _serial = serial();
    let guard = swapkit::patch!(fetch, |id, _name| async move {
        yield_now().await;
        format!("old patch {id}")
    })
    .apply()
    .unwrap();
    let mut pending = Box::pin(fetch(7, "x".into()));
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(
        pending.as_mut().poll(&mut cx).is_pending(),
        "started in the patch"
    );
    guard.restore().unwrap();
    assert_eq!(
        block_on(fetch(8, "y".into())),
        "y!#8",
        "new calls run the original"
    );
    assert_eq!(
        block_on(pending),
        "old patch 7",
        "the pending call kept its patch"
    );
}

#[test]
fn a_panic_in_an_async_patch_becomes_the_targets_error() {
    let _serial = serial();
    let guard = swapkit::patch!(lookup, |id| async move {
        yield_now().await;
        if id == 13 {
            panic!("no thirteen");
        }
        Ok(id * 3)
    })
    .apply()
    .unwrap();
    assert_eq!(block_on(lookup(2)), Ok(6));
    assert_eq!(
        block_on(lookup(13)),
        Err(LookupError::Patch("no thirteen".into()))
    );
    let unhealthy = patch::active()
        .into_iter()
        .find(|t| t.name.ends_with("::lookup"))
        .and_then(|t| t.patches.into_iter().next())
        .unwrap();
    assert!(!unhealthy.healthy);
    assert_eq!(unhealthy.panics, 1);
    drop(guard);
    assert_eq!(block_on(lookup(0)), Err(LookupError::Missing));
}

#[test]
fn a_panic_in_an_async_patch_without_a_result_propagates() {
    let _serial = serial();
    let guard = swapkit::patch!(fetch, |_id, _name| async move {
        yield_now().await;
        panic!("broken fetch")
    })
    .apply()
    .unwrap();
    let caught = std::panic::catch_unwind(|| block_on(fetch(1, "a".into())));
    let payload = caught.expect_err("the panic reaches the caller");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"broken fetch"));
    drop(guard);
    assert_eq!(block_on(fetch(1, "a".into())), "a!#1");
}

#[test]
fn the_rollout_key_follows_the_task_across_awaits() {
    let _serial = serial();
    let guard = swapkit::patch!(lookup, |id| async move { Ok(id + 1000) })
        .rollout(Rollout::matching(|k| k.as_str() == "vip"))
        .apply()
        .unwrap();
    let vip = block_on(WithKey::new("vip", async {
        yield_now().await;
        lookup(1).await
    }));
    assert_eq!(vip, Ok(1001));
    let other = block_on(WithKey::new("someone", async { lookup(1).await }));
    assert_eq!(other, Ok(2));
    assert_eq!(block_on(lookup(1)), Ok(2), "no key: nobody");
    drop(guard);
}

#[test]
fn async_futures_stay_send() {
    fn assert_send<T: Send>(_: &T) {}
    let f = fetch(1, "a".into());
    assert_send(&f);
    let l = lookup(1);
    assert_send(&l);
}
