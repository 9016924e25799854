#[swapkit_abi::interface]
pub trait Fill {
    fn fill(&self, out: &mut Vec<u8>);
}

fn main() {}
