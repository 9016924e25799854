//! The fleet example's pricer, version 2: 10% off.

const DISCOUNT: u64 = 10;
const FAULTY: bool = false;

include!("../../pricer-v1/src/pricer.rs");
