#[swapkit_abi::interface]
pub trait Parse {
    type Output;
    fn parse(&self, text: &str) -> u64;
}

fn main() {}
