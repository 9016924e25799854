// An item of a patchable module that carries its own #[patchable] is not skipped: what it
// would be alone, a compile error, it is inside the module too.
#[swapkit::patchable]
mod pricing {
    #[swapkit::patchable]
    pub fn largest<T: Ord>(a: T, b: T) -> T {
        a.max(b)
    }
}

fn main() {}
