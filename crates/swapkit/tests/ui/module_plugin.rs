#[swapkit::patchable(plugin)]
mod pricing {
    pub fn quote(units: u64) -> u64 {
        units
    }
}

fn main() {}
