// A zero-sized plain struct carries nothing, and a host could not count its elements in a
// result: the derive refuses it.
#[derive(swapkit::Plain, Clone, Copy)]
#[repr(C)]
pub struct Nothing {
    pub none: [bool; 0],
}

fn main() {}
