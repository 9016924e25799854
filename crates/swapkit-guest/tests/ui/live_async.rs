//! A live function is called synchronously through the ABI, so it cannot be async.

#[swapkit_guest::live]
async fn run(n: u64) -> u64 {
    n
}

fn main() {}
