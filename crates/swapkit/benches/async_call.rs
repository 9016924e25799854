//! The cost of an async call into a plugin (issue 33): the shop fixture's `quick`, which
//! completes without awaiting, on the native, static and wasm backends, against `.await` on a
//! `Box<dyn Future>` doing the same work, in the same run; a call that awaits one host
//! service once (it yields to the runtime once) against a boxed future awaiting a boxed
//! future that does the same; and throughput on a tokio runtime with two worker threads
//! against one (each task yielding to the runtime every 64 calls), beside the same for the
//! boxed future (the direct control).

use std::future::Future;
use std::hint::black_box;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use fixture_api::Shop;
use swapkit::{Grant, Sandbox, Swapper, Vault};

#[path = "support.rs"]
mod support;

/// Polls `future` with a waker that does nothing until it completes: at once, but for a wasm
/// step that an epoch tick made yield (it goes on at the next poll).
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            return out;
        }
    }
}

/// The baseline: a boxed future doing `quick`'s work (`x` times the major version, parsed
/// from the version string).
fn boxed(x: u64) -> Pin<Box<dyn Future<Output = u64> + Send>> {
    Box::pin(async move { x * black_box("1.0.0")[..1].parse::<u64>().unwrap_or(0) })
}

/// A host whose `shop.wait` yields to the runtime once.
fn vault() -> Vault {
    let vault = Vault::new();
    vault.provide_async("shop.wait", |(i,): (u32,)| async move {
        tokio::task::yield_now().await;
        i
    });
    vault
}

fn swapper() -> Swapper {
    Swapper::builder()
        .vault(vault())
        .sandbox(Sandbox::default().grant("shop", Grant::AllHostFns))
        .wasm_cache_dir(std::env::temp_dir().join("swapkit-bench-cache"))
        .build()
        .unwrap()
}

fn calls(c: &mut Criterion) {
    let native = swapper();
    native
        .load_files(support::release_artifacts(&["fixture-shop-v1"]))
        .unwrap();
    let statics = Swapper::builder()
        .vault(vault())
        .sandbox(Sandbox::default().grant("shop", Grant::AllHostFns))
        .static_plugin(&fixture_shop_v1::SWAPKIT_PLUGIN)
        .build()
        .unwrap();
    let wasm = swapper();
    wasm.load_files(support::release_wasm(&["fixture-shop-v1"]))
        .unwrap();
    let native_client = native.client::<dyn Shop>().unwrap();
    let static_client = statics.client::<dyn Shop>().unwrap();
    let wasm_client = wasm.client::<dyn Shop>().unwrap();
    for client in [&native_client, &static_client, &wasm_client] {
        assert_eq!(now(client.quick(7)).unwrap(), 7);
    }

    let mut group = c.benchmark_group("async_ready");
    group.bench_function("boxed_future", |b| b.iter(|| now(boxed(black_box(7)))));
    group.bench_function("native", |b| {
        b.iter(|| now(native_client.quick(black_box(7))).unwrap())
    });
    group.bench_function("static", |b| {
        b.iter(|| now(static_client.quick(black_box(7))).unwrap())
    });
    group.bench_function("wasm", |b| {
        b.iter(|| now(wasm_client.quick(black_box(7))).unwrap())
    });
    // The synchronous encoded call of the same plugin, for reference.
    group.bench_function("native_sync_version", |b| {
        b.iter(|| native_client.version().unwrap())
    });
    group.finish();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("async_awaits_host_once");
    group.bench_function("boxed_future", |b| {
        b.iter(|| {
            rt.block_on(async {
                let inner: Pin<Box<dyn Future<Output = u32> + Send>> = Box::pin(async {
                    tokio::task::yield_now().await;
                    black_box(1u32)
                });
                let outer: Pin<Box<dyn Future<Output = u32> + Send>> =
                    Box::pin(async move { inner.await + 1 });
                outer.await
            })
        })
    });
    group.bench_function("native", |b| {
        b.iter(|| rt.block_on(native_client.wait(black_box(1))).unwrap())
    });
    group.bench_function("static", |b| {
        b.iter(|| rt.block_on(static_client.wait(black_box(1))).unwrap())
    });
    group.finish();

    // Throughput: `CALLS` calls in each of two tasks, on one worker thread and on two, timed
    // inside each task (first start to last end).
    const CALLS: u64 = 20_000;
    const YIELD_EVERY: u64 = 64;
    let mut group = c.benchmark_group("async_threads");
    group.sample_size(10);
    for workers in [1, 2] {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap();
        let run = |work: fn(&fixture_api::ShopClient<swapkit::Binding>, u64)| {
            let rt = &rt;
            let client = &native_client;
            move |iters: u64| -> Duration {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let spans: Vec<(Instant, Instant)> = rt.block_on(async {
                        let tasks: Vec<_> = (0..2)
                            .map(|_| {
                                let client = client.clone();
                                tokio::spawn(async move {
                                    let start = Instant::now();
                                    for i in 0..CALLS {
                                        work(&client, i);
                                        // Back to the runtime now and then: after every
                                        // call, its own scheduling was most of the time.
                                        if i % YIELD_EVERY == 0 {
                                            tokio::task::yield_now().await;
                                        }
                                    }
                                    (start, Instant::now())
                                })
                            })
                            .collect();
                        let mut spans = vec![];
                        for t in tasks {
                            spans.push(t.await.unwrap());
                        }
                        spans
                    });
                    let first = spans.iter().map(|s| s.0).min().unwrap();
                    let last = spans.iter().map(|s| s.1).max().unwrap();
                    total += last - first;
                }
                total
            }
        };
        group.bench_function(format!("boxed_future_workers_{workers}"), |b| {
            b.iter_custom(run(|_, i| {
                black_box(now(boxed(i)));
            }))
        });
        group.bench_function(format!("native_workers_{workers}"), |b| {
            b.iter_custom(run(|client, i| {
                black_box(now(client.quick(i)).unwrap());
            }))
        });
    }
    group.finish();
}

criterion_group!(benches, calls);
criterion_main!(benches);
