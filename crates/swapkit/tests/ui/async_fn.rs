// An async patchable function takes owned arguments: the replacement's future owns them.
#[swapkit::patchable]
async fn fetch(id: &str) -> usize {
    id.len()
}

fn main() {}
