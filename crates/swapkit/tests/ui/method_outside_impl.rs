struct Shop;

impl Shop {
    #[swapkit::patchable]
    fn price(&self) -> u64 {
        1
    }
}

fn main() {}
