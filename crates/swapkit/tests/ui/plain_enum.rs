// An enum may hold a discriminant its type does not allow, so it keeps the encoded path.
#[derive(swapkit::Plain, Clone, Copy)]
#[repr(C)]
pub enum Side {
    Buy,
    Sell,
}

fn main() {}
