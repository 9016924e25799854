#[swapkit::patchable(plugins)]
fn price(cents: u64) -> u64 {
    cents
}

fn main() {}
