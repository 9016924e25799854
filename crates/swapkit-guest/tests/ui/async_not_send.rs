//! An async method's future may be polled on any thread the host polls the call on, so it
//! must be `Send`: one holding an `Rc` across an await is refused where it is written.

#[swapkit_abi::interface]
pub trait Fetch {
    async fn fetch(&self, url: &str) -> String;
}

struct Mine;

impl Fetch for Mine {
    async fn fetch(&self, url: &str) -> String {
        let shared = std::rc::Rc::new(url.to_owned());
        std::future::ready(()).await;
        (*shared).clone()
    }
}

fn main() {}
