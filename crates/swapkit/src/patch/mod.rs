//! Runtime function patching: replace one function of a running program, roll the
//! replacement out to part of the traffic, and restore it, with no recompile.
//!
//! Mark a function, or an `impl` block, `#[swapkit::patchable]`. Each call then goes through
//! a static slot. While the slot is empty, that costs one atomic load and a predictable
//! branch, and the rest of the function is untouched, so inlining cannot defeat it: an
//! inlined copy carries the check with it.
//!
//! A replacement is a closure of this process ([`patch!`](crate::patch!)) or a function
//! exported by a plugin ([`PluginPatches`], for targets marked `#[patchable(plugin)]`).
//!
//! Example: patch, roll out, restore.
//!
//! ```
//! #[swapkit::patchable]
//! fn price(cents: u64, qty: u32) -> u64 {
//!     cents * qty as u64
//! }
//!
//! // A 10% discount, for everyone.
//! let guard = swapkit::patch!(price, |cents, qty| cents * qty as u64 * 9 / 10).apply().unwrap();
//! assert_eq!(price(100, 2), 180);
//! assert!(swapkit::target!(price).is_patched());
//!
//! // Only for a sticky half of the users; the key comes from the request context.
//! guard.set_percent(50.0).unwrap();
//! let discounted = (0..1000)
//!     .filter(|user| swapkit::patch::with_key(*user as u64, || price(100, 1) == 90))
//!     .count();
//! assert!((400..600).contains(&discounted));
//!
//! drop(guard); // restored
//! assert_eq!(price(100, 2), 200);
//! ```

pub(crate) mod plugin;
mod rollout;
mod target;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

pub use crate::key::{bucket, current_key, set_key, with_key, Key, KeyGuard, WithKey, BUCKETS};
pub use plugin::PluginPatches;
pub use rollout::Rollout;
pub use swapkit_abi::PatchDecl;
pub use target::{call_original, PanicPolicy, PatchPanic, PatchSource, Target, TargetInfo};

use target::{AnyTarget, PatchOptions, Pick};

/// Why a patch could not be applied, changed or restored. On an error, nothing changed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The target already has a patch with this id. Patches stack, but each needs its own id:
    /// the id names it in the registry, seeds its rollout and picks it for a restore.
    #[error(
        "`{target}` already has a patch with id `{patch}`; give the new one another id with \
         `.id(..)` to stack it above, or restore that patch first"
    )]
    AlreadyPatched {
        /// The target.
        target: &'static str,
        /// The id both patches have.
        patch: String,
    },
    /// The target has no patch (or not this one).
    #[error("`{target}` is not patched by this patch (it may have been restored already)")]
    NotPatched {
        /// The target.
        target: &'static str,
    },
    /// A patch set names one target twice.
    #[error("the patch set names `{target}` twice; a set patches each target once")]
    DuplicateTarget {
        /// The target.
        target: &'static str,
    },
    /// A patch set failed at one target, and none of it was applied.
    #[error("the patch set was not applied: {source}")]
    SetFailed {
        /// What failed.
        #[source]
        source: Box<PatchError>,
    },
    /// A percentage was asked of a patch whose rollout is a predicate.
    #[error(
        "patch `{patch}` of `{target}` rolls out by predicate, so it has no percentage to change"
    )]
    NotAShare {
        /// The target.
        target: &'static str,
        /// The patch.
        patch: String,
    },
    /// The plugin that should supply patches could not be loaded.
    #[error("loading the patch plugin failed: {source}")]
    Load {
        /// Why.
        #[source]
        source: Arc<crate::LoadError>,
    },
    /// The plugin exports no patches.
    #[error("plugin `{plugin}` ({origin}) exports no patches; list them in `patches: [..]` of its export_plugin!")]
    NoPatches {
        /// The plugin.
        plugin: String,
        /// Its artifact.
        origin: String,
    },
    /// A plugin patches a function this binary does not have.
    #[error(
        "plugin `{plugin}` patches `{target}`, which is not a #[patchable] function of this \
         binary; `swapkit::patch::registry()` lists the ones it has"
    )]
    UnknownTarget {
        /// The target the plugin names.
        target: String,
        /// The plugin.
        plugin: String,
    },
    /// A plugin's replacement has another signature than its target.
    #[error(
        "plugin `{plugin}` patches `{target}` with signature `{found}`, but the target's is \
         `{expected}`; rebuild the plugin against the host's signature"
    )]
    SignatureMismatch {
        /// The target.
        target: &'static str,
        /// The plugin.
        plugin: String,
        /// The target's signature.
        expected: &'static str,
        /// The plugin's.
        found: String,
    },
    /// A plugin tried to patch a function not marked `#[patchable(plugin)]`.
    #[error(
        "`{target}` is #[patchable] but not open to plugins; mark it #[patchable(plugin)] so \
         that its arguments and result can cross to a plugin"
    )]
    NotOpenToPlugins {
        /// The target.
        target: &'static str,
    },
}

/// A patch ready to apply, typed by the target's signature. Made by `swapkit::patch!`.
#[must_use = "a patch does nothing until `.apply()`"]
pub struct PatchBuilder<F: ?Sized + 'static> {
    target: &'static Target<F>,
    replacement: Box<F>,
    id: Option<String>,
    rollout: Rollout,
    on_panic: PanicPolicy,
    source: PatchSource,
}

impl<F: ?Sized + Send + Sync + 'static> PatchBuilder<F> {
    #[doc(hidden)]
    pub fn new(target: &'static Target<F>, replacement: Box<F>, source: PatchSource) -> Self {
        PatchBuilder {
            target,
            replacement,
            id: None,
            rollout: Rollout::all(),
            on_panic: PanicPolicy::default(),
            source,
        }
    }

    /// Names the patch. The id seeds percentage rollouts, so a key keeps its variant for as
    /// long as the id stays the same. Default: the target's name.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Who the patch applies to. Default: [`Rollout::all`].
    pub fn rollout(mut self, rollout: Rollout) -> Self {
        self.rollout = rollout;
        self
    }

    /// What happens when the replacement panics. Default: [`PanicPolicy::Fallback`].
    pub fn on_panic(mut self, policy: PanicPolicy) -> Self {
        self.on_panic = policy;
        self
    }

    /// Applies the patch. It is restored when the guard drops, unless the guard is
    /// [kept](PatchGuard::keep).
    pub fn apply(self) -> Result<PatchGuard, PatchError> {
        self.apply_armed(None)
    }

    fn apply_armed(self, armed: Option<Arc<AtomicBool>>) -> Result<PatchGuard, PatchError> {
        let options = PatchOptions {
            id: self.id,
            rollout: self.rollout,
            on_panic: self.on_panic,
            source: self.source,
            armed,
        };
        self.target.apply(self.replacement, options)
    }
}

/// An applied patch. Dropping it restores the target; so does [`restore`](Self::restore).
#[must_use = "dropping the guard restores the patch at once; call .keep() to leave it applied"]
pub struct PatchGuard {
    target: &'static dyn AnyTarget,
    /// The patch's serial number, unique for the life of the process.
    serial: u64,
    restore_on_drop: bool,
}

impl PatchGuard {
    pub(crate) fn new(target: &'static dyn AnyTarget, serial: u64) -> PatchGuard {
        PatchGuard {
            target,
            serial,
            restore_on_drop: true,
        }
    }

    /// The target's name.
    pub fn target(&self) -> &'static str {
        self.target.info().name
    }

    /// Takes this patch off its target now; other patches stacked on the target stay.
    /// Calls already inside the patch finish in it; its code and captures are freed once the
    /// last of them returns.
    pub fn restore(mut self) -> Result<(), PatchError> {
        self.restore_on_drop = false;
        self.target.restore(Pick::Serial(self.serial)).map(|_| ())
    }

    /// Changes the share of keys the patch applies to, live. Keys already in stay in when it
    /// rises.
    pub fn set_percent(&self, percent: f64) -> Result<(), PatchError> {
        self.target
            .set_share(self.serial, crate::key::buckets_for(percent))
    }

    /// Leaves the patch applied after the guard is gone; restore it with [`restore`].
    pub fn keep(mut self) {
        self.restore_on_drop = false;
    }
}

impl Drop for PatchGuard {
    fn drop(&mut self) {
        if self.restore_on_drop {
            let _ = self.target.restore(Pick::Serial(self.serial));
        }
    }
}

impl std::fmt::Debug for PatchGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatchGuard")
            .field("target", &self.target())
            .finish()
    }
}

/// Restores every patch `target` has, so its original runs again. Returns their ids, the
/// one checked first first.
pub fn restore<F: ?Sized + Send + Sync + 'static>(
    target: &'static Target<F>,
) -> Result<Vec<String>, PatchError> {
    AnyTarget::restore(target, Pick::All)
}

/// Takes the patch with this id off `target`, leaving any others stacked on it. For a patch
/// whose guard was [kept](PatchGuard::keep).
pub fn restore_id<F: ?Sized + Send + Sync + 'static>(
    target: &'static Target<F>,
    id: &str,
) -> Result<(), PatchError> {
    AnyTarget::restore(target, Pick::Id(id)).map(|_| ())
}

/// Whether `target` has any patch applied.
pub fn is_patched<F: ?Sized + 'static>(target: &'static Target<F>) -> bool {
    target.is_patched()
}

/// Several patches applied together, all or nothing, and restored together.
///
/// The patches are installed disarmed and then armed by a single store, so a call never sees
/// one patch of the set without the others once the set is live. If any target fails (it is
/// already patched, or named twice), the ones installed so far are removed again and nothing
/// changes.
#[derive(Default)]
#[must_use = "a patch set does nothing until `.apply()`"]
pub struct PatchSet {
    items: Vec<Box<dyn Pending>>,
}

/// A typed patch waiting in a set.
trait Pending {
    fn target_name(&self) -> &'static str;
    fn target_id(&self) -> usize;
    fn apply_armed(self: Box<Self>, armed: Arc<AtomicBool>) -> Result<PatchGuard, PatchError>;
}

impl<F: ?Sized + Send + Sync + 'static> Pending for PatchBuilder<F> {
    fn target_name(&self) -> &'static str {
        self.target.info().name
    }

    fn target_id(&self) -> usize {
        self.target as *const Target<F> as *const () as usize
    }

    fn apply_armed(self: Box<Self>, armed: Arc<AtomicBool>) -> Result<PatchGuard, PatchError> {
        (*self).apply_armed(Some(armed))
    }
}

impl PatchSet {
    /// An empty set.
    pub fn new() -> PatchSet {
        PatchSet::default()
    }

    /// Adds a patch.
    pub fn with<F: ?Sized + Send + Sync + 'static>(mut self, patch: PatchBuilder<F>) -> PatchSet {
        self.items.push(Box::new(patch));
        self
    }

    /// Applies every patch, or none.
    pub fn apply(self) -> Result<PatchSetGuard, PatchError> {
        let mut seen = std::collections::HashSet::new();
        for item in &self.items {
            if !seen.insert(item.target_id()) {
                let source = Box::new(PatchError::DuplicateTarget {
                    target: item.target_name(),
                });
                return Err(PatchError::SetFailed { source });
            }
        }
        let armed = Arc::new(AtomicBool::new(false));
        let mut guards = Vec::with_capacity(self.items.len());
        for item in self.items {
            match item.apply_armed(armed.clone()) {
                Ok(g) => guards.push(g),
                Err(e) => {
                    // Never armed, so no call ever ran these; dropping the guards removes them.
                    drop(guards);
                    return Err(PatchError::SetFailed {
                        source: Box::new(e),
                    });
                }
            }
        }
        armed.store(true, Ordering::Release);
        Ok(PatchSetGuard { guards, armed })
    }
}

/// An applied patch set. Dropping it restores every patch of the set.
#[must_use = "dropping the guard restores the set at once"]
pub struct PatchSetGuard {
    guards: Vec<PatchGuard>,
    armed: Arc<AtomicBool>,
}

impl std::fmt::Debug for PatchSetGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatchSetGuard")
            .field("targets", &self.targets())
            .finish()
    }
}

impl PatchSetGuard {
    /// The targets the set patches.
    pub fn targets(&self) -> Vec<&'static str> {
        self.guards.iter().map(PatchGuard::target).collect()
    }

    /// Restores every patch of the set. Calls stop seeing the set at one instant.
    pub fn restore(self) {
        drop(self)
    }

    /// Changes the share of keys every patch of the set applies to, live. Patches of a set
    /// made by [`PluginPatches`] share one id, so they admit the same keys.
    pub fn set_percent(&self, percent: f64) -> Result<(), PatchError> {
        self.guards.iter().try_for_each(|g| g.set_percent(percent))
    }
}

impl Drop for PatchSetGuard {
    fn drop(&mut self) {
        // Disarm first, so that the set disappears at one instant, then remove each patch.
        self.armed.store(false, Ordering::Release);
        self.guards.clear();
    }
}

/// The state of one patchable function.
#[derive(Debug, Clone)]
pub struct TargetStatus {
    /// `module::path::function`.
    pub name: &'static str,
    /// Argument and return types.
    pub signature: &'static str,
    /// Its stack of patches, in the order a call checks them (newest first): the first whose
    /// rollout admits the call's key runs. Empty when unpatched.
    pub patches: Vec<PatchStatus>,
}

/// One applied patch.
#[derive(Debug, Clone)]
pub struct PatchStatus {
    /// Its id.
    pub id: String,
    /// Where it came from.
    pub source: PatchSource,
    /// When it was applied.
    pub applied_at: SystemTime,
    /// Who it applies to.
    pub rollout: String,
    /// Whether it is live (a patch of a set is not, until the whole set is).
    pub armed: bool,
    /// Calls it has served.
    pub hits: u64,
    /// Panics caught in it.
    pub panics: u64,
    /// False once it has panicked.
    pub healthy: bool,
}

/// Every `#[patchable]` function linked into this binary, with its stack of patches, sorted
/// by name.
pub fn registry() -> Vec<TargetStatus> {
    let mut all: Vec<TargetStatus> = __private::TARGETS.iter().map(|t| t.status()).collect();
    all.sort_by_key(|t| t.name);
    all
}

/// A function or method that `#[patchable]` on a module left as it is, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// `module::path::function`, `module::path::Type::method` or
    /// `module::path::<Type as Trait>::method`.
    pub name: &'static str,
    /// Why it has no patch slot, in one line.
    pub reason: &'static str,
}

/// The items of `#[patchable]` modules that could not be made patchable, sorted by name: the
/// other half of [`registry`]. Mark one `#[patchable]` itself to turn its note into a compile
/// error, or `#[patchable(skip)]` to leave it out without a note.
pub fn skipped() -> Vec<Skipped> {
    let mut all: Vec<Skipped> = __private::SKIPPED.to_vec();
    all.sort_by_key(|s| s.name);
    all
}

/// Only the patched ones of [`registry`].
pub fn active() -> Vec<TargetStatus> {
    registry()
        .into_iter()
        .filter(|t| !t.patches.is_empty())
        .collect()
}

#[doc(hidden)]
pub mod __private {
    pub use super::target::convert::{NoFrom, ViaFrom, Wrap};
    pub use super::target::{AnyTarget, PatchOptions};

    /// What the outlined patched path of a `#[patchable]` function decided.
    pub enum Outcome<R, A> {
        /// The patch ran; return this.
        Done(R),
        /// Run the original, with these owned arguments handed back.
        Original(A),
    }
    pub use super::plugin::RemoteFn;
    pub use super::target::{resume_panic, BoxFuture, Chosen, PatchCall, PatchFuture};
    pub use super::{PatchBuilder, PatchSource, Target, TargetInfo};
    pub use linkme;
    pub use swapkit_abi::hash::fnv1a64;

    /// Every patch target in the binary, gathered at link time.
    #[linkme::distributed_slice]
    pub static TARGETS: [&'static dyn AnyTarget];

    pub use super::Skipped;

    /// Every item a `#[patchable]` module left as it is, gathered at link time.
    #[linkme::distributed_slice]
    pub static SKIPPED: [Skipped];
}
