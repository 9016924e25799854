//! The fleet example's pricer, a faulty release: every call panics.

const DISCOUNT: u64 = 10;
const FAULTY: bool = true;

include!("../../pricer-v1/src/pricer.rs");
