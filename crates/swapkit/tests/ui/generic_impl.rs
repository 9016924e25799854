struct Wrapper<T>(T);

#[swapkit::patchable]
impl<T: Clone> Wrapper<T> {
    fn get(&self) -> T {
        self.0.clone()
    }
}

fn main() {}
