// An async method's future borrows `self`, so it cannot be patched.
struct Store;

#[swapkit::patchable]
impl Store {
    async fn size(&self) -> usize {
        0
    }
}

fn main() {}
