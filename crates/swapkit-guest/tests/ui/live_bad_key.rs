//! `#[live]` takes `name = ".."` or `factory = ".."`, nothing else.

#[swapkit_guest::live(kind = "job")]
fn run(n: u64) -> u64 {
    n
}

fn main() {}
