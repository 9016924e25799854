//! The cost of `#[patchable]`: an unpatched call against the same plain function (marked
//! alone, and through `#[patchable]` on its module), a call patched with a closure, one at the
//! bottom of a stack of three, one patched from a native plugin, a call under a percentage
//! rollout, and one rollout decision.

use std::hint::black_box;
use std::time::Duration;

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use swapkit::patch::{self, bucket, Key, Rollout};

#[inline(never)]
fn plain(x: u64) -> u64 {
    x.wrapping_mul(3).wrapping_add(1)
}

#[swapkit::patchable(plugin)]
#[inline(never)]
fn patchable(x: u64) -> u64 {
    x.wrapping_mul(3).wrapping_add(1)
}

/// The same function, made patchable by the module form.
#[swapkit::patchable]
mod whole {
    #[inline(never)]
    pub fn patchable(x: u64) -> u64 {
        x.wrapping_mul(3).wrapping_add(1)
    }
}

fn patching(c: &mut Criterion) {
    let mut group = c.benchmark_group("patch");
    group.bench_function("plain_fn", |b| b.iter(|| plain(black_box(7))));
    group.bench_function("patchable_unpatched", |b| {
        b.iter(|| patchable(black_box(7)))
    });

    let g = swapkit::patch!(patchable, |x| x.wrapping_mul(5))
        .apply()
        .unwrap();
    group.bench_function("patched_closure", |b| b.iter(|| patchable(black_box(7))));
    g.restore().unwrap();

    group.bench_function("module_unpatched", |b| {
        b.iter(|| whole::patchable(black_box(7)))
    });

    // Two patches above that admit no key of this thread: the call checks them, then runs
    // the bottom one.
    let bottom = swapkit::patch!(patchable, |x| x.wrapping_mul(5))
        .id("bottom")
        .apply()
        .unwrap();
    let above: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|id| {
            swapkit::patch!(patchable, |x| x)
                .id(id)
                .rollout(Rollout::percent(0.0))
                .apply()
                .unwrap()
        })
        .collect();
    let key = patch::set_key("user-1234");
    assert_eq!(patchable(7), 35);
    group.bench_function("patched_bottom_of_three", |b| {
        b.iter(|| patchable(black_box(7)))
    });
    drop((above, bottom, key));

    let artifact = support::release_artifacts(&["fixture-patches-bench"]).remove(0);
    let swapper = swapkit::Swapper::new().unwrap();
    let set = swapper.patches_from(&artifact).unwrap().apply().unwrap();
    assert_eq!(patchable(7), 35);
    group.bench_function("patched_from_plugin", |b| {
        b.iter(|| patchable(black_box(7)))
    });
    set.restore();

    let g = swapkit::patch!(patchable, |x| x.wrapping_mul(5))
        .rollout(Rollout::percent(10.0))
        .apply()
        .unwrap();
    let _key = patch::set_key("user-1234");
    group.bench_function("patched_percent_rollout", |b| {
        b.iter(|| patchable(black_box(7)))
    });
    g.restore().unwrap();

    let key = Key::new("user-1234");
    let r = Rollout::percent(10.0);
    group.bench_function("rollout_decision", |b| {
        b.iter(|| r.admits_key(black_box(42), Some(black_box(&key))))
    });
    group.bench_function("rollout_bucket", |b| {
        b.iter(|| bucket(black_box(42), black_box(0x1234_5678)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = patching
}
criterion_main!(benches);
