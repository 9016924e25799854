//! The cost of a call: a call into a native plugin through its direct lane and through the
//! encoded path, against a direct call and a `dyn Trait` call of the same logic, in the same
//! run; the static backend and a pinned client; the same plugin built for wasm, both paths,
//! against a raw wasmtime typed-func call into its module; and throughput with 2 threads
//! against 1.
//!
//! Two methods: `score(u64, &str) -> u64` and `greet(&str) -> String` (fixture-api's
//! `Greeter`). Both are plain, so the typed client takes the direct lane; the encoded path is
//! the same call made through `Transport::call`, which encodes the arguments with postcard.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fixture_api::Greeter;
use swapkit::abi::Transport;
use swapkit::Swapper;

#[path = "support.rs"]
mod support;

trait Score {
    fn score(&self, id: u64, tag: &str) -> u64;
    fn greet(&self, name: &str) -> String;
}

struct Local;

impl Score for Local {
    #[inline(never)]
    fn score(&self, id: u64, tag: &str) -> u64 {
        id + tag.len() as u64
    }

    #[inline(never)]
    fn greet(&self, name: &str) -> String {
        format!("hello, {name} (v1)")
    }
}

#[inline(never)]
fn direct(id: u64, tag: &str) -> u64 {
    id + tag.len() as u64
}

#[inline(never)]
fn direct_greet(name: &str) -> String {
    format!("hello, {name} (v1)")
}

/// `Greeter`'s method numbers.
const GREET: u32 = 0;
const SCORE: u32 = 2;

fn calls(c: &mut Criterion) {
    let artifacts = support::release_artifacts(&["fixture-greeter-v1"]);
    let native = Swapper::new().unwrap();
    native.load_files(&artifacts).unwrap();
    let native_client = native.client::<dyn Greeter>().unwrap();
    let statics = Swapper::builder()
        .static_plugin(&fixture_greeter_v1::SWAPKIT_PLUGIN)
        .build()
        .unwrap();
    let static_client = statics.client::<dyn Greeter>().unwrap();
    let pin = native.pin();
    let pinned_client = pin.client::<dyn Greeter>();
    let local: Box<dyn Score> = Box::new(Local);
    assert_eq!(native_client.score(1, "abc").unwrap(), 4);
    let module = support::release_wasm(&["fixture-greeter-v1"]).remove(0);
    let wasm = Swapper::builder()
        .wasm_cache_dir(std::env::temp_dir().join("swapkit-bench-cache"))
        .build()
        .unwrap();
    wasm.load_files([&module]).unwrap();
    let wasm_client = wasm.client::<dyn Greeter>().unwrap();
    let wasm_pin = wasm.pin();
    let wasm_pinned = wasm_pin.client::<dyn Greeter>();
    assert_eq!(wasm_client.score(1, "abc").unwrap(), 4);
    // A call whose plugin asks the host for a Vault entry: where the sandbox's checks run.
    let state = support::release_wasm(&["fixture-state-v1"]).remove(0);
    let stateful = Swapper::builder()
        .wasm_cache_dir(std::env::temp_dir().join("swapkit-bench-cache"))
        .build()
        .unwrap();
    stateful.load_files([&state]).unwrap();
    let counter = stateful.client::<dyn fixture_api::Counter>().unwrap();
    counter.bump("state/visits").unwrap();
    let mut raw = RawWasm::new(&module, false);
    let mut raw_swapkit = RawWasm::new(&module, true);

    // The encoded path, on the same plugins: `Transport::call` encodes its arguments.
    let encoded = |client: &fixture_api::GreeterClient<swapkit::Binding>| {
        client
            .transport()
            .call::<_, u64>(SCORE, &(black_box(7u64), black_box("abc")))
            .unwrap()
    };
    let encoded_greet = |client: &fixture_api::GreeterClient<swapkit::Binding>| {
        client
            .transport()
            .call::<_, String>(GREET, &(black_box("bench"),))
            .unwrap()
    };
    assert_eq!(encoded(&native_client), 10);
    assert_eq!(encoded(&wasm_client), 10);
    assert_eq!(
        native_client.greet("bench").unwrap(),
        encoded_greet(&native_client)
    );
    assert_eq!(direct_greet("bench"), encoded_greet(&wasm_client));
    assert_eq!(
        status_lanes(&native),
        4,
        "the fixture serves Greeter through lanes"
    );
    assert_eq!(
        status_lanes(&wasm),
        4,
        "the wasm fixture serves Greeter through lanes"
    );

    let mut group = c.benchmark_group("call");
    group.bench_function("direct", |b| {
        b.iter(|| direct(black_box(7), black_box("abc")))
    });
    group.bench_function("dyn_trait", |b| {
        b.iter(|| black_box(&local).score(black_box(7), black_box("abc")))
    });
    group.bench_function("native_lane", |b| {
        b.iter(|| native_client.score(black_box(7), black_box("abc")).unwrap())
    });
    group.bench_function("native_encoded", |b| b.iter(|| encoded(&native_client)));
    group.bench_function("static_lane", |b| {
        b.iter(|| static_client.score(black_box(7), black_box("abc")).unwrap())
    });
    group.bench_function("native_pinned_lane", |b| {
        b.iter(|| pinned_client.score(black_box(7), black_box("abc")).unwrap())
    });
    group.bench_function("wasm_lane", |b| {
        b.iter(|| wasm_client.score(black_box(7), black_box("abc")).unwrap())
    });
    group.bench_function("wasm_encoded", |b| b.iter(|| encoded(&wasm_client)));
    group.bench_function("wasm_pinned_lane", |b| {
        b.iter(|| wasm_pinned.score(black_box(7), black_box("abc")).unwrap())
    });
    group.bench_function("wasm_vault_read", |b| {
        b.iter(|| counter.read(black_box("state/visits")).unwrap())
    });
    group.bench_function("wasm_raw_typed_func", |b| b.iter(|| raw.call()));
    group.bench_function("wasm_raw_abi_call", |b| b.iter(|| raw.call_abi()));
    assert_eq!(raw_swapkit.call_lane(), 10);
    group.bench_function("wasm_raw_lane_swapkit_engine", |b| {
        b.iter(|| raw_swapkit.call_lane())
    });
    group.bench_function("wasm_raw_abi_swapkit_engine", |b| {
        b.iter(|| raw_swapkit.call_abi())
    });
    group.finish();

    // A call returning a `String`: the lane copies the plugin's bytes once; the encoded path
    // also decodes them.
    let mut group = c.benchmark_group("call_string");
    group.bench_function("direct", |b| b.iter(|| direct_greet(black_box("bench"))));
    group.bench_function("dyn_trait", |b| {
        b.iter(|| black_box(&local).greet(black_box("bench")))
    });
    group.bench_function("native_lane", |b| {
        b.iter(|| native_client.greet(black_box("bench")).unwrap())
    });
    group.bench_function("native_encoded", |b| {
        b.iter(|| encoded_greet(&native_client))
    });
    group.bench_function("wasm_lane", |b| {
        b.iter(|| wasm_client.greet(black_box("bench")).unwrap())
    });
    group.bench_function("wasm_encoded", |b| b.iter(|| encoded_greet(&wasm_client)));
    group.finish();

    // Throughput: each iteration is one call on each of `threads` threads. Time is taken inside
    // the workers, from the first start to the last end: timing from the main thread after a
    // barrier lets workers start early, and reads more than 2x on 2 cores even for a direct
    // call. The direct call is the control: it must read at most 2x. The workers live for the
    // whole group, as a server's threads do, so a thread keeps its wasm instance between
    // samples as it would between requests.
    let native_lane = |i: u64| {
        black_box(native_client.score(i, "abc").unwrap());
    };
    let native_encoded = |i: u64| {
        let r: u64 = native_client.transport().call(SCORE, &(i, "abc")).unwrap();
        black_box(r);
    };
    let wasm_lane = |i: u64| {
        black_box(wasm_client.score(i, "abc").unwrap());
    };
    let direct_call = |i: u64| {
        black_box(direct(black_box(i), black_box("abc")));
    };
    let cases: [(&str, &(dyn Fn(u64) + Sync)); 4] = [
        ("native_lane", &native_lane),
        ("native_encoded", &native_encoded),
        ("wasm_lane", &wasm_lane),
        ("direct", &direct_call),
    ];
    let mut group = c.benchmark_group("throughput");
    std::thread::scope(|s| {
        let workers = Workers::start(s, 2);
        for threads in [1usize, 2] {
            group.throughput(Throughput::Elements(threads as u64));
            for (name, work) in cases {
                group.bench_function(format!("{name}_threads_{threads}"), |b| {
                    b.iter_custom(|iters| workers.run(threads, iters, work))
                });
            }
        }
    });
    group.finish();
    drop(pin);
}

/// How many methods the current generation's plugins serve through a direct lane.
fn status_lanes(swapper: &Swapper) -> usize {
    swapper
        .status()
        .current
        .plugins
        .iter()
        .map(|p| p.lanes)
        .sum()
}

/// Long-lived worker threads that run each throughput sample.
struct Workers<'a> {
    jobs: Vec<std::sync::mpsc::Sender<Job<'a>>>,
    spans: std::sync::mpsc::Receiver<(Instant, Instant)>,
}

/// Iterations, the work, and the barrier the sample's workers start from.
type Job<'a> = (u64, &'a (dyn Fn(u64) + Sync), Arc<std::sync::Barrier>);

impl<'a> Workers<'a> {
    /// `n` workers, which live until the `Workers` drops.
    fn start<'s>(s: &'s std::thread::Scope<'s, '_>, n: usize) -> Workers<'a>
    where
        'a: 's,
    {
        let (done, spans) = std::sync::mpsc::channel();
        let jobs = (0..n)
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::channel::<Job<'a>>();
                let done = done.clone();
                s.spawn(move || {
                    for (iters, work, start) in rx {
                        start.wait();
                        let first = Instant::now();
                        for i in 0..iters {
                            work(i);
                        }
                        done.send((first, Instant::now())).unwrap();
                    }
                });
                tx
            })
            .collect();
        Workers { jobs, spans }
    }

    /// Runs `work(i)` for `i` in `0..iters` on each of `threads` workers, and returns the time
    /// from the first worker's start to the last worker's end, each taken inside the worker.
    fn run(&self, threads: usize, iters: u64, work: &'a (dyn Fn(u64) + Sync)) -> Duration {
        let start = Arc::new(std::sync::Barrier::new(threads));
        for job in &self.jobs[..threads] {
            job.send((iters, work, start.clone())).unwrap();
        }
        let spans: Vec<(Instant, Instant)> =
            (0..threads).map(|_| self.spans.recv().unwrap()).collect();
        let first = spans
            .iter()
            .map(|s| s.0)
            .min()
            .expect("at least one worker");
        let last = spans
            .iter()
            .map(|s| s.1)
            .max()
            .expect("at least one worker");
        last - first
    }
}

/// A bare wasmtime typed-func call into the same module: the floor under `wasm_lane`.
struct RawWasm {
    store: wasmtime::Store<()>,
    func: wasmtime::TypedFunc<(), u32>,
    /// `swapkit_call`, with `score(7, "abc")` already in the guest's input buffer: the guest's
    /// share of a typed call, with no host-side work around it.
    call: wasmtime::TypedFunc<(u32, u32, u32), u32>,
    len: u32,
    /// `swapkit_lane`, with `"abc"` staged in the guest's input buffer: the guest's share of
    /// a direct-lane call.
    lane: LaneFunc,
    tag: u64,
    memory: wasmtime::Memory,
}

type LaneFunc = wasmtime::TypedFunc<(u32, u32, u64, u64, u64, u64, u64, u64), u64>;

impl RawWasm {
    /// `swapkit_engine`: the engine settings swapkit uses (epoch interruption, memory that
    /// never moves) instead of wasmtime's defaults.
    fn new(module: &std::path::Path, swapkit_engine: bool) -> RawWasm {
        Self::new_at(module, swapkit_engine, 0)
    }

    fn new_at(module: &std::path::Path, swapkit_engine: bool, stagger: u64) -> RawWasm {
        let mut config = wasmtime::Config::new();
        config
            .epoch_interruption(swapkit_engine)
            .memory_may_move(!swapkit_engine);

        let engine = wasmtime::Engine::new(&config).unwrap();
        let module = wasmtime::Module::from_file(&engine, module).unwrap();
        let mut linker = wasmtime::Linker::new(&engine);
        linker
            .func_wrap("swapkit", "log", |_: u32, _: u32, _: u32| {})
            .unwrap();
        linker
            .func_wrap("swapkit", "panic", |_: u32, _: u32| {})
            .unwrap();
        // The service functions (Vault, host functions, dependencies): never called here.
        linker
            .func_wrap("swapkit", "service", |_: u32, _: u32, _: u32| 0u64)
            .unwrap();
        linker.func_wrap("swapkit", "reply", |_: u32| {}).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = linker.instantiate(&mut store, &module).unwrap();
        let func = instance
            .get_typed_func::<(), u32>(&mut store, "swapkit_abi_version")
            .unwrap();
        let load = instance
            .get_typed_func::<(), u32>(&mut store, "swapkit_load")
            .unwrap();
        assert_eq!(load.call(&mut store, ()).unwrap(), 0);
        let args = swapkit::abi::wire::to_vec(&(7u64, "abc")).unwrap();
        let input = instance
            .get_typed_func::<u32, u32>(&mut store, "swapkit_input")
            .unwrap();
        // Room for the encoded arguments, and for the lane's staged string after them.
        let ptr = input.call(&mut store, 128 + 4096).unwrap();
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        memory.write(&mut store, ptr as usize, &args).unwrap();
        let call = instance
            .get_typed_func::<(u32, u32, u32), u32>(&mut store, "swapkit_call")
            .unwrap();
        let len = args.len() as u32;
        let tag = (ptr as u64 + 64 + stagger) | (3 << 32);
        memory
            .write(&mut store, (ptr as u64 + 64 + stagger) as usize, b"abc")
            .unwrap();
        let lane = instance.get_typed_func(&mut store, "swapkit_lane").unwrap();
        RawWasm {
            memory,
            lane,
            tag,
            store,
            func,
            call,
            len,
        }
    }

    #[inline]
    fn call_lane(&mut self) -> u64 {
        // Interface 0 (Greeter), method 2 (score): 7 and "abc".
        let args = (0, SCORE, 7, self.tag, 0, 0, 0, 0);
        self.lane.call(&mut self.store, args).unwrap()
    }

    /// [`call_lane`](Self::call_lane), staging `"abc"` in the guest's memory first, as the
    /// host's lane does on every call.
    #[inline]
    fn call_lane_staged(&mut self) -> u64 {
        let at = (self.tag & 0xffff_ffff) as usize;
        self.memory.data_mut(&mut self.store)[at..at + 3].copy_from_slice(b"abc");
        self.call_lane()
    }

    #[inline]
    fn call_abi(&mut self) -> u32 {
        // Interface 0 (Greeter), method 2 (score).
        self.call.call(&mut self.store, (0, 2, self.len)).unwrap()
    }

    #[inline]
    fn call(&mut self) -> u32 {
        self.func.call(&mut self.store, ()).unwrap()
    }
}

/// Whether a thread keeps its wasm instance through what real services do: a reload made
/// (and a call made) by another thread, and calls into many plugins in turn. Each figure is
/// the wasm lane of one call, against a fresh pool's in the same run.
fn keeping(c: &mut Criterion) {
    let module = support::release_wasm(&["fixture-greeter-v1"]).remove(0);
    let cache = std::env::temp_dir().join("swapkit-bench-cache");
    let swapper = || {
        let s = Swapper::builder().wasm_cache_dir(&cache).build().unwrap();
        s.load_files([&module]).unwrap();
        s
    };
    let fresh = swapper();
    let fresh_client = fresh.client::<dyn Greeter>().unwrap();

    // Another thread reloads to new content (the new pool's first instance runs the reload's
    // hooks there), calls once, and exits; then this thread calls.
    let reloaded = swapper();
    let dir = tempfile::tempdir().unwrap();
    let next = dir.path().join("greeter.wasm");
    std::fs::write(
        &next,
        support::unique_wasm(&std::fs::read(&module).unwrap(), 1),
    )
    .unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            reloaded.load_files([&next]).unwrap();
            let client = reloaded.client::<dyn Greeter>().unwrap();
            assert_eq!(client.score(1, "abc").unwrap(), 4);
        });
    });
    let reloaded_client = reloaded.client::<dyn Greeter>().unwrap();

    // Eight plugins (a swapper each, so eight pools), called in turn by one thread.
    let eight: Vec<Swapper> = (0..8).map(|_| swapper()).collect();
    let eight_clients: Vec<_> = eight
        .iter()
        .map(|s| s.client::<dyn Greeter>().unwrap())
        .collect();

    // Eight plugins in one swapper (one engine, one epoch ticker): the fixture renamed
    // `greete0` .. `greete7`, each called through its own client.
    let one_swapper = Swapper::builder().wasm_cache_dir(&cache).build().unwrap();
    let renamed: Vec<_> = (0..8)
        .map(|n| {
            let path = dir.path().join(format!("greete{n}.wasm"));
            std::fs::write(&path, renamed_greeter(&std::fs::read(&module).unwrap(), n)).unwrap();
            path
        })
        .collect();
    one_swapper.load_files(&renamed).unwrap();
    let one_swapper_clients: Vec<_> = (0..8)
        .map(|n| {
            one_swapper
                .client_of::<dyn Greeter>(&format!("greete{n}"))
                .unwrap()
        })
        .collect();

    // The floor under both: eight bare wasmtime instances (an engine and a store each, like
    // eight swappers) called in turn, and one of them eight times.
    let mut raw_eight: Vec<RawWasm> = (0..8).map(|_| RawWasm::new(&module, true)).collect();
    let mut raw_staggered: Vec<RawWasm> = (0..8)
        .map(|k| RawWasm::new_at(&module, true, k * 320))
        .collect();

    let mut group = c.benchmark_group("keeping");
    group.bench_function("wasm_lane_fresh", |b| {
        b.iter(|| fresh_client.score(black_box(7), black_box("abc")).unwrap())
    });
    group.bench_function("wasm_lane_after_reload_and_another_caller", |b| {
        b.iter(|| {
            reloaded_client
                .score(black_box(7), black_box("abc"))
                .unwrap()
        })
    });
    group.throughput(Throughput::Elements(8));
    group.bench_function("wasm_lane_eight_plugins_in_turn", |b| {
        b.iter(|| {
            for client in &eight_clients {
                black_box(client.score(black_box(7), black_box("abc")).unwrap());
            }
        })
    });
    // The control: eight calls in a row into one plugin, the same work without switching
    // between instances (whose code, stores and memories then compete for the caches).
    group.bench_function("wasm_lane_one_plugin_eight_times", |b| {
        b.iter(|| {
            for _ in 0..8 {
                black_box(fresh_client.score(black_box(7), black_box("abc")).unwrap());
            }
        })
    });
    group.bench_function("wasm_lane_eight_plugins_in_turn_one_swapper", |b| {
        b.iter(|| {
            for client in &one_swapper_clients {
                black_box(client.score(black_box(7), black_box("abc")).unwrap());
            }
        })
    });
    group.bench_function("raw_lane_eight_instances_in_turn", |b| {
        b.iter(|| {
            for raw in raw_eight.iter_mut() {
                black_box(raw.call_lane());
            }
        })
    });
    group.bench_function("raw_lane_staged_eight_instances_in_turn", |b| {
        b.iter(|| {
            for raw in raw_eight.iter_mut() {
                black_box(raw.call_lane_staged());
            }
        })
    });
    group.bench_function("raw_lane_staged_staggered_eight_instances_in_turn", |b| {
        b.iter(|| {
            for raw in raw_staggered.iter_mut() {
                black_box(raw.call_lane_staged());
            }
        })
    });
    group.bench_function("raw_lane_staged_one_instance_eight_times", |b| {
        let raw = &mut raw_eight[0];
        b.iter(|| {
            for _ in 0..8 {
                black_box(raw.call_lane_staged());
            }
        })
    });
    group.bench_function("raw_lane_one_instance_eight_times", |b| {
        let raw = &mut raw_eight[0];
        b.iter(|| {
            for _ in 0..8 {
                black_box(raw.call_lane());
            }
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("wasm_lane_fresh_again", |b| {
        b.iter(|| fresh_client.score(black_box(7), black_box("abc")).unwrap())
    });
    group.finish();
}

/// `module` (the greeter fixture) with its plugin name `greeter` changed to `greete{n}`, the
/// same length, so the manifest stays well formed: a distinct plugin of the same code.
fn renamed_greeter(module: &[u8], n: u8) -> Vec<u8> {
    let mut bytes = module.to_vec();
    let at = bytes
        .windows(12)
        .position(|w| w == b"greeter1.0.0")
        .expect("the fixture's name and version, side by side in its data");
    bytes[at + 6] = b'0' + n;
    bytes
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = calls, keeping
}
criterion_main!(benches);
