// A plain struct holds only plain fields: a reference is a pointer into one address space.
#[derive(swapkit::Plain, Clone, Copy)]
#[repr(C)]
pub struct Borrowing {
    pub name: &'static str,
}

fn main() {}
