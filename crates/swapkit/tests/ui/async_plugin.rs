// A plugin call is synchronous, so an async function is not open to plugins.
#[swapkit::patchable(plugin)]
async fn fetch(id: u64) -> u64 {
    id
}

fn main() {}
