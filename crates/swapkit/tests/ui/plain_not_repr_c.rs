// Without `#[repr(C)]`, the compiler may lay the fields out differently in host and plugin.
#[derive(swapkit::Plain, Clone, Copy)]
pub struct Loose {
    pub x: f64,
    pub y: f64,
}

fn main() {}
