#[swapkit::patchable]
mod pricing;

fn main() {}
