//! Reload latency: from the start of `reload()` to the first call served by the new version,
//! with one changed native plugin among two.
//!
//! - `warm`: v1 and v2 alternate. Each was mapped before, so the reload reads, hashes, finds
//!   the mapping and runs the hooks. This is the common case of a rollback or a flip-flop.
//! - `cold`: every reload meets content never seen before (v2 with a unique trailing byte),
//!   so it also reads and hashes it, writes the private copy and runs the dynamic loader. The
//!   files are written ahead, as a deployment writes its artifact before it asks for a reload.
//! - `cold_just_written`: the same, each file written just before its reload, which then
//!   reads and hashes it twice (a file younger than two clock ticks is not known unchanged by
//!   its metadata).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use fixture_api::Greeter;
use swapkit::Swapper;

#[path = "support.rs"]
mod support;

fn reloads(c: &mut Criterion) {
    let built = support::release_artifacts(&[
        "fixture-greeter-v1",
        "fixture-greeter-v2",
        "fixture-chain-base",
    ]);
    let (v1, v2, base) = (built[0].clone(), built[1].clone(), built[2].clone());
    let dir = tempfile::tempdir().unwrap();

    let mut group = c.benchmark_group("reload_to_first_call");
    group.sample_size(30);

    let swapper = Swapper::new().unwrap();
    swapper.load_files([&v1, &base]).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    let sets = [
        vec![v1.clone(), base.clone()],
        vec![v2.clone(), base.clone()],
    ];
    bench_warm(&mut group, &swapper, &greeter, &sets);

    let v2_bytes = std::fs::read(&v2).unwrap();
    let mut n = 0u64;
    // A copy of v2 with new content: a unique trailing byte string.
    let unique = |n: u64| {
        let path: PathBuf = dir.path().join(format!("v2-{n}.so"));
        let mut bytes = v2_bytes.clone();
        bytes.extend_from_slice(&n.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
        path
    };
    group.sample_size(10);
    for (name, ahead) in [("cold", true), ("cold_just_written", false)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                // `cold`: the new files are written before the timed part and left to settle
                // (a reload does not read again a file whose metadata is unchanged and older
                // than two clock ticks, but reads one written just before it twice).
                let written: Vec<PathBuf> = if ahead {
                    let files = (0..iters).map(|i| unique(n + i)).collect();
                    std::thread::sleep(Duration::from_millis(30));
                    files
                } else {
                    vec![]
                };
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    // Back to v1 (warm, not timed), then to a never-seen v2.
                    swapper.load_files([&v1, &base]).unwrap();
                    let path = match written.get(i as usize) {
                        Some(path) => path.clone(),
                        None => unique(n + i),
                    };
                    let start = Instant::now();
                    swapper.load_files([&path, &base]).unwrap();
                    let served = greeter.version().unwrap();
                    total += start.elapsed();
                    assert_eq!(black_box(served), "2.0.0");
                    std::fs::remove_file(&path).unwrap();
                }
                n += iters;
                total
            })
        });
    }
    group.finish();
    trust_reloads(c, &v1, &v2, &base);
    wasm_reloads(c);
}

/// Warm reloads with signature checking off and on, in one run: the same signed copies of
/// v1, v2 and the base plugin, one swapper without a trust policy and one with. Both flip
/// through `downgrade`, which rollback protection lets go to v1 again, so the two differ only
/// in the policy.
fn trust_reloads(c: &mut Criterion, v1: &PathBuf, v2: &PathBuf, base: &PathBuf) {
    use swapkit::trust::{signature_path, SecretKey, SignatureFile};
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let signed: Vec<PathBuf> = [v1, v2, base]
        .iter()
        .enumerate()
        .map(|(i, from)| {
            let to = dir.path().join(format!("{i}.so"));
            std::fs::copy(from, &to).unwrap();
            let statement = swapkit::inspect(&to).unwrap().statement();
            let signature = SignatureFile::sign(statement, &key).unwrap();
            std::fs::write(signature_path(&to), signature.to_text()).unwrap();
            to
        })
        .collect();
    let sets = [
        vec![signed[0].clone(), signed[2].clone()],
        vec![signed[1].clone(), signed[2].clone()],
    ];
    let mut group = c.benchmark_group("reload_trust");
    group.sample_size(30);
    for (name, builder) in [
        ("unsigned_check_off", Swapper::builder()),
        (
            "signature_checked",
            Swapper::builder().trust(swapkit::TrustPolicy::new().key(key.public())),
        ),
    ] {
        let swapper = builder.build().unwrap();
        swapper.load_files(&sets[0]).unwrap();
        let greeter = swapper.client::<dyn Greeter>().unwrap();
        bench_flips(&mut group, name, &greeter, &sets, |set| {
            swapper.downgrade(set).unwrap();
        });
    }
    group.finish();
}

/// Flips between two selections, v1 then v2, timing each reload to the first call it serves.
fn bench_warm(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    swapper: &Swapper,
    greeter: &fixture_api::GreeterClient<swapkit::Binding>,
    sets: &[Vec<PathBuf>; 2],
) {
    bench_flips(group, "warm", greeter, sets, |set| {
        swapper.load_files(set).unwrap();
    });
}

/// Times `load` of v2's set, then of v1's, alternately, each to the first call it serves.
fn bench_flips(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    greeter: &fixture_api::GreeterClient<swapkit::Binding>,
    sets: &[Vec<PathBuf>; 2],
    mut load: impl FnMut(&[PathBuf]),
) {
    let mut flip = false;
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                flip = !flip;
                let (next, want) = if flip {
                    (&sets[1], "2.0.0")
                } else {
                    (&sets[0], "1.0.0")
                };
                let start = Instant::now();
                load(next);
                let served = greeter.version().unwrap();
                total += start.elapsed();
                assert_eq!(served, want);
            }
            total
        })
    });
}

/// The same measurements for the wasm backend, plus a reload whose module is new to the
/// swapper but already in the on-disk compile cache (a restart, or a version seen by another
/// process): the case the cache exists for.
fn wasm_reloads(c: &mut Criterion) {
    let built = support::release_wasm(&["fixture-greeter-v1", "fixture-greeter-v2"]);
    let (v1, v2) = (built[0].clone(), built[1].clone());
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let swapper = Swapper::builder()
        .wasm_cache_dir(cache.path())
        .build()
        .unwrap();
    swapper.load_files([&v1]).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();

    let mut group = c.benchmark_group("wasm_reload_to_first_call");
    group.sample_size(30);
    bench_warm(
        &mut group,
        &swapper,
        &greeter,
        &[vec![v1.clone()], vec![v2.clone()]],
    );

    let v2_bytes = std::fs::read(&v2).unwrap();
    let mut n = 0u64;
    let unique = |n: u64| {
        let path: PathBuf = dir.path().join(format!("v2-{n}.wasm"));
        std::fs::write(&path, support::unique_wasm(&v2_bytes, n)).unwrap();
        path
    };
    // Another swapper with the same cache directory: it compiles each variant and caches it.
    let warmer = Swapper::builder()
        .wasm_cache_dir(cache.path())
        .build()
        .unwrap();
    group.sample_size(10);
    group.bench_function("disk_cache", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                swapper.load_files([&v1]).unwrap();
                n += 1;
                let next = unique(n);
                warmer.load_files([&next]).unwrap();
                let before = swapper.wasm_compiles();
                let start = Instant::now();
                swapper.load_files([&next]).unwrap();
                let served = greeter.version().unwrap();
                total += start.elapsed();
                assert_eq!(served, "2.0.0");
                assert_eq!(swapper.wasm_compiles(), before, "read from the cache");
            }
            total
        })
    });
    group.bench_function("cold", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                swapper.load_files([&v1]).unwrap();
                n += 1;
                let next = unique(n);
                let before = swapper.wasm_compiles();
                let start = Instant::now();
                swapper.load_files([&next]).unwrap();
                let served = greeter.version().unwrap();
                total += start.elapsed();
                assert_eq!(black_box(served), "2.0.0");
                assert_eq!(swapper.wasm_compiles(), before + 1, "compiled");
            }
            total
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    targets = reloads
}
criterion_main!(benches);
