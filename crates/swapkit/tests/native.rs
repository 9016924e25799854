//! Native-backend behaviour: swapping under load, rollback, reuse, draining, and every bad
//! artifact a reload can meet. All plugins are real cdylibs built from the fixture crates.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::{place, tempdir, Fixture, Logs};
use fixture_api::Greeter;
use swapkit::{CallError, GenerationState, LoadError, Swapper};

/// One observation by a calling thread: the generation before and after the call, and the
/// version that answered.
type Seen = HashMap<(u64, u64, String), u64>;

#[test]
fn swap_under_load_never_fails_a_call_nor_mixes_versions() {
    let logs = Logs::default();
    let swapper = logs.builder().build().unwrap();
    let (v1, v2) = (Fixture::GreeterV1.path(), Fixture::GreeterV2.path());
    let mut versions: HashMap<u64, String> = HashMap::new();
    let report = swapper.load_files([&v1]).unwrap();
    versions.insert(report.generation, "1.0.0".into());
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    let stop = AtomicBool::new(false);
    let pinned_seen: Mutex<Vec<(u64, String)>> = Mutex::new(vec![]);

    let seen: Vec<Seen> = std::thread::scope(|s| {
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let (greeter, swapper, stop, pinned_seen) =
                    (&greeter, &swapper, &stop, &pinned_seen);
                s.spawn(move || {
                    let mut seen = Seen::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let before = swapper.generation();
                        let version = greeter.version().expect("no call may fail during swaps");
                        let after = swapper.generation();
                        *seen.entry((before, after, version)).or_default() += 1;
                        i += 1;
                        if i.is_multiple_of(64) {
                            // A pinned unit of work: three calls, one version.
                            let pin = swapper.pin();
                            let client = pin.client::<dyn Greeter>();
                            let first = client.version().unwrap();
                            assert_eq!(client.version().unwrap(), first);
                            assert!(client.greet("unit").unwrap().contains(if first == "1.0.0" {
                                "(v1)"
                            } else {
                                "(v2)"
                            }));
                            pinned_seen.lock().unwrap().push((pin.generation(), first));
                        }
                    }
                    seen
                })
            })
            .collect();

        for _ in 0..15 {
            std::thread::sleep(Duration::from_millis(3));
            let up = swapper.load_files([&v2]).unwrap();
            versions.insert(up.generation, "2.0.0".into());
            std::thread::sleep(Duration::from_millis(3));
            let back = swapper.rollback().unwrap();
            assert_eq!(back.loaded, [("greeter".to_owned(), "1.0.0".to_owned())]);
            versions.insert(back.generation, "1.0.0".into());
        }
        std::thread::sleep(Duration::from_millis(3));
        stop.store(true, Ordering::Relaxed);
        callers.into_iter().map(|c| c.join().unwrap()).collect()
    });

    let mut answered: HashMap<String, u64> = HashMap::new();
    for thread in &seen {
        for ((before, after, version), n) in thread {
            let current_at_some_point =
                (*before..=*after).any(|g| versions.get(&g) == Some(version));
            assert!(
                current_at_some_point,
                "{version} answered between generations {before} and {after}"
            );
            *answered.entry(version.clone()).or_default() += n;
        }
    }
    assert!(
        answered.contains_key("1.0.0") && answered.contains_key("2.0.0"),
        "{answered:?}"
    );
    for (generation, version) in pinned_seen.into_inner().unwrap() {
        assert_eq!(
            versions[&generation], version,
            "a pin answered from another generation"
        );
    }
    assert_eq!(swapper.generation(), 31);
    assert_eq!(greeter.version().unwrap(), "1.0.0");
    swapper.wait_drained(Duration::from_secs(10)).unwrap();
    // Every generation but the current one retired, and each instance was freed once.
    assert_eq!(logs.count("greeter", "2.0.0", "on_free"), 15);
    assert_eq!(logs.count("greeter", "1.0.0", "on_free"), 15);
    assert_eq!(logs.count("greeter", "1.0.0", "on_load"), 16);
}

#[test]
fn rollback_returns_to_the_previous_selection_even_after_the_files_changed() {
    let logs = Logs::default();
    let dir = tempdir();
    place(dir.path(), Fixture::GreeterV1, "greeter.so");
    let swapper = logs.builder().build().unwrap();
    swapper.load_dir(dir.path()).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    assert_eq!(greeter.version().unwrap(), "1.0.0");

    // Publish v2 by atomic rename, as a deploy would, and reload.
    place(dir.path(), Fixture::GreeterV2, ".greeter.so.tmp");
    std::fs::rename(
        dir.path().join(".greeter.so.tmp"),
        dir.path().join("greeter.so"),
    )
    .unwrap();
    let up = swapper.reload().unwrap();
    assert_eq!(
        (up.generation, greeter.version().unwrap().as_str()),
        (2, "2.0.0")
    );
    assert_eq!(swapper.status().history, 1);

    // The file is gone: rollback still works, from the history.
    std::fs::remove_file(dir.path().join("greeter.so")).unwrap();
    let back = swapper.rollback().unwrap();
    assert_eq!(
        (back.generation, greeter.version().unwrap().as_str()),
        (3, "1.0.0")
    );
    assert_eq!(
        logs.count("greeter", "1.0.0", "on_load"),
        2,
        "rollback makes a fresh instance"
    );

    let err = swapper.rollback().unwrap_err();
    assert!(matches!(err, LoadError::NoHistory), "{err:?}");
    assert_eq!(
        (swapper.generation(), greeter.version().unwrap().as_str()),
        (3, "1.0.0")
    );

    // And a reload from the now-empty directory is refused, leaving v1 serving.
    let err = swapper.reload().unwrap_err();
    assert!(matches!(err, LoadError::NoArtifacts { .. }), "{err:?}");
    assert_eq!(
        (swapper.generation(), greeter.version().unwrap().as_str()),
        (3, "1.0.0")
    );
}

#[test]
fn unchanged_artifacts_keep_their_instance() {
    let logs = Logs::default();
    let swapper = logs.builder().build().unwrap();
    let base = Fixture::ChainBase.path();
    swapper
        .load_files([Fixture::GreeterV1.path(), base.clone()])
        .unwrap();
    let report = swapper
        .load_files([Fixture::GreeterV2.path(), base])
        .unwrap();
    assert_eq!(report.loaded, [("greeter".to_owned(), "2.0.0".to_owned())]);
    assert_eq!(
        report.reused,
        [("chain-base".to_owned(), "0.1.0".to_owned())]
    );
    swapper.wait_drained(Duration::from_secs(10)).unwrap();
    assert_eq!(logs.count("chain-base", "0.1.0", "on_load"), 1);
    assert_eq!(
        logs.count("chain-base", "0.1.0", "on_free"),
        0,
        "still used by the current generation"
    );
    assert_eq!(logs.count("greeter", "1.0.0", "on_free"), 1);
    drop(swapper);
    assert_eq!(logs.count("chain-base", "0.1.0", "on_free"), 1);
}

#[test]
fn reload_in_place_picks_up_a_rebuilt_file() {
    let dir = tempdir();
    let path = place(dir.path(), Fixture::GreeterV1, "greeter.so");
    let swapper = Swapper::new().unwrap();
    swapper.load_files([&path]).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    // Overwrite the very file that was loaded, as `cargo build` does.
    std::fs::copy(Fixture::GreeterV2.path(), &path).unwrap();
    swapper.reload().unwrap();
    assert_eq!(greeter.greet("x").unwrap(), "hi, x (v2)");
    std::fs::copy(Fixture::GreeterV1.path(), &path).unwrap();
    swapper.reload().unwrap();
    assert_eq!(greeter.greet("x").unwrap(), "hello, x (v1)");
}

#[test]
fn drain_deadline_reports_who_holds_an_old_generation() {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let swapper = Swapper::builder()
        .drain_deadline(Duration::from_millis(20))
        .on_overdue(move |status| tx.lock().unwrap().send(status.clone()).unwrap())
        .build()
        .unwrap();
    swapper.load_files([Fixture::GreeterV1.path()]).unwrap();
    let pin = swapper.pin_labeled("slow request 7");
    swapper.load_files([Fixture::GreeterV2.path()]).unwrap();

    let report = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("an overdue report");
    assert_eq!(report.id, 1);
    assert_eq!(report.pins.len(), 1);
    assert_eq!(report.pins[0].label, "slow request 7");

    let status = swapper.status();
    assert_eq!(status.draining.len(), 1);
    assert!(matches!(
        status.draining[0].state,
        GenerationState::Draining { overdue: true, .. }
    ));
    assert!(status.to_string().contains("slow request 7"), "{status}");

    let err = swapper.wait_drained(Duration::from_millis(10)).unwrap_err();
    assert_eq!(err.held.len(), 1);
    assert!(err.to_string().contains("slow request 7"), "{err}");

    drop(pin);
    swapper.wait_drained(Duration::from_secs(10)).unwrap();
    let status = swapper.status();
    assert!(status.draining.is_empty());
    let drained = status
        .drained
        .iter()
        .find(|d| d.id == 1)
        .expect("generation 1 drained");
    assert!(drained.drained_after.is_some());
    assert_eq!(
        drained.plugins,
        [("greeter".to_owned(), "1.0.0".to_owned())]
    );
}

// ---- bad inputs: each gets a clear error and the current generation keeps serving ----

/// A swapper serving greeter v1, and a directory for bad artifacts.
fn serving() -> (Swapper, tempfile::TempDir) {
    let swapper = Swapper::new().unwrap();
    swapper.load_files([Fixture::GreeterV1.path()]).unwrap();
    (swapper, tempdir())
}

fn still_serving(swapper: &Swapper) {
    assert_eq!(swapper.generation(), 1);
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    assert_eq!(greeter.greet("still").unwrap(), "hello, still (v1)");
    assert!(swapper.status().draining.is_empty());
}

/// Writes v2 with its plugin header bytes edited by `edit` (given the header's prefix).
fn with_header_edit(dir: &Path, edit: impl FnOnce(&mut [u8])) -> PathBuf {
    let mut bytes = std::fs::read(Fixture::GreeterV2.path()).unwrap();
    let magic = swapkit::abi::MAGIC;
    let hits: Vec<usize> = bytes
        .windows(magic.len())
        .enumerate()
        .filter(|(_, w)| *w == magic)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "the header magic must appear exactly once");
    edit(&mut bytes[hits[0]..hits[0] + 160]);
    let path = dir.join("edited.so");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn missing_file() {
    let (swapper, dir) = serving();
    let err = swapper
        .load_files([dir.path().join("nope.so")])
        .unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.so"), "{err}");
    still_serving(&swapper);
}

#[test]
fn empty_file() {
    let (swapper, dir) = serving();
    let path = dir.path().join("empty.so");
    std::fs::write(&path, b"").unwrap();
    let err = swapper.load_files([&path]).unwrap_err();
    assert!(matches!(err, LoadError::Empty { .. }), "{err:?}");
    assert!(err.to_string().contains("renaming it into place"), "{err}");
    still_serving(&swapper);
}

/// Loading `path` fails as not a library, naming the artifact and keeping the parser's or
/// loader's error as the source.
fn refused_as_not_a_library(swapper: &Swapper, path: &Path) {
    let err = swapper.load_files([path]).unwrap_err();
    assert!(matches!(err, LoadError::NotALibrary { .. }), "{err:?}");
    assert_eq!(err.path(), Some(path), "the error names the artifact");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the parser's or loader's error is kept as the source"
    );
}

#[test]
fn truncated_cdylib() {
    let (swapper, dir) = serving();
    let bytes = std::fs::read(Fixture::GreeterV2.path()).unwrap();
    let path = dir.path().join("truncated.so");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    refused_as_not_a_library(&swapper, &path);
    still_serving(&swapper);
}

#[test]
fn not_a_shared_library() {
    let (swapper, dir) = serving();
    let path = dir.path().join("text.so");
    std::fs::write(&path, b"this is a text file, not a library\n").unwrap();
    refused_as_not_a_library(&swapper, &path);
    // An object that is not a shared library: a relocatable object is refused too.
    let rlib_member = dir.path().join("object.so");
    let mut elf_rel = std::fs::read(Fixture::GreeterV2.path()).unwrap();
    elf_rel[16] = 1; // e_type = ET_REL
    std::fs::write(&rlib_member, elf_rel).unwrap();
    let err = swapper.load_files([&rlib_member]).unwrap_err();
    assert!(matches!(err, LoadError::NotALibrary { .. }), "{err:?}");
    still_serving(&swapper);
}

#[test]
fn library_without_the_entry_symbol() {
    let (swapper, _dir) = serving();
    let err = swapper
        .load_files([Fixture::PlainCdylib.path()])
        .unwrap_err();
    assert!(matches!(err, LoadError::NoEntrySymbol { .. }), "{err:?}");
    assert!(err.to_string().contains("export_plugin!"), "{err}");
    still_serving(&swapper);
}

#[test]
fn library_with_several_entry_symbols() {
    let (swapper, _dir) = serving();
    let err = swapper.load_files([Fixture::Handmade.path()]).unwrap_err();
    match &err {
        LoadError::ManyEntrySymbols { symbols, .. } => {
            assert!(symbols.contains("handmade_odd"), "{symbols}")
        }
        other => panic!("expected several entry symbols, got {other:?}"),
    }
    still_serving(&swapper);
}

#[test]
fn bad_magic() {
    let (swapper, dir) = serving();
    let path = with_header_edit(dir.path(), |h| h[6] = b'X');
    let err = swapper.load_files([&path]).unwrap_err();
    assert!(matches!(err, LoadError::BadMagic { .. }), "{err:?}");
    still_serving(&swapper);
}

#[test]
fn abi_version_mismatch() {
    let (swapper, dir) = serving();
    let path = with_header_edit(dir.path(), |h| {
        h[8..12].copy_from_slice(&2u32.to_le_bytes())
    });
    let err = swapper.load_files([&path]).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::AbiVersion {
                found: 2,
                expected: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("ABI v2"), "{err}");
    still_serving(&swapper);
}

#[test]
fn fingerprint_mismatch() {
    let (swapper, dir) = serving();
    let path = with_header_edit(dir.path(), |h| {
        let fake = b"rustc 0.0.1 (someone else's compiler)";
        h[16..80].fill(0);
        h[16..16 + fake.len()].copy_from_slice(fake);
    });
    let err = swapper.load_files([&path]).unwrap_err();
    match &err {
        LoadError::Fingerprint {
            field,
            found,
            expected,
            ..
        } => {
            assert_eq!(*field, "rustc");
            assert_eq!(found, "rustc 0.0.1 (someone else's compiler)");
            assert!(expected.starts_with("rustc 1."), "{expected}");
        }
        other => panic!("expected a fingerprint mismatch, got {other:?}"),
    }
    // The target is part of the fingerprint too.
    let path = with_header_edit(dir.path(), |h| {
        h[80..144].fill(0);
        h[80..102].copy_from_slice(b"wasm32-unknown-unknown");
    });
    let err = swapper.load_files([&path]).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::Fingerprint {
                field: "target",
                ..
            }
        ),
        "{err:?}"
    );
    still_serving(&swapper);
}

#[test]
fn panic_abort_build_is_refused() {
    let (swapper, dir) = serving();
    let path = with_header_edit(dir.path(), |h| {
        h[12..16].copy_from_slice(&0u32.to_le_bytes())
    });
    let err = swapper.load_files([&path]).unwrap_err();
    assert!(matches!(err, LoadError::PanicAbort { .. }), "{err:?}");
    still_serving(&swapper);
}

/// `inspect_file` reads the header from the file's bytes, mapping nothing, and refuses what a
/// load refuses, with the same error.
#[test]
fn inspect_file_finds_in_the_bytes_what_a_load_finds() {
    let (swapper, dir) = serving();
    let edits: [fn(&mut [u8]); 4] = [
        |h| h[6] = b'X',
        |h| h[8..12].copy_from_slice(&2u32.to_le_bytes()),
        |h| h[16..80].fill(b'x'),
        |h| h[12..16].copy_from_slice(&0u32.to_le_bytes()),
    ];
    for edit in edits {
        let path = with_header_edit(dir.path(), edit);
        let loaded = swapper.load_files([&path]).unwrap_err();
        let read = swapkit::inspect_file(&path).unwrap_err();
        assert_eq!(
            std::mem::discriminant(&loaded),
            std::mem::discriminant(&read),
            "{loaded:?} vs {read:?}"
        );
    }
    let plain = swapkit::inspect_file(Fixture::PlainCdylib.path()).unwrap_err();
    assert!(
        matches!(plain, LoadError::NoEntrySymbol { .. }),
        "{plain:?}"
    );
    let good = swapkit::inspect_file(Fixture::GreeterV2.path()).unwrap();
    let header = good.header.expect("a native header");
    assert!(
        header.symbol.starts_with("swapkit_plugin"),
        "{}",
        header.symbol
    );
    assert_eq!(header.abi_version, swapkit::abi::ABI_VERSION);
    assert_eq!(good.backend, swapkit::BackendKind::Native);
    still_serving(&swapper);
}

#[test]
fn interface_hash_mismatch_on_reload() {
    let (swapper, _dir) = serving();
    let _greeter = swapper.client::<dyn Greeter>().unwrap();
    let err = swapper.load_files([Fixture::Drift.path()]).unwrap_err();
    assert!(matches!(err, LoadError::InterfaceHash(_)), "{err:?}");
    still_serving(&swapper);
}

#[test]
fn a_bad_artifact_among_good_ones_changes_nothing() {
    let logs = Logs::default();
    let swapper = logs.builder().build().unwrap();
    swapper.load_files([Fixture::GreeterV1.path()]).unwrap();
    for set in [
        vec![Fixture::GreeterV2.path(), Fixture::BadLoad.path()],
        vec![Fixture::GreeterV2.path(), Fixture::BadInit.path()],
        vec![Fixture::GreeterV2.path(), Fixture::ChainTop.path()],
        vec![
            Fixture::GreeterV2.path(),
            Fixture::CycleA.path(),
            Fixture::CycleB.path(),
        ],
        vec![Fixture::GreeterV1.path(), Fixture::GreeterV2.path()],
    ] {
        assert!(swapper.load_files(&set).is_err());
        still_serving(&swapper);
    }
    // v2 was loaded (and freed) only in the two sets that got as far as hooks.
    assert_eq!(logs.count("greeter", "2.0.0", "on_load"), 2);
    assert_eq!(logs.count("greeter", "2.0.0", "on_free"), 2);
    assert_eq!(logs.count("greeter", "1.0.0", "on_free"), 0);
}

#[test]
fn empty_directory_and_no_source() {
    let swapper = Swapper::new().unwrap();
    assert!(matches!(swapper.reload().unwrap_err(), LoadError::NoSource));
    assert!(matches!(
        swapper.rollback().unwrap_err(),
        LoadError::NoHistory
    ));
    let dir = tempdir();
    std::fs::write(dir.path().join("notes.txt"), "not a plugin").unwrap();
    let err = swapper.load_dir(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::NoArtifacts { .. }), "{err:?}");
    let err = swapper.load_dir(dir.path().join("missing")).unwrap_err();
    assert!(matches!(err, LoadError::ReadDir { .. }), "{err:?}");
    assert_eq!(swapper.generation(), 0);
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    assert!(matches!(
        greeter.greet("x").unwrap_err(),
        CallError::NotExported { generation: 0, .. }
    ));
}

#[test]
fn client_for_a_mismatched_loaded_interface_is_refused() {
    // Drift is loaded before the host declared Greeter, so the load cannot catch it; making
    // the client does.
    let swapper = Swapper::new().unwrap();
    swapper.load_files([Fixture::Drift.path()]).unwrap();
    let err = swapper.client::<dyn Greeter>().unwrap_err();
    assert!(matches!(err, LoadError::InterfaceHash(_)), "{err:?}");
}

#[test]
fn status_describes_generations_and_plugins() {
    let swapper = Swapper::new().unwrap();
    swapper
        .load_files([Fixture::GreeterV1.path(), Fixture::ChainBase.path()])
        .unwrap();
    let status = swapper.status();
    assert_eq!(status.current.id, 1);
    assert_eq!(status.current.state, GenerationState::Current);
    let greeter = status
        .current
        .plugins
        .iter()
        .find(|p| p.name == "greeter")
        .unwrap();
    assert_eq!(
        (greeter.name.as_str(), greeter.version.as_str()),
        ("greeter", "1.0.0")
    );
    assert_eq!(greeter.backend, swapkit::BackendKind::Native);
    assert_eq!(greeter.content_hash.len(), 64);
    assert_eq!(greeter.interfaces, ["Greeter"]);
    let text = status.to_string();
    assert!(
        text.contains("generation 1 [current]") && text.contains("greeter 1.0.0 (native"),
        "{text}"
    );
    let _keep = Arc::new(());
}

#[test]
fn plugin_patches_for_functions_this_binary_lacks_are_refused() {
    // The fixture patches functions of the `patch_plugin` test binary, not of this one.
    let swapper = Swapper::new().unwrap();
    let err = swapper
        .patches_from(Fixture::Patches.path())
        .expect("load")
        .apply()
        .expect_err("unknown target");
    match &err {
        swapkit::patch::PatchError::UnknownTarget { target, plugin } => {
            assert!(target.starts_with("patch_plugin::"), "{target}");
            assert_eq!(plugin, "pricing-fix");
        }
        other => panic!("expected UnknownTarget, got {other:?}"),
    }
    assert!(err.to_string().contains("registry()"), "{err}");
    assert!(swapkit::patch::active().is_empty());
}

/// Calls the greeter from a thread-local destructor that runs after the plugin's own
/// thread-locals were destroyed: the plugin's reply buffer is gone by then. Its entry points
/// once used `with` on that buffer, which panics there, and a panic cannot leave an
/// `extern "C"` function: the process aborted.
#[test]
fn a_call_from_a_thread_local_destructor_after_the_plugins_own_is_served() {
    type Reply = mpsc::Sender<Result<String, String>>;
    struct CallsOnExit(Option<(Arc<Swapper>, Reply)>);
    impl Drop for CallsOnExit {
        fn drop(&mut self) {
            if let Some((swapper, tx)) = self.0.take() {
                let greeter = swapper.client::<dyn Greeter>().unwrap();
                let _ = tx.send(greeter.greet("teardown").map_err(|e| e.to_string()));
            }
        }
    }
    thread_local! {
        static ON_EXIT: std::cell::RefCell<CallsOnExit> =
            const { std::cell::RefCell::new(CallsOnExit(None)) };
    }
    let swapper = Arc::new(Swapper::new().unwrap());
    swapper.load_files([Fixture::GreeterV1.path()]).unwrap();
    let (tx, rx) = mpsc::channel();
    let s = swapper.clone();
    std::thread::spawn(move || {
        // Registered before the plugin's buffer, so destroyed after it.
        ON_EXIT.with(|o| o.borrow_mut().0 = Some((s.clone(), tx)));
        let greeter = s.client::<dyn Greeter>().unwrap();
        assert!(greeter.greet("first").unwrap().contains("first"));
    })
    .join()
    .unwrap();
    let reply = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(reply.unwrap(), "hello, teardown (v1)");
}

/// A plugin whose thread outlives its instance keeps logging and reading the Vault through its
/// copy of the `Host`. The host table once pointed straight at the instance's context, freed
/// after `on_free`: those calls read freed memory (and reached the log sink). Now they find
/// the context retired: lines are dropped and services fail, and the host keeps serving.
#[test]
fn a_plugin_thread_that_outlives_its_instance_reaches_nothing_freed() {
    let logs = Logs::default();
    let swapper = logs.builder().build().unwrap();
    swapper.load_files([Fixture::Lingering.path()]).unwrap();
    let count = |m: &str| logs.count("greeter", "1.0.0", m);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count("tick") < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the plugin's thread never logged"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Retire the lingering instance: its on_free runs, its thread goes on.
    swapper.load_files([Fixture::GreeterV1.path()]).unwrap();
    assert_eq!(count("on_free"), 1);
    let ticks = count("tick");
    // The thread runs for about two seconds; let it try many times.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count("tick after free"),
        0,
        "a line logged after on_free reached the sink"
    );
    assert!(
        count("tick") <= ticks + 1,
        "lines kept arriving after on_free"
    );
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    assert_eq!(greeter.greet("after").unwrap(), "hello, after (v1)");
}

type NestedCall = Box<dyn Fn() -> Result<String, CallError>>;
type NestedState = (Option<NestedCall>, Option<Result<String, CallError>>);

thread_local! {
    /// What `Nested`'s Deserialize impl calls, and what that call returned.
    static NESTED: std::cell::RefCell<NestedState> = const { std::cell::RefCell::new((None, None)) };
}

/// A result type whose Deserialize impl calls the plugin before decoding its own bytes.
struct Nested(String);

impl<'de> serde::Deserialize<'de> for Nested {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let call = NESTED
            .with(|n| n.borrow_mut().0.take())
            .expect("a nested call is set");
        let result = call();
        NESTED.with(|n| n.borrow_mut().1 = Some(result));
        <String as serde::Deserialize>::deserialize(d).map(Nested)
    }
}

/// The plugin writes each result into one per-thread buffer. A call made from inside the
/// decoding of an earlier result (a Deserialize impl that calls plugins) once overwrote the
/// bytes being decoded; now it is refused with a clear error and the outer result is intact.
#[test]
fn a_call_made_while_decoding_a_result_of_the_same_plugin_is_refused() {
    use swapkit::abi::Transport;
    let swapper = Arc::new(Swapper::new().unwrap());
    swapper.load_files([Fixture::GreeterV1.path()]).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    let inner = swapper.client::<dyn Greeter>().unwrap();
    let long = "a name long enough to make the plugin grow its reply buffer ".repeat(64);
    NESTED.with(|n| n.borrow_mut().0 = Some(Box::new(move || inner.greet(&long))));
    // Method 0 of Greeter is `greet`.
    let outer: Nested = greeter.transport().call(0, &("outer",)).unwrap();
    assert_eq!(
        outer.0, "hello, outer (v1)",
        "the outer result was overwritten"
    );
    let nested = NESTED.with(|n| n.borrow_mut().1.take()).unwrap();
    let err = nested.unwrap_err();
    assert!(
        matches!(&err, CallError::Reentrant { site, .. } if site.method == "greet"),
        "{err:?}"
    );
    assert_eq!(err.plugin(), Some("greeter"));
    assert!(
        err.to_string().contains("decode into plain data first"),
        "{err}"
    );
    // The plugin serves the next call as usual.
    assert_eq!(greeter.greet("after").unwrap(), "hello, after (v1)");
}

/// A host built without the `wasm` feature refuses a wasm artifact with an error that names
/// the feature, and keeps serving what it had.
#[cfg(not(feature = "wasm"))]
#[test]
fn a_wasm_artifact_needs_the_wasm_feature() {
    let swapper = swapkit::Swapper::new().unwrap();
    swapper.load_files([Fixture::GreeterV1.path()]).unwrap();
    let err = swapper
        .load_files([Fixture::GreeterV2.wasm_path()])
        .expect_err("no wasm backend in this build");
    assert!(
        matches!(
            err,
            swapkit::LoadError::BackendDisabled {
                feature: "wasm",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("`wasm` feature"), "{err}");
    assert_eq!(
        swapper.generation(),
        1,
        "the current generation keeps serving"
    );
}

/// A plugin panic that the boundary catches goes through no panic hook: nothing on stderr,
/// no backtrace even under `RUST_BACKTRACE=1` (the host gets the message in the error). A
/// panic the host's own code makes still reaches the host's hook, also after a plugin linked
/// statically (which shares the host's `std`) installed its hook. Run in a child process, so
/// that the panic hooks and stderr are this test's alone.
#[test]
fn a_caught_plugin_panic_prints_nothing() {
    if std::env::var_os("SWAPKIT_PANIC_CHILD").is_some() {
        let native = Swapper::new().unwrap();
        native.load_files([Fixture::GreeterV1.path()]).unwrap();
        let statics = Swapper::builder()
            .static_plugin(Fixture::GreeterV1.header())
            .build()
            .unwrap();
        for swapper in [&native, &statics] {
            let err = swapper
                .client::<dyn Greeter>()
                .unwrap()
                .fail("quiet please")
                .unwrap_err();
            assert!(err.to_string().contains("quiet please"), "{err}");
        }
        let host = std::panic::catch_unwind(|| panic!("the host's own panic"));
        assert!(host.is_err());
        eprintln!("child done");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_caught_plugin_panic_prints_nothing",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SWAPKIT_PANIC_CHILD", "1")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("child done"), "{stderr}");
    assert!(
        !stderr.contains("quiet please"),
        "a caught plugin panic went through a panic hook:\n{stderr}"
    );
    assert!(
        stderr.contains("the host's own panic"),
        "the host's panic hook no longer runs:\n{stderr}"
    );
}

/// A load list: only the plugins named are loaded from the directory, by reloads too, and a
/// listed plugin missing or under another name is a clear error that changes nothing.
#[test]
fn a_load_list_loads_only_the_plugins_named() {
    let dir = tempdir();
    let ext = std::env::consts::DLL_EXTENSION;
    place(dir.path(), Fixture::GreeterV1, &format!("greeter.{ext}"));
    place(dir.path(), Fixture::StateV1, &format!("libstate.{ext}"));
    let swapper = Logs::default().builder().build().unwrap();
    let report = swapper.load_dir_only(dir.path(), ["greeter"]).unwrap();
    assert_eq!(report.loaded, [("greeter".to_owned(), "1.0.0".to_owned())]);
    // A new plugin dropped in the directory stays out; a new version of a listed one comes in.
    place(dir.path(), Fixture::ChainBase, &format!("chain-base.{ext}"));
    place(dir.path(), Fixture::GreeterV2, &format!("greeter.{ext}"));
    let report = swapper.reload().unwrap();
    assert_eq!(report.loaded, [("greeter".to_owned(), "2.0.0".to_owned())]);
    assert!(report.reused.is_empty(), "{report:?}");
    let generation = swapper.generation();

    let err = swapper
        .load_dir_only(dir.path(), ["greeter", "pricing"])
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::Unlisted { plugin, reason, .. } if plugin == "pricing" && reason.contains("no artifact")),
        "{err}"
    );
    // `pricing.so` that holds the greeter is not the pricing plugin.
    place(dir.path(), Fixture::GreeterV1, &format!("pricing.{ext}"));
    let err = swapper.load_dir_only(dir.path(), ["pricing"]).unwrap_err();
    assert!(
        matches!(&err, LoadError::Unlisted { plugin, reason, .. } if plugin == "pricing" && reason.contains("holds plugin `greeter`")),
        "{err}"
    );
    assert_eq!(swapper.generation(), generation, "nothing changed");
    // The source of reloads is still the first list.
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    swapper.reload().unwrap();
    assert_eq!(greeter.version().unwrap(), "2.0.0");
    let both = swapper
        .load_dir_only(dir.path(), ["state", "greeter"])
        .unwrap();
    assert_eq!(both.loaded.len() + both.reused.len(), 2, "{both:?}");
}
