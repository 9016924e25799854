//! Trusting what is loaded: signed releases checked before any code runs, kept artifacts
//! checked on resume, an authenticated compile cache, and native copies no one can swap.
//! Each test is an attack that once worked, and now fails with a clear error while the current
//! generation keeps serving.

mod common;

use std::path::{Path, PathBuf};

use common::{tempdir, Backend, Fixture};
use fixture_api::Greeter;
use swapkit::trust::{signature_path, SecretKey, SignatureFile, Statement, TrustError};
use swapkit::{LoadError, Swapper, SwapperBuilder, TrustPolicy};

/// Copies `fixture`'s artifact for `backend` into `dir` as `name`.
fn place(dir: &Path, fixture: Fixture, backend: Backend, name: &str) -> PathBuf {
    let ext = match backend {
        Backend::Wasm => "wasm",
        _ => std::env::consts::DLL_EXTENSION,
    };
    let to = dir.join(format!("{name}.{ext}"));
    std::fs::copy(fixture.artifact(backend), &to).unwrap();
    to
}

/// What a signature of `artifact` would vouch for.
fn statement(artifact: &Path) -> Statement {
    swapkit::inspect(artifact).unwrap().statement()
}

/// Writes the signature of `statement` by `key` next to `artifact`.
fn sign_as(artifact: &Path, statement: Statement, key: &SecretKey) {
    let signed = SignatureFile::sign(statement, key).unwrap();
    std::fs::write(signature_path(artifact), signed.to_text()).unwrap();
}

fn sign(artifact: &Path, key: &SecretKey) {
    sign_as(artifact, statement(artifact), key);
}

fn builder(policy: TrustPolicy) -> SwapperBuilder {
    Swapper::builder()
        .wasm_cache_dir(common::wasm_cache())
        .trust(policy)
}

fn greets(swapper: &Swapper) -> String {
    swapper.client::<dyn Greeter>().unwrap().greet("t").unwrap()
}

/// Why `result` was refused by the policy.
fn refused(result: Result<swapkit::ReloadReport, LoadError>) -> TrustError {
    match result {
        Err(LoadError::Untrusted { source, .. }) => source,
        other => panic!("expected a refusal by the trust policy, got {other:?}"),
    }
}

/// A swapper trusting `key` that serves v1, signed by `key`, read `settle` after it was
/// written; and another key.
struct Signed {
    dir: tempfile::TempDir,
    key: SecretKey,
    other: SecretKey,
    v1: PathBuf,
    swapper: Swapper,
}

fn signed_v1(backend: Backend, settle: std::time::Duration) -> Signed {
    let dir = tempdir();
    let (key, other) = (
        SecretKey::generate().unwrap(),
        SecretKey::generate().unwrap(),
    );
    let v1 = place(dir.path(), Fixture::GreeterV1, backend, "v1");
    sign(&v1, &key);
    std::thread::sleep(settle);
    let swapper = builder(TrustPolicy::new().key(key.public()))
        .build()
        .unwrap();
    swapper.load_files([&v1]).unwrap();
    Signed {
        dir,
        key,
        other,
        v1,
        swapper,
    }
}

/// Any file in the plugin directory was run. Now only what a trusted key signed, for exactly
/// these bytes, this plugin, version and backend, loads; each refusal says why.
#[test]
fn only_what_a_trusted_key_signed_loads() {
    for backend in [Backend::Native, Backend::Wasm] {
        let Signed {
            dir,
            key,
            other,
            v1,
            swapper,
        } = signed_v1(backend, std::time::Duration::ZERO);
        assert_eq!(greets(&swapper), "hello, t (v1)");

        let v2 = place(dir.path(), Fixture::GreeterV2, backend, "v2");
        let load_v2 = || swapper.load_files([&v2]);
        assert_eq!(refused(load_v2()), TrustError::Unsigned);
        sign(&v2, &other);
        assert!(matches!(refused(load_v2()), TrustError::UnknownKey { .. }));
        // v1's signature beside v2: for other content.
        std::fs::copy(signature_path(&v1), signature_path(&v2)).unwrap();
        assert!(matches!(
            refused(load_v2()),
            TrustError::ContentMismatch { .. }
        ));
        // A signature for v2's bytes that calls it another version.
        let mut claim = statement(&v2);
        claim.version = "9.9.9".into();
        sign_as(&v2, claim, &key);
        assert!(matches!(
            refused(load_v2()),
            TrustError::Claim {
                field: "version",
                ..
            }
        ));
        // Signed properly, then changed.
        sign(&v2, &key);
        let mut bytes = std::fs::read(&v2).unwrap();
        bytes.extend_from_slice(b"appended");
        std::fs::write(&v2, &bytes).unwrap();
        assert!(matches!(
            refused(load_v2()),
            TrustError::ContentMismatch { .. }
        ));
        // A signature file altered by hand.
        place(dir.path(), Fixture::GreeterV2, backend, "v2");
        let text = std::fs::read_to_string(signature_path(&v2)).unwrap();
        std::fs::write(signature_path(&v2), text.replace("2.0.0", "2.0.1")).unwrap();
        assert!(matches!(
            refused(load_v2()),
            TrustError::BadSignature { .. }
        ));
        assert_eq!(
            greets(&swapper),
            "hello, t (v1)",
            "{backend:?}: v1 kept serving"
        );

        sign(&v2, &key);
        swapper.load_files([&v2]).unwrap();
        assert_eq!(greets(&swapper), "hi, t (v2)");
        // A revoked key is refused even though it is also trusted.
        let revoking = builder(
            TrustPolicy::new()
                .key(key.public())
                .revoke(key.public().id()),
        )
        .build()
        .unwrap();
        assert!(matches!(
            refused(revoking.load_files([&v2])),
            TrustError::RevokedKey { .. }
        ));
        // Allowing unsigned artifacts still checks the signatures that are there.
        let lenient = builder(TrustPolicy::new().allow_unsigned())
            .build()
            .unwrap();
        let unsigned = place(dir.path(), Fixture::GreeterV1, backend, "unsigned");
        lenient.load_files([&unsigned]).unwrap();
        assert!(matches!(
            refused(lenient.load_files([&v2])),
            TrustError::UnknownKey { .. }
        ));
    }
}

/// A reload that finds an artifact unchanged since it was read (and so does not read or hash
/// it again) still reads and checks its signature every time: one replaced by an unknown
/// key's, or removed, is refused, and v1 keeps serving.
#[test]
fn an_artifact_found_unchanged_is_still_checked_against_its_signature() {
    for backend in [Backend::Native, Backend::Wasm] {
        // Older than two clock ticks when first read: its metadata is trusted to show a change
        // from then on.
        let Signed {
            dir: _dir,
            key,
            other,
            v1,
            swapper,
        } = signed_v1(backend, std::time::Duration::from_millis(60));
        swapper.load_files([&v1]).unwrap();
        sign(&v1, &other);
        assert!(
            matches!(
                refused(swapper.load_files([&v1])),
                TrustError::UnknownKey { .. }
            ),
            "{backend:?}"
        );
        std::fs::remove_file(signature_path(&v1)).unwrap();
        assert_eq!(refused(swapper.load_files([&v1])), TrustError::Unsigned);
        assert_eq!(
            greets(&swapper),
            "hello, t (v1)",
            "{backend:?}: v1 kept serving"
        );
        sign(&v1, &key);
        swapper.load_files([&v1]).unwrap();
    }
}

/// `patches_from` (and so the admin socket's `patch_apply`) goes through the policy too.
#[test]
fn patch_plugins_are_checked_like_any_artifact() {
    let key = SecretKey::generate().unwrap();
    let swapper = builder(TrustPolicy::new().key(key.public()))
        .build()
        .unwrap();
    let dir = tempdir();
    let patches = dir
        .path()
        .join(format!("patches.{}", std::env::consts::DLL_EXTENSION));
    std::fs::copy(Fixture::Patches.path(), &patches).unwrap();
    let err = swapper.patches_from(&patches).unwrap_err();
    assert!(err.to_string().contains("is not trusted"), "{err}");
    assert!(err.to_string().contains("unsigned"), "{err}");
    sign(&patches, &key);
    let _signed = swapper.patches_from(&patches).unwrap();
}

/// A kept artifact replaced in the state directory was loaded by `resume` and recorded as
/// known-good. Now each kept artifact must hash to its record: a replaced one is refused and
/// the host starts from its plugin directory instead. A link planted under a release's name
/// before its first run is replaced when the release is kept.
#[test]
fn resume_loads_only_what_was_kept() {
    let key = SecretKey::generate().unwrap();
    let policy = || TrustPolicy::new().key(key.public());
    let base = tempdir();
    let (plugins, state) = (base.path().join("plugins"), base.path().join("state"));
    std::fs::create_dir(&plugins).unwrap();
    let v1 = place(&plugins, Fixture::GreeterV1, Backend::Native, "greeter");
    sign(&v1, &key);
    // Planted before the first run: the name v1 will be kept under, linking to v2.
    let sha = swapkit::inspect_file(&v1).unwrap().sha256;
    let kept = state
        .join("artifacts")
        .join(format!("{sha}.{}", std::env::consts::DLL_EXTENSION));
    std::fs::create_dir_all(kept.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(Fixture::GreeterV2.path(), &kept).unwrap();
    {
        let host = builder(policy()).state_dir(&state).build().unwrap();
        host.resume(&plugins).unwrap();
        assert_eq!(greets(&host), "hello, t (v1)");
    }
    assert!(
        std::fs::symlink_metadata(&kept).unwrap().is_file(),
        "the planted link was replaced by the real artifact"
    );
    assert!(signature_path(&kept).is_file(), "the signature is kept too");
    // The plugin directory moves on to v2; a restart resumes v1, the known-good selection.
    std::fs::remove_file(signature_path(&v1)).unwrap();
    place(&plugins, Fixture::GreeterV2, Backend::Native, "greeter");
    sign(&v1, &key);
    {
        let host = builder(policy()).state_dir(&state).build().unwrap();
        host.resume(&plugins).unwrap();
        assert_eq!(greets(&host), "hello, t (v1)");
    }
    // Someone replaces the kept v1 with other bytes (even signed ones): refused, and the
    // host starts from the plugin directory, v2.
    std::fs::remove_file(&kept).unwrap();
    std::fs::copy(Fixture::GreeterV1.wasm_path(), &kept).unwrap();
    let host = builder(policy()).state_dir(&state).build().unwrap();
    host.resume(&plugins).unwrap();
    assert_eq!(greets(&host), "hi, t (v2)");
}

/// A state directory another user may write is refused: what it keeps is run on resume.
#[test]
fn a_state_directory_others_may_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempdir();
    let state = base.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Swapper::builder().state_dir(&state).build().unwrap_err();
    assert!(err.to_string().contains("make it 0700"), "{err}");
    let fresh = base.path().join("fresh");
    Swapper::builder().state_dir(&fresh).build().unwrap();
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// The compile-cache entry of each module, by module.
fn cache_entry(cache: &Path, module: &Path) -> PathBuf {
    let sha = swapkit::inspect_file(module).unwrap().sha256;
    std::fs::read_dir(cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&sha[..32]))
        })
        .expect("a cache entry")
}

/// An attacker's compiled module copied under a benign module's key was loaded and answered in
/// its place; a patched entry with its checksum recomputed ran. Entries are now authenticated
/// with a per-host secret: both are recompiled, never run.
#[test]
fn a_planted_cache_entry_is_recompiled_not_run() {
    let base = tempdir();
    let cache = base.path().join("cache");
    let (greeter, hostile) = (Fixture::GreeterV1.wasm_path(), Fixture::Hostile.wasm_path());
    let fresh = || Swapper::builder().wasm_cache_dir(&cache).build().unwrap();
    let first = fresh();
    first.load_files([&greeter]).unwrap();
    first.load_files([&hostile]).unwrap();
    assert_eq!(first.wasm_compiles(), 2);
    drop(first);
    // The hostile module's compiled code, under the greeter's key.
    std::fs::copy(cache_entry(&cache, &hostile), cache_entry(&cache, &greeter)).unwrap();
    let second = fresh();
    second.load_files([&greeter]).unwrap();
    assert_eq!(
        second.wasm_compiles(),
        1,
        "the planted entry was recompiled"
    );
    assert_eq!(greets(&second), "hello, t (v1)", "and the greeter answers");
    // The rewritten entry is authentic again; the next host reads it from the cache.
    let third = fresh();
    third.load_files([&greeter]).unwrap();
    assert_eq!(third.wasm_compiles(), 0);
}

/// A cache directory another user may write is not used: every load compiles.
#[test]
fn a_cache_directory_others_may_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempdir();
    let cache = base.path().join("open");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    for _ in 0..2 {
        let swapper = Swapper::builder().wasm_cache_dir(&cache).build().unwrap();
        swapper
            .load_files([Fixture::GreeterV1.wasm_path()])
            .unwrap();
        assert_eq!(swapper.wasm_compiles(), 1);
    }
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        0,
        "nothing written"
    );
}

/// The native copy was written under a predictable name and opened by path, so another user
/// could swap it for a link between the write and `dlopen`. Now it is a sealed memory file
/// with no path at all: the scratch directory stays empty, and the mapping is a memfd.
#[test]
fn a_native_copy_has_no_path_to_swap() {
    let scratch = tempdir();
    let swapper = Swapper::builder()
        .scratch_dir(scratch.path())
        .build()
        .unwrap();
    swapper.load_files([Fixture::GreeterV1.path()]).unwrap();
    assert_eq!(greets(&swapper), "hello, t (v1)");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        maps.lines()
            .any(|l| l.contains("memfd:swapkit-") && l.contains("r-xp")),
        "the plugin's code is mapped from a memfd"
    );
}

/// The names the dynamic loader knows this process's libraries by.
fn loaded_names() -> Vec<String> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _: libc::size_t,
        out: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info and our `out`.
        unsafe {
            let names = &mut *(out as *mut Vec<String>);
            let name = (*info).dlpi_name;
            if !name.is_null() {
                names.push(
                    std::ffi::CStr::from_ptr(name)
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        0
    }
    let mut names: Vec<String> = vec![];
    // SAFETY: the callback only reads what it is given and writes to `names`.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut names as *mut Vec<String> as *mut _) };
    names
}

/// A debugger opens a library by the name the dynamic loader recorded, in its own process:
/// with `/proc/self/fd/N`, gdb read one of its own descriptors and hung. The name is now
/// `/proc/<pid>/fd/N`, which reaches the same sealed memory file from any process.
#[test]
fn a_native_copy_is_known_by_a_path_a_debugger_can_open() {
    let swapper = Swapper::new().unwrap();
    swapper.load_files([Fixture::GreeterV2.path()]).unwrap();
    let ours = format!("/proc/{}/fd/", std::process::id());
    let names = loaded_names();
    assert!(
        names.iter().any(|n| n.starts_with(&ours)),
        "no library known by {ours}N: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("/proc/self/")),
        "{names:?}"
    );
}

/// For tools that cannot read a memory file (profilers name a library by its mapping),
/// `debuggable_copies` maps plugins from files in a private directory.
#[test]
fn debuggable_copies_are_files_in_a_private_directory() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = tempdir();
    let swapper = Swapper::builder()
        .scratch_dir(scratch.path())
        .debuggable_copies()
        .build()
        .unwrap();
    swapper.load_files([Fixture::ChainBase.path()]).unwrap();
    let dirs: Vec<PathBuf> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let [dir] = &dirs[..] else {
        panic!("one private directory: {dirs:?}")
    };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir), 0o700);
    let copies: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let [copy] = &copies[..] else {
        panic!("one copy: {copies:?}")
    };
    assert_eq!(mode(copy), 0o500);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let copy = copy.to_str().unwrap();
    assert!(
        maps.lines()
            .any(|l| l.ends_with(copy) && l.contains("r-xp")),
        "the plugin's code is mapped from {copy}"
    );
}

/// An old release, even validly signed, was loaded again by dropping it in the plugin
/// directory. Under a trust policy a plugin never goes to a lower version than the highest
/// this host published, unless the operator asks: a rollback, or `Swapper::downgrade`. A
/// restart with a state directory remembers the highest version.
#[test]
fn a_signed_old_release_does_not_come_back_by_itself() {
    let key = SecretKey::generate().unwrap();
    let base = tempdir();
    let state = base.path().join("state");
    let v1 = place(base.path(), Fixture::GreeterV1, Backend::Native, "v1");
    let v2 = place(base.path(), Fixture::GreeterV2, Backend::Native, "v2");
    sign(&v1, &key);
    sign(&v2, &key);
    let host = || {
        builder(TrustPolicy::new().key(key.public()))
            .state_dir(&state)
            .build()
            .unwrap()
    };
    let swapper = host();
    swapper.load_files([&v1]).unwrap();
    swapper.load_files([&v2]).unwrap();
    match swapper.load_files([&v1]) {
        Err(LoadError::Downgrade {
            plugin,
            version,
            highest,
        }) => assert_eq!(
            (&*plugin, &*version, &*highest),
            ("greeter", "1.0.0", "2.0.0")
        ),
        other => panic!("expected the downgrade to be refused, got {other:?}"),
    }
    assert_eq!(greets(&swapper), "hi, t (v2)");
    // A rollback is the operator's choice.
    swapper.rollback().unwrap();
    assert_eq!(greets(&swapper), "hello, t (v1)");
    swapper.load_files([&v2]).unwrap();
    // So is an explicit downgrade.
    swapper.downgrade([&v1]).unwrap();
    assert_eq!(greets(&swapper), "hello, t (v1)");
    drop(swapper);
    // A restarted host remembers 2.0.0.
    let restarted = host();
    assert!(matches!(
        restarted.load_files([&v1]),
        Err(LoadError::Downgrade { .. })
    ));
    restarted.load_files([&v2]).unwrap();
}

/// Rollback protection compared only semver versions: a signed release versioned `banana`
/// (or `1.0`, or `2`) passed it whatever the highest version published. Under a trust policy
/// a version that is not semver is refused, an explicit downgrade included, with the version
/// and the rule in the message; without a policy it loads. Pre-releases order below their
/// release.
#[test]
fn a_version_that_is_not_semver_is_refused_under_a_policy() {
    let key = SecretKey::generate().unwrap();
    let dir = tempdir();
    let policy = || TrustPolicy::new().key(key.public());
    for version in ["banana", "1.0", "2", "v1.2.3"] {
        let path = common::wat::Wat::plugin("loose")
            .version(version)
            .write_to(dir.path());
        sign(&path, &key);
        let swapper = builder(policy()).build().unwrap();
        for result in [swapper.load_files([&path]), swapper.downgrade([&path])] {
            match result {
                Err(LoadError::Unversioned {
                    plugin,
                    version: refused,
                    ..
                }) => {
                    assert_eq!((&*plugin, &*refused), ("loose", version));
                }
                other => panic!("expected {version:?} to be refused, got {other:?}"),
            }
        }
        assert_eq!(swapper.generation(), 0, "nothing was published");
        let message = swapper.load_files([&path]).unwrap_err().to_string();
        assert!(message.contains("must be semver"), "{message}");
        // Without a policy nothing is compared, and it loads.
        let open = Swapper::builder()
            .wasm_cache_dir(common::wasm_cache())
            .build()
            .unwrap();
        open.load_files([&path]).unwrap();
    }
    // A release candidate of 2.0.0 is below 2.0.0.
    let swapper = builder(policy()).build().unwrap();
    let release = common::wat::Wat::plugin("loose")
        .version("2.0.0")
        .write_to(dir.path());
    sign(&release, &key);
    swapper.load_files([&release]).unwrap();
    let candidate = common::wat::Wat::plugin("loose")
        .version("2.0.0-rc.1")
        .write_to(dir.path());
    sign(&candidate, &key);
    assert!(matches!(
        swapper.load_files([&candidate]),
        Err(LoadError::Downgrade { .. })
    ));
}

/// A canary is a load like any other: under a policy, an unsigned or older release cannot
/// run beside the stable one, even for 1% of keys.
#[test]
fn canaries_are_checked_like_any_load() {
    for backend in [Backend::Native, Backend::Wasm] {
        let dir = tempdir();
        let key = SecretKey::generate().unwrap();
        let (v1, v2) = (
            place(dir.path(), Fixture::GreeterV1, backend, "v1"),
            place(dir.path(), Fixture::GreeterV2, backend, "v2"),
        );
        sign(&v1, &key);
        let swapper = builder(TrustPolicy::new().key(key.public()))
            .build()
            .unwrap();
        swapper.load_files([&v2]).unwrap_err();
        sign(&v2, &key);
        swapper.load_files([&v2]).unwrap();
        // 1.0.0 is signed, but older than what this host has run.
        let err = swapper.canary(&v1).percent(1.0).start().unwrap_err();
        assert!(matches!(err, LoadError::Downgrade { .. }), "{err}");
        let v2b = place(dir.path(), Fixture::GreeterFaulty, backend, "v2b");
        let err = swapper.canary(&v2b).percent(1.0).start().unwrap_err();
        assert!(
            matches!(
                &err,
                LoadError::Untrusted {
                    source: TrustError::Unsigned,
                    ..
                }
            ),
            "{err}"
        );
        assert!(swapper.canary_status().is_none());
        assert_eq!(greets(&swapper), "hi, t (v2)");
    }
}
