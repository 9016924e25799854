#[swapkit_abi::interface]
pub trait Fetch {
    async fn fetch(&self, url: &str) -> String;
}

fn main() {}
