//! The gate before publish: a new generation the host may call before any request reaches it.

use std::sync::{Arc, OnceLock};

use swapkit_abi::Interface;

use crate::call::{Pin, Pinned};
use crate::error::BoxError;
use crate::generation::Generation;
use crate::route::Variant;
use crate::trigger::Trigger;

/// The host's check of a new generation before it is published
/// ([`SwapperBuilder::before_publish`](crate::SwapperBuilder::before_publish)).
pub(crate) type BeforePublish = Arc<dyn Fn(&Candidate<'_>) -> Result<(), BoxError> + Send + Sync>;

/// A generation that is built (its plugins loaded, migrated and initialised) but not yet
/// published: the host's [`before_publish`](crate::SwapperBuilder::before_publish) check
/// calls it through [`client`](Self::client) for smoke calls and invariants. No request
/// reaches it before the check returns `Ok`; an error vetoes it, and the current generation
/// keeps serving.
///
/// In a canary's candidate, calls into the canaried plugin go to the canary.
pub struct Candidate<'a> {
    pin: Pin,
    trigger: &'a Trigger,
    loaded: &'a [(String, String)],
}

impl<'a> Candidate<'a> {
    pub(crate) fn new(
        generation: Arc<Generation>,
        trigger: &'a Trigger,
        loaded: &'a [(String, String)],
    ) -> Candidate<'a> {
        let choice = generation
            .route()
            .map(|_| Arc::new(OnceLock::from(Variant::Canary)));
        Candidate {
            pin: Pin::with_choice(generation, Some("before_publish".into()), choice),
            trigger,
            loaded,
        }
    }

    /// The number the generation will be published as.
    pub fn generation(&self) -> u64 {
        self.pin.generation()
    }

    /// Its plugins, as `(name, version)`, dependencies first (a canary last).
    pub fn plugins(&self) -> Vec<(String, String)> {
        self.pin.plugins()
    }

    /// The plugins given a new instance, as `(name, version)`: the ones worth checking.
    pub fn loaded(&self) -> &[(String, String)] {
        self.loaded
    }

    /// What asked for the generation.
    pub fn trigger(&self) -> &Trigger {
        self.trigger
    }

    /// A typed client for interface `I` in the candidate.
    pub fn client<I: Interface + ?Sized>(&self) -> I::Client<Pinned> {
        self.pin.client::<I>()
    }

    /// Like [`client`](Self::client), for the plugin named `plugin`.
    pub fn client_of<I: Interface + ?Sized>(&self, plugin: &str) -> I::Client<Pinned> {
        self.pin.client_of::<I>(plugin)
    }
}

impl std::fmt::Debug for Candidate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidate")
            .field("generation", &self.generation())
            .field("trigger", &self.trigger)
            .field("loaded", &self.loaded)
            .finish()
    }
}
