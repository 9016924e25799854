//! How a generation with a canary splits calls between its two versions of one plugin.
//!
//! The split is part of the generation and never changes in it: raising the percentage,
//! promoting and aborting each publish a new generation, so a call or a pin keeps the split
//! it started with. A call picks its version by, in order: the pin's earlier choice (a pinned
//! unit of work sees one version), the first rule whose predicate admits the call's key, and
//! the key's sticky bucket, the same bucketing as a patch rollout. Calls without a key go to
//! the split's default.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};

use crate::key::{bucket, current_hash, current_key, stable_hash, Key, BUCKETS};

/// One of the two versions of a plugin with a canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The version that served before the canary started.
    Stable = 0,
    /// The new version on trial.
    Canary = 1,
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Variant::Stable => "stable",
            Variant::Canary => "canary",
        })
    }
}

/// A key predicate that sends the keys it admits to a version.
#[derive(Clone)]
pub(crate) struct Rule {
    pub predicate: Arc<dyn Fn(&Key) -> bool + Send + Sync>,
    pub variant: Variant,
}

/// How calls are split between the versions: set by the canary's operations.
#[derive(Clone)]
pub(crate) struct Split {
    /// The canary's number in this swapper, so that its gate never acts on a later one.
    pub number: u64,
    /// Buckets (of [`BUCKETS`]) whose keys go to the canary.
    pub share: u32,
    /// The bucketing seed: the plugin and the canary's version, so that the same key lands in
    /// the same bucket in every process and at every percentage of one canary.
    pub seed: u64,
    /// Where calls without a key go.
    pub without_key: Variant,
    /// Checked before the share, first match wins.
    pub rules: Arc<[Rule]>,
}

impl Split {
    /// The seed of a canary of `plugin` at `version`.
    pub fn seed(plugin: &str, version: &str) -> u64 {
        stable_hash(format!("canary:{plugin}@{version}").as_bytes())
    }
}

/// A generation's split, with the places of its two instances.
pub(crate) struct Route {
    /// The index of the stable version in the generation's plugins.
    pub stable: usize,
    /// The index of the canary.
    pub canary: usize,
    pub split: Split,
    /// One call in `mask + 1` per thread is timed, for each version (see [`Route::sampled`]).
    masks: [u32; 2],
}

/// The share of calls that are timed, in all: each version gets half of it, so a version
/// with few calls has each of them timed more often. Timing a call costs two clock reads
/// (about 45 ns here), so this costs about 1.4 ns a call on average.
const TIMED: f64 = 1.0 / 32.0;

impl Route {
    pub fn new(stable: usize, canary: usize, split: Split) -> Route {
        let canary_share = split.share as f64 / BUCKETS as f64;
        let mask = |share: f64| {
            let period = (share / (TIMED / 2.0)).clamp(1.0, 64.0) as u32;
            period.next_power_of_two() - 1
        };
        let masks = [mask(1.0 - canary_share), mask(canary_share)];
        Route {
            stable,
            canary,
            split,
            masks,
        }
    }

    /// The index in the generation's plugins of `variant`.
    #[inline]
    pub fn index(&self, variant: Variant) -> usize {
        match variant {
            Variant::Stable => self.stable,
            Variant::Canary => self.canary,
        }
    }

    /// The version a call on this thread goes to; `pin` is the choice of the pin it runs
    /// under, made by its first routed call and kept.
    #[inline]
    pub fn choose(&self, pin: Option<&OnceLock<Variant>>) -> Variant {
        match pin {
            Some(choice) => *choice.get_or_init(|| self.by_key()),
            None => self.by_key(),
        }
    }

    #[inline]
    fn by_key(&self) -> Variant {
        if !self.split.rules.is_empty() {
            return self.by_rules();
        }
        match current_hash() {
            Some(hash) if bucket(self.split.seed, hash) < self.split.share => Variant::Canary,
            Some(_) => Variant::Stable,
            None => self.split.without_key,
        }
    }

    #[cold]
    fn by_rules(&self) -> Variant {
        let Some(key) = current_key() else {
            return self.split.without_key;
        };
        if let Some(rule) = self.split.rules.iter().find(|r| (r.predicate)(&key)) {
            return rule.variant;
        }
        if bucket(self.split.seed, key.hash()) < self.split.share {
            Variant::Canary
        } else {
            Variant::Stable
        }
    }

    /// Whether to time this call into `variant`: a per-thread count, with no shared write.
    #[inline]
    pub fn sampled(&self, variant: Variant) -> bool {
        let i = variant as usize;
        let mask = self.masks[i];
        TICKS
            .try_with(|t| {
                let n = t[i].get().wrapping_add(1);
                t[i].set(n);
                n & mask == 0
            })
            .unwrap_or(false)
    }
}

thread_local! {
    static TICKS: [Cell<u32>; 2] = const { [Cell::new(0), Cell::new(0)] };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::with_key;

    fn route(percent: f64, rules: Vec<Rule>) -> Route {
        let split = Split {
            number: 1,
            share: crate::key::buckets_for(percent),
            seed: Split::seed("p", "2.0.0"),
            without_key: Variant::Stable,
            rules: rules.into(),
        };
        Route::new(0, 1, split)
    }

    #[test]
    fn a_key_on_the_canary_stays_on_it_as_the_share_grows() {
        let (at10, at50) = (route(10.0, vec![]), route(50.0, vec![]));
        let mut on = 0;
        for user in 0..10_000u64 {
            with_key(user, || {
                if at10.choose(None) == Variant::Canary {
                    on += 1;
                    assert_eq!(
                        at50.choose(None),
                        Variant::Canary,
                        "user {user} dropped out"
                    );
                }
            });
        }
        assert!((900..1100).contains(&on), "10% of 10,000 keys, got {on}");
    }

    #[test]
    fn rules_come_first_and_no_key_takes_the_default() {
        let beta = Rule {
            predicate: Arc::new(|k: &Key| k.as_str().starts_with("beta-")),
            variant: Variant::Canary,
        };
        let r = route(0.0, vec![beta]);
        assert_eq!(with_key("beta-1", || r.choose(None)), Variant::Canary);
        assert_eq!(with_key("user-1", || r.choose(None)), Variant::Stable);
        assert_eq!(r.choose(None), Variant::Stable);
    }

    #[test]
    fn a_pin_keeps_its_first_choice() {
        let r = route(50.0, vec![]);
        let choice = OnceLock::new();
        let first = with_key("user-7", || r.choose(Some(&choice)));
        for other in 0..100u64 {
            assert_eq!(with_key(other, || r.choose(Some(&choice))), first);
        }
    }

    #[test]
    fn a_small_share_is_timed_more_often() {
        let r = route(1.0, vec![]);
        let timed = |v| (0..6400).filter(|_| r.sampled(v)).count();
        assert_eq!(timed(Variant::Canary), 6400, "every call at 1%");
        assert_eq!(timed(Variant::Stable), 100);
    }
}
