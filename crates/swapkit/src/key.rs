//! The request key that rollouts and canaries decide on, and the sticky buckets keys fall in.
//!
//! The host sets a key for each unit of work (a user id, an account, a session). It lives in a
//! thread-local, and [`WithKey`] carries it across `.await`s, so it follows a task from thread
//! to thread on a work-stealing runtime such as tokio.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A rollout key: its text, and a hash taken once when it is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    text: Arc<str>,
    hash: u64,
}

impl Key {
    /// A key from any text: a user id, an account number, a session.
    pub fn new(text: impl AsRef<str>) -> Key {
        let text: Arc<str> = text.as_ref().into();
        let hash = stable_hash(text.as_bytes());
        Key { text, hash }
    }

    /// The key's text, for predicates.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A hash of the text that is the same in every process and on every platform.
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.hash.hash(state)
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Key {
        Key::new(s)
    }
}

impl From<String> for Key {
    fn from(s: String) -> Key {
        Key::new(s)
    }
}

impl From<u64> for Key {
    fn from(n: u64) -> Key {
        Key::new(n.to_string())
    }
}

/// 64-bit FNV-1a followed by a finaliser, so that nearby keys spread over the whole range.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    mix(swapkit_abi::hash::fnv1a64(bytes))
}

/// Buckets a percentage is measured in: 1 bucket is 0.01 %.
pub const BUCKETS: u32 = 10_000;

/// The bucket, out of [`BUCKETS`], that `key_hash` falls in for the patch whose id hashes to
/// `seed`.
#[inline]
pub fn bucket(seed: u64, key_hash: u64) -> u32 {
    (mix(seed ^ key_hash.rotate_left(29)) % BUCKETS as u64) as u32
}

pub(crate) fn buckets_for(percent: f64) -> u32 {
    if percent.is_nan() {
        return 0;
    }
    (percent.clamp(0.0, 100.0) * 100.0).round() as u32
}

/// The splitmix64 finaliser.
pub(crate) fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

thread_local! {
    static CURRENT: RefCell<Option<Key>> = const { RefCell::new(None) };
    /// The current key's hash, beside it: a plain value with no destructor, so the call
    /// path reads it without the lazy-registration check a local with a destructor has.
    static CURRENT_HASH: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The key of the unit of work running on this thread, if one was set.
pub fn current_key() -> Option<Key> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs `f` with `key` as the current key, then restores the previous one.
pub fn with_key<R>(key: impl Into<Key>, f: impl FnOnce() -> R) -> R {
    let _guard = set_key(key);
    f()
}

/// Sets the current key until the guard drops, which restores the previous one.
pub fn set_key(key: impl Into<Key>) -> KeyGuard {
    let key = key.into();
    CURRENT_HASH.set(Some(key.hash));
    let previous = CURRENT.with(|c| c.replace(Some(key)));
    KeyGuard {
        previous,
        _not_send: std::marker::PhantomData,
    }
}

/// Restores the previous key when dropped. Not `Send`: it belongs to the thread it was made on.
#[must_use = "the key is unset again when the guard drops"]
pub struct KeyGuard {
    previous: Option<Key>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let _ = CURRENT_HASH.try_with(|h| h.set(previous.as_ref().map(Key::hash)));
        let _ = CURRENT.try_with(|c| *c.borrow_mut() = previous);
    }
}

/// The current key's hash, without cloning the key: the hot path of rollouts and canaries.
/// A plain cell, readable at any time, even while the thread exits.
#[inline]
pub(crate) fn current_hash() -> Option<u64> {
    CURRENT_HASH.get()
}

/// A future that runs with a key: each poll sets it on whichever thread polls.
///
/// ```
/// use swapkit::patch::{current_key, WithKey};
/// let fut = WithKey::new("user-42", async { current_key().map(|k| k.as_str().to_owned()) });
/// // Poll it on any executor; inside, current_key() is "user-42".
/// # let _ = fut;
/// ```
pub struct WithKey<F> {
    key: Key,
    inner: F,
}

impl<F> WithKey<F> {
    /// Wraps `inner` so that it runs with `key`.
    pub fn new(key: impl Into<Key>, inner: F) -> WithKey<F> {
        WithKey {
            key: key.into(),
            inner,
        }
    }
}

impl<F: Future> Future for WithKey<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned: it is never moved out of `self`, and `key`
        // is never pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let _guard = set_key(this.key.clone());
        // SAFETY: as above.
        unsafe { Pin::new_unchecked(&mut this.inner) }.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nest_and_restore() {
        assert_eq!(current_key(), None);
        with_key("a", || {
            assert_eq!(current_key().unwrap().as_str(), "a");
            with_key(7u64, || assert_eq!(current_key().unwrap().as_str(), "7"));
            assert_eq!(current_key().unwrap().as_str(), "a");
        });
        assert_eq!(current_key(), None);
    }

    #[test]
    fn hashes_are_stable() {
        assert_eq!(
            Key::new("user-1").hash(),
            Key::new(String::from("user-1")).hash()
        );
        assert_ne!(Key::new("user-1").hash(), Key::new("user-2").hash());
    }

    #[test]
    fn with_key_future_sets_the_key_on_every_poll_on_any_thread() {
        let mut polls = 0;
        let mut fut = Box::pin(WithKey::new(
            "task-9",
            std::future::poll_fn(move |_| {
                polls += 1;
                assert_eq!(current_key().unwrap().as_str(), "task-9");
                if polls < 3 {
                    Poll::Pending
                } else {
                    Poll::Ready(polls)
                }
            }),
        ));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(current_key(), None, "the key does not leak out of the poll");
        let other = std::thread::spawn(move || {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            fut.as_mut().poll(&mut cx)
        });
        assert_eq!(other.join().unwrap(), Poll::Ready(3));
    }
}
