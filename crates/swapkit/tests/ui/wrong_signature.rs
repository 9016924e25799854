#[swapkit::patchable]
fn price(cents: u64) -> u64 {
    cents
}

fn main() {
    let _ = swapkit::patch!(price, |cents: u32| cents as u64).apply();
}
