#[swapkit::patchable]
fn largest<T: Ord>(a: T, b: T) -> T {
    a.max(b)
}

fn main() {}
