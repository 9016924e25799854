#[swapkit::patchable]
async fn fetch(id: u64) -> u64 {
    id
}

fn main() {}
