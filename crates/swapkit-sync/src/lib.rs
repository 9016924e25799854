//! swapkit's lock-free core: what every call into a plugin and every patched function stands
//! on, kept in a crate of its own so that Miri, loom and ThreadSanitizer check it without
//! building the rest of swapkit.
//!
//! - [`HazardCell`] holds an `Arc<T>` that calls protect for their length with a store to a
//!   per-thread hazard slot and a compiler fence: no lock, no shared write, no
//!   read-modify-write. A writer swaps it at any time; a superseded value is released by the
//!   writer or by the last call to leave it, never while a call holds it and never later than
//!   that last call. swapkit's current generation and each patch slot is one.
//! - [`StripedCounter`] counts with a plain store on a per-thread stripe.
//! - [`Places`] is a bounded pool of values in which a thread may keep a place for itself:
//!   its next use enters it with a store to a flag only it writes (in its keeper, `keeper.rs`)
//!   and a compiler fence.
//!
//! The protocol, its ordering argument, and what happens when the kernel refuses the
//! writer's barrier, are in the docs of `cell.rs`, `record.rs` and `fence.rs`. How it is
//! verified: `scripts/verify-sync.sh` runs the unit tests under Miri with several seeds, the
//! loom models (`tests/loom.rs`), ThreadSanitizer over the stress tests, and the stress tests
//! many times while other threads keep every core busy.
//!
//! Example: a call holds the value it started with across a swap.
//!
//! ```
//! use std::sync::Arc;
//! use swapkit_sync::HazardCell;
//!
//! let current = HazardCell::new(Arc::new(1));
//! let call = current.enter_full();
//! current.swap(Some(Arc::new(2)));
//! assert_eq!(*call, 1);
//! assert_eq!(*current.enter_full(), 2);
//! ```

#![deny(missing_docs)]

mod cell;
pub mod fence;
mod keeper;
mod places;
mod record;
mod stripe;
mod sync;

pub use cell::{Guard, HazardCell};
pub use places::{Held, Miss, Places, MAX_COOL};
pub use stripe::{StripedCounter, OWNED};

/// Hazard slots per thread before guards borrow spare records.
pub const SLOTS_PER_THREAD: usize = record::SLOTS;
