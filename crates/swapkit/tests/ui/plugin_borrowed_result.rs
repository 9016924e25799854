// A plugin's result comes back by value, so a plugin-patchable function cannot return a borrow.
#[swapkit::patchable(plugin)]
fn first_word(text: &str) -> &str {
    text.split(' ').next().unwrap_or("")
}

fn main() {}
