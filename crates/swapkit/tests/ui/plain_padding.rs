// A plain struct's bytes cross a lane as they are: padding would copy uninitialised bytes.
#[derive(swapkit::Plain, Clone, Copy)]
#[repr(C)]
pub struct Padded {
    pub flag: u8,
    pub value: u64,
}

fn main() {}
