// `plain = [..]` lists structs that derive Plain; listing another type is an error.
#[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
#[repr(C)]
pub struct Quote {
    pub bid: f64,
    pub ask: f64,
}

#[swapkit::interface(plain = [Quote])]
pub trait Pricer {
    fn mid(&self, quote: Quote) -> f64;
}

fn main() {}
