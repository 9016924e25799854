//! Who a patch applies to: everyone, a sticky percentage of keys, or keys matching a
//! predicate.
//!
//! A percentage rollout puts each key in one of 10,000 buckets by hashing the patch's id
//! together with the key's hash, and admits the buckets below the threshold. The same key
//! lands in the same bucket for the same patch id in every process, so it keeps its variant.
//! Raising the percentage only adds buckets, so no key that was in drops out.

use std::sync::Arc;

use crate::key::{bucket, buckets_for, current_hash, current_key, Key, BUCKETS};

/// Who a patch applies to.
#[derive(Clone)]
pub struct Rollout {
    pub(crate) kind: Kind,
    /// Whether calls made with no key set get the patch.
    pub(crate) without_key: bool,
}

#[derive(Clone)]
pub(crate) enum Kind {
    /// Buckets below this many (out of [`BUCKETS`]) are admitted.
    Share(u32),
    /// Keys the predicate accepts are admitted.
    Matching(Arc<dyn Fn(&Key) -> bool + Send + Sync>),
}

impl Rollout {
    /// Every call, with or without a key. The default.
    pub fn all() -> Rollout {
        Rollout {
            kind: Kind::Share(BUCKETS),
            without_key: true,
        }
    }

    /// A sticky share of keys, in percent (0 to 100, to two decimals). Calls with no key are
    /// not patched; see [`without_key`](Self::without_key).
    pub fn percent(percent: f64) -> Rollout {
        Rollout {
            kind: Kind::Share(buckets_for(percent)),
            without_key: false,
        }
    }

    /// Keys for which `predicate` holds. Calls with no key are not patched.
    pub fn matching(predicate: impl Fn(&Key) -> bool + Send + Sync + 'static) -> Rollout {
        Rollout {
            kind: Kind::Matching(Arc::new(predicate)),
            without_key: false,
        }
    }

    /// Sets whether calls made with no key get the patch.
    pub fn without_key(mut self, applies: bool) -> Rollout {
        self.without_key = applies;
        self
    }

    /// Whether a call with `key` gets the patch whose id hashes to `seed`.
    pub fn admits_key(&self, seed: u64, key: Option<&Key>) -> bool {
        match (&self.kind, key) {
            (_, None) => self.without_key,
            (Kind::Share(n), Some(k)) => bucket(seed, k.hash()) < *n,
            (Kind::Matching(p), Some(k)) => p(k),
        }
    }

    /// [`admits_key`](Self::admits_key) for the current key of this thread.
    #[inline]
    pub(crate) fn admits_current(&self, seed: u64, share: u32) -> bool {
        match &self.kind {
            Kind::Share(_) if share >= BUCKETS && self.without_key => true,
            Kind::Share(_) => match current_hash() {
                Some(h) => bucket(seed, h) < share,
                None => self.without_key,
            },
            Kind::Matching(p) => match current_key() {
                Some(k) => p(&k),
                None => self.without_key,
            },
        }
    }

    /// A description for status reports.
    pub(crate) fn describe(&self, share: u32) -> String {
        let who = match &self.kind {
            Kind::Share(_) if share >= BUCKETS => "all keys".to_owned(),
            Kind::Share(_) => format!("{:.2}% of keys", share as f64 / 100.0),
            Kind::Matching(_) => "keys matching a predicate".to_owned(),
        };
        if self.without_key {
            format!("{who}, and calls with no key")
        } else {
            who
        }
    }
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout::all()
    }
}

impl std::fmt::Debug for Rollout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let share = match self.kind {
            Kind::Share(n) => n,
            Kind::Matching(_) => 0,
        };
        f.write_str(&self.describe(share))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_to_buckets() {
        assert_eq!(buckets_for(10.0), 1_000);
        assert_eq!(buckets_for(0.015), 2);
        assert_eq!(buckets_for(250.0), BUCKETS);
        assert_eq!(buckets_for(-1.0), 0);
        assert_eq!(buckets_for(f64::NAN), 0);
    }

    #[test]
    fn no_key_follows_the_setting() {
        assert!(Rollout::all().admits_key(1, None));
        assert!(!Rollout::percent(100.0).admits_key(1, None));
        assert!(Rollout::percent(0.0).without_key(true).admits_key(1, None));
        assert!(!Rollout::matching(|_| true).admits_key(1, None));
    }

    #[test]
    fn predicates_see_the_key() {
        let beta = Rollout::matching(|k| k.as_str().starts_with("beta-"));
        assert!(beta.admits_key(1, Some(&Key::new("beta-7"))));
        assert!(!beta.admits_key(1, Some(&Key::new("user-7"))));
    }
}
