//! The fleet example's pricer, version 1: 5% off.

const DISCOUNT: u64 = 5;
const FAULTY: bool = false;

include!("pricer.rs");
