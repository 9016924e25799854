// A plugin gets copies of the arguments, so it cannot write through `&mut`.
#[swapkit::patchable(plugin)]
fn scale(values: &mut Vec<u64>, by: u64) {
    for v in values.iter_mut() {
        *v *= by;
    }
}

fn main() {}
