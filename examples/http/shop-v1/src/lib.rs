//! The http example's shop, version 1: 5% off from five items.

/// Percent off from five items.
const DISCOUNT: u64 = 5;

include!("shop.rs");
