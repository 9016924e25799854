//! What a user of swapkit must know beyond the API: the limits of each backend, what a
//! client and a pin guarantee, and what the call path and a reload cost. These modules hold
//! documentation only.

#[doc = include_str!("limitations.md")]
pub mod limitations {}

#[doc = include_str!("consistency.md")]
pub mod consistency {}

#[doc = include_str!("performance.md")]
pub mod performance {}

#[doc = include_str!("async_plugins.md")]
pub mod async_plugins {}
