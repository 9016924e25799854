//! The http example's shop, version 2: 10% off from five items.

/// Percent off from five items.
const DISCOUNT: u64 = 10;

include!("../../shop-v1/src/shop.rs");
