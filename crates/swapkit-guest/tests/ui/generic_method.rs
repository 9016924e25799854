#[swapkit_abi::interface]
pub trait Store {
    fn get<K: AsRef<str>>(&self, key: K) -> u64;
}

fn main() {}
