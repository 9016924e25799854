//! `#[patchable]` on an inline module: every eligible function and method inside becomes
//! patchable, the rest is left as it is with a note in the registry.

use swapkit::patch;

#[swapkit::patchable]
mod shop {
    pub fn price(units: u64) -> u64 {
        units * 100
    }

    pub fn label(name: &str) -> String {
        format!("<{name}>")
    }

    // Not eligible: left as they are, each with a note.
    pub fn largest<T: Ord>(items: Vec<T>) -> Option<T> {
        items.into_iter().max()
    }

    pub const fn fixed() -> u64 {
        7
    }

    pub fn count(items: impl IntoIterator<Item = u64>) -> usize {
        items.into_iter().count()
    }

    // Left out on purpose: no slot, no note.
    #[swapkit::patchable(skip)]
    pub fn hot(x: u64) -> u64 {
        x + 1
    }

    // Its own attribute wins: open to plugins.
    #[swapkit::patchable(plugin)]
    pub fn tax(cents: u64) -> u64 {
        cents / 10
    }

    // Only one of these exists; each slot comes and goes with its function.
    #[cfg(unix)]
    pub fn platform() -> &'static str {
        "unix"
    }
    #[cfg(not(unix))]
    pub fn platform() -> &'static str {
        "other"
    }

    pub struct Cart {
        pub items: Vec<u64>,
    }

    impl Cart {
        pub fn total(&self) -> u64 {
            self.items.iter().sum()
        }

        // Not eligible: takes self by value.
        pub fn into_items(self) -> Vec<u64> {
            self.items
        }
    }

    pub trait Priced {
        fn cents(&self) -> u64;

        /// Not overridden by Cart: patchable on Cart through a copy of this body.
        fn discounted(&self) -> u64 {
            self.cents() * 9 / 10
        }

        /// Overridden by Cart: its override is patched, not this.
        fn shipping(&self) -> u64 {
            500
        }

        #[swapkit::patchable(skip)]
        fn name(&self) -> &'static str {
            "item"
        }
    }

    impl Priced for Cart {
        fn cents(&self) -> u64 {
            self.total()
        }

        fn shipping(&self) -> u64 {
            0
        }
    }

    pub mod nested {
        pub fn inner(x: u32) -> u32 {
            x * 2
        }
    }
}

use shop::{Cart, Priced};

fn cart() -> Cart {
    Cart {
        items: vec![100, 200],
    }
}

#[test]
fn every_eligible_function_and_method_of_the_module_is_patchable() {
    assert_eq!(shop::price(2), 200);
    let g = swapkit::patch!(shop::price, |units| units * 90)
        .apply()
        .unwrap();
    assert_eq!(shop::price(2), 180);
    drop(g);
    assert_eq!(shop::price(2), 200);

    let g = swapkit::patch!(shop::label, |name| name.to_uppercase())
        .apply()
        .unwrap();
    assert_eq!(shop::label("a"), "A");
    drop(g);

    let g = swapkit::patch!(shop::nested::inner, |x| x + 1)
        .apply()
        .unwrap();
    assert_eq!(shop::nested::inner(4), 5);
    drop(g);

    let g = swapkit::patch!(shop::platform, || "patched")
        .apply()
        .unwrap();
    assert_eq!(shop::platform(), "patched");
    drop(g);

    let g = swapkit::patch!(Cart::total, |c| c.items.len() as u64)
        .apply()
        .unwrap();
    assert_eq!(cart().total(), 2);
    assert_eq!(cart().cents(), 2, "the trait method calls the patched one");
    drop(g);
    assert_eq!(cart().total(), 300);

    assert!(swapkit::target!(shop::tax).accepts_plugins());
}

#[test]
fn trait_default_methods_not_overridden_are_patchable_on_the_impl() {
    assert_eq!(cart().discounted(), 270, "the copy behaves as the default");
    assert_eq!(cart().shipping(), 0);
    assert_eq!(cart().name(), "item");
    let g = swapkit::patch!(<Cart as Priced>::discounted, |c| c.cents() / 2)
        .apply()
        .unwrap();
    assert_eq!(cart().discounted(), 150);
    drop(g);
    assert_eq!(cart().discounted(), 270);
    let g = swapkit::patch!(<Cart as Priced>::shipping, |_| 42)
        .apply()
        .unwrap();
    assert_eq!(cart().shipping(), 42);
    drop(g);

    let names: Vec<&str> = patch::registry().iter().map(|t| t.name).collect();
    assert!(
        names.contains(&"patch_module::shop::<Cart as Priced>::discounted"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.ends_with("::name")),
        "a default marked skip stays out: {names:?}"
    );
}

#[test]
fn ineligible_items_are_skipped_with_a_note_and_still_work() {
    assert_eq!(shop::largest(vec![3, 9, 4]), Some(9));
    assert_eq!(shop::fixed(), 7);
    assert_eq!(shop::count([1, 2, 3]), 3);
    assert_eq!(shop::hot(1), 2);
    assert_eq!(cart().into_items(), [100, 200]);

    let skipped = patch::skipped();
    let reason = |name: &str| {
        skipped
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no note for {name}: {skipped:#?}"))
            .reason
    };
    assert!(reason("patch_module::shop::largest").contains("generic"));
    assert!(reason("patch_module::shop::fixed").contains("const fn"));
    assert!(reason("patch_module::shop::count").contains("impl Trait"));
    assert!(reason("patch_module::shop::Cart::into_items").contains("self"));
    for s in &skipped {
        assert!(!s.reason.contains('\n'), "one line: {s:?}");
    }
    assert!(
        !skipped.iter().any(|s| s.name.ends_with("::hot")),
        "skip leaves no note: {skipped:#?}"
    );
    let names: Vec<&str> = patch::registry().iter().map(|t| t.name).collect();
    assert!(!names.contains(&"patch_module::shop::hot"), "{names:?}");
    assert!(!names.contains(&"patch_module::shop::largest"), "{names:?}");
}
