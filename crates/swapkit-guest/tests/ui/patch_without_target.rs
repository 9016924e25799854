#[swapkit_guest::patch]
fn price(cents: u64) -> u64 {
    cents
}

fn main() {}
