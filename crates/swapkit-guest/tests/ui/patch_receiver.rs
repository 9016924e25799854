struct Shop;

impl Shop {
    // A patch is a free function; a method target takes its receiver as the first argument.
    #[swapkit_guest::patch("host::Shop::total")]
    fn total(&self) -> u64 {
        0
    }
}

fn main() {}
