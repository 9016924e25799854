//! Operating a swapper: the file watcher, auto-rollback, the persisted known-good selection,
//! rollback to a named selection, the admin socket's access control, coalesced triggers and
//! metrics. Real plugins, real threads, a real socket.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[cfg(feature = "wasm")]
use common::wasm_cache;
use common::{tempdir, Backend, Fixture};
use fixture_api::Greeter;
use swapkit::admin::{Client, ClientError, FailureKind, Outcome, Request};
use swapkit::{LoadError, Probation, RollbackTarget, Swapper, SwapperBuilder};

fn builder() -> SwapperBuilder {
    let builder = Swapper::builder();
    #[cfg(feature = "wasm")]
    let builder = builder.wasm_cache_dir(wasm_cache());
    builder.interface::<dyn Greeter>()
}

fn artifact_name(backend: Backend) -> String {
    match backend {
        Backend::Wasm => "greeter.wasm".into(),
        _ => format!("greeter.{}", std::env::consts::DLL_EXTENSION),
    }
}

/// Replaces `to` by an atomic rename from a hidden temporary file.
fn publish(fixture: Fixture, backend: Backend, to: &Path) {
    let tmp = to.with_file_name(".incoming.tmp");
    std::fs::copy(fixture.artifact(backend), &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// Polls `f` until it is true, for up to 20 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn greeting(swapper: &Swapper) -> String {
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    greeter
        .greet("ops")
        .unwrap_or_else(|e| format!("error: {e}"))
}

fn watcher_loads_renamed_artifacts_and_waits_for_half_written_ones(backend: Backend) {
    let dir = tempdir();
    let artifact = dir.path().join(artifact_name(backend));
    publish(Fixture::GreeterV1, backend, &artifact);
    let swapper = builder().watch(Duration::from_millis(50)).build().unwrap();
    swapper.load_dir(dir.path()).unwrap();
    assert!(greeting(&swapper).contains("(v1)"));

    // An atomic rename: loaded once, complete.
    publish(Fixture::GreeterV2, backend, &artifact);
    eventually("the watcher to load v2", || {
        greeting(&swapper).contains("(v2)")
    });
    let after_rename = swapper.generation();

    // A file written in place, slowly: half of it, then a pause far past the debounce.
    let bytes = std::fs::read(Fixture::GreeterV1.artifact(backend)).unwrap();
    let mut file = std::fs::File::create(&artifact).unwrap();
    use std::io::Write;
    file.write_all(&bytes[..bytes.len() / 2]).unwrap();
    file.flush().unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        swapper.generation(),
        after_rename,
        "a half-written artifact was loaded"
    );
    assert!(greeting(&swapper).contains("(v2)"));
    assert_eq!(swapper.status().history, 1);

    // Once the writer finishes and closes the file, it loads.
    file.write_all(&bytes[bytes.len() / 2..]).unwrap();
    drop(file);
    eventually("the watcher to load the completed v1", || {
        greeting(&swapper).contains("(v1)")
    });
    assert_eq!(swapper.generation(), after_rename + 1);
}

fn auto_rollback_undoes_a_faulty_release(backend: Backend) {
    let dir = tempdir();
    let artifact = dir.path().join(artifact_name(backend));
    publish(Fixture::GreeterV1, backend, &artifact);
    let state = tempdir();
    let policy = Probation::new(Duration::from_secs(30))
        .max_failure_rate(0.2)
        .min_calls(5);
    let swapper = builder()
        .auto_rollback(policy)
        .state_dir(state.path())
        .build()
        .unwrap();
    let first = swapper.load_dir(dir.path()).unwrap().generation;
    let greeter = swapper.client::<dyn Greeter>().unwrap();

    publish(Fixture::GreeterFaulty, backend, &artifact);
    let faulty = swapper.reload().unwrap().generation;
    assert_eq!(swapper.status().current.plugins[0].version, "2.1.0");
    // Every greeting panics in the faulty release; the host turns each into an error.
    let mut failures = 0;
    eventually("the auto-rollback", || {
        if greeter.greet("x").is_err() {
            failures += 1;
        }
        swapper.generation() > faulty
    });
    assert!(
        failures >= 5,
        "rolled back after {failures} failures, before min_calls"
    );
    let status = swapper.status();
    assert_eq!(status.current.plugins[0].version, "1.0.0");
    assert_eq!(greeter.greet("x").unwrap(), "hello, x (v1)");
    // The faulty selection never became the known-good one: a restart would start on v1.
    let known: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.path().join("known-good.json")).unwrap())
            .unwrap();
    assert_eq!(known["generation"], swapper.generation());
    assert_eq!(known["plugins"][0]["version"], "1.0.0");
    assert!(first < faulty);
}

fn a_release_that_passes_probation_becomes_known_good(backend: Backend) {
    let dir = tempdir();
    let artifact = dir.path().join(artifact_name(backend));
    publish(Fixture::GreeterV1, backend, &artifact);
    let state = tempdir();
    let swapper = builder()
        .auto_rollback(Probation::new(Duration::from_millis(200)).min_calls(1))
        .state_dir(state.path())
        .build()
        .unwrap();
    swapper.load_dir(dir.path()).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    publish(Fixture::GreeterV2, backend, &artifact);
    let v2 = swapper.reload().unwrap().generation;
    for _ in 0..20 {
        greeter.greet("x").unwrap();
    }
    let known = state.path().join("known-good.json");
    eventually("v2 to pass probation", || {
        std::fs::read(&known)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["generation"] == v2)
    });
    assert_eq!(
        swapper.generation(),
        v2,
        "a healthy release was rolled back"
    );
}

fn a_restarted_host_resumes_the_known_good_selection(backend: Backend) {
    let dir = tempdir();
    let artifact = dir.path().join(artifact_name(backend));
    let state = tempdir();
    publish(Fixture::GreeterV1, backend, &artifact);
    {
        let swapper = builder().state_dir(state.path()).build().unwrap();
        swapper.resume(dir.path()).unwrap();
        publish(Fixture::GreeterV2, backend, &artifact);
        swapper.reload().unwrap();
        assert!(greeting(&swapper).contains("(v2)"));
    }
    // Meanwhile the plugin directory went back to v1 (a bad deploy script, say).
    publish(Fixture::GreeterV1, backend, &artifact);
    let swapper = builder().state_dir(state.path()).build().unwrap();
    swapper.resume(dir.path()).unwrap();
    assert!(
        greeting(&swapper).contains("(v2)"),
        "did not resume the known-good v2"
    );
    // The plugin directory is still the source of later reloads.
    swapper.reload().unwrap();
    assert!(greeting(&swapper).contains("(v1)"));
    drop(swapper);

    // A torn selection file never stops a host from starting: it starts from the directory.
    std::fs::write(state.path().join("known-good.json"), b"{\"v\":1,\"generat").unwrap();
    let swapper = builder().state_dir(state.path()).build().unwrap();
    swapper.resume(dir.path()).unwrap();
    assert!(greeting(&swapper).contains("(v1)"));
    drop(swapper);

    // Nor does a kept artifact that was tampered with: its hash no longer matches.
    let known: serde_json::Value = {
        let swapper = builder().state_dir(state.path()).build().unwrap();
        swapper.load_dir(dir.path()).unwrap();
        serde_json::from_slice(&std::fs::read(state.path().join("known-good.json")).unwrap())
            .unwrap()
    };
    let kept = state
        .path()
        .join(known["plugins"][0]["file"].as_str().unwrap());
    std::fs::write(&kept, b"not a plugin").unwrap();
    let swapper = builder().state_dir(state.path()).build().unwrap();
    swapper.resume(dir.path()).unwrap();
    assert!(greeting(&swapper).contains("(v1)"));
}

fn rollback_to_a_named_selection(backend: Backend) {
    let dir = tempdir();
    let artifact = dir.path().join(artifact_name(backend));
    publish(Fixture::GreeterV1, backend, &artifact);
    let swapper = builder().build().unwrap();
    let g1 = swapper.load_dir(dir.path()).unwrap().generation;
    publish(Fixture::GreeterV2, backend, &artifact);
    let g2 = swapper.reload().unwrap().generation;
    assert_eq!(swapper.history().len(), 1);

    // Nothing kept matches: an error naming what is kept, and nothing changes.
    let err = swapper
        .rollback_to(&"greeter@7.0.0".parse().unwrap())
        .unwrap_err();
    assert!(matches!(err, LoadError::NoMatch { .. }), "{err}");
    assert!(err.to_string().contains("greeter@1.0.0"), "{err}");
    assert_eq!(swapper.generation(), g2);
    assert!(matches!(
        "greeter@".parse::<RollbackTarget>(),
        Err(LoadError::BadRollbackTarget { .. })
    ));

    // By version, although the file on disk is v2's.
    swapper
        .rollback_to(&"greeter@1.0.0".parse().unwrap())
        .unwrap();
    assert!(greeting(&swapper).contains("(v1)"));
    // The selection rolled back from is kept: forward again, by generation.
    let history = swapper.history();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].generation, g2);
    assert_eq!(history[0].plugins[0].1, "2.0.0");
    swapper
        .rollback_to(&RollbackTarget::Generation(g2))
        .unwrap();
    assert!(greeting(&swapper).contains("(v2)"));
    assert_eq!(swapper.history()[0].plugins[0].1, "1.0.0");
    assert_ne!(
        swapper.history()[0].generation,
        g1,
        "history records the generation it was published as"
    );
}

on_swappable_backends!(
    watcher_loads_renamed_artifacts_and_waits_for_half_written_ones,
    auto_rollback_undoes_a_faulty_release,
    a_release_that_passes_probation_becomes_known_good,
    a_restarted_host_resumes_the_known_good_selection,
    rollback_to_a_named_selection,
);

/// A swapper serving v1 with its admin socket in a fresh directory.
fn admin_host(allow: Option<u32>) -> (tempfile::TempDir, PathBuf, Swapper) {
    let dir = tempdir();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    publish(
        Fixture::GreeterV1,
        Backend::Native,
        &plugins.join(artifact_name(Backend::Native)),
    );
    let socket = dir.path().join("admin.sock");
    let mut b = builder().admin_socket(&socket);
    if let Some(uid) = allow {
        b = b.admin_allow_uid(uid);
    }
    let swapper = b.build().unwrap();
    swapper.load_dir(&plugins).unwrap();
    (dir, socket, swapper)
}

#[test]
fn the_admin_socket_is_owner_only_and_refuses_other_uids() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, socket, swapper) = admin_host(None);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The owner is served.
    let mut client = Client::connect(&socket).unwrap();
    assert!(matches!(
        client.request(&Request::Status).unwrap(),
        Outcome::Status(_)
    ));

    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        println!("skipped the other-uid half: it needs root to run a client as `nobody`");
        return;
    }
    const NOBODY: u32 = 65534;
    // Let `nobody` reach the socket through the directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // With the socket's mode 0600, the kernel refuses `nobody` outright.
    assert_eq!(connect_as(NOBODY, &socket), Err(libc::EACCES));
    // Loosen the file's mode, as a careless deploy might: the uid check still refuses, and
    // says why.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let reply = connect_as(NOBODY, &socket).expect("nobody connects once the mode allows it");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["error"]["kind"], "forbidden", "{reply}");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("uid 65534"));
    // The host keeps serving.
    assert!(greeting(&swapper).contains("(v1)"));

    // Allowed explicitly, `nobody` is served.
    drop(swapper);
    let (dir, socket, _swapper) = admin_host(Some(NOBODY));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let reply = connect_as(NOBODY, &socket).unwrap();
    assert!(reply.contains("\"ok\""), "{reply}");
}

/// Under a trust policy the watcher refuses an artifact that arrives before its signature, and
/// reloads when the signature lands, whichever order a release writes them in.
#[test]
fn the_watcher_loads_a_release_once_its_signature_arrives() {
    use swapkit::trust::{signature_path, SecretKey, SignatureFile};
    let key = SecretKey::generate().unwrap();
    let dir = tempdir();
    let artifact = dir.path().join(artifact_name(Backend::Native));
    let sign = |fixture: Fixture| {
        let statement = swapkit::inspect(fixture.path()).unwrap().statement();
        let text = SignatureFile::sign(statement, &key).unwrap().to_text();
        let tmp = dir.path().join(".sig.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, signature_path(&artifact)).unwrap();
    };
    publish(Fixture::GreeterV1, Backend::Native, &artifact);
    sign(Fixture::GreeterV1);
    let swapper = builder()
        .trust(swapkit::TrustPolicy::new().key(key.public()))
        .watch(Duration::from_millis(50))
        .build()
        .unwrap();
    swapper.load_dir(dir.path()).unwrap();
    assert!(greeting(&swapper).contains("(v1)"));
    // v2 lands first, beside v1's signature: refused, v1 serves.
    publish(Fixture::GreeterV2, Backend::Native, &artifact);
    std::thread::sleep(Duration::from_millis(500));
    assert!(greeting(&swapper).contains("(v1)"));
    assert_eq!(swapper.generation(), 1);
    // Its signature lands: the watcher reloads.
    sign(Fixture::GreeterV2);
    eventually("the watcher to load the signed v2", || {
        greeting(&swapper).contains("(v2)")
    });
}

/// One allowed peer could hold all 16 connections, idle, and lock everyone out until they
/// timed out. Now one uid holds at most 8: the ninth is refused as busy, while another allowed
/// uid is still served, and a place comes back when a connection closes.
#[test]
fn one_uid_cannot_lock_the_others_out_of_the_admin_socket() {
    use std::os::unix::fs::PermissionsExt;
    const NOBODY: u32 = 65534;
    let (dir, socket, swapper) = admin_host(Some(NOBODY));
    let mut held: Vec<std::os::unix::net::UnixStream> = (0..8)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    // Connections are admitted in order, so the eight are in when the ninth is looked at.
    let busy = |socket: &Path| match Client::connect(socket).unwrap().request(&Request::Status) {
        Err(ClientError::Refused(f)) if f.kind == FailureKind::Busy => Some(f.message),
        Ok(Outcome::Status(_)) => None,
        other => panic!("expected a status or a busy refusal, got {other:?}"),
    };
    let message = busy(&socket).expect("a ninth connection of one uid is refused");
    assert!(
        message.contains("already holds 8 admin connections"),
        "{message}"
    );
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let reply = connect_as(NOBODY, &socket).expect("another uid connects");
        assert!(
            reply.contains("\"ok\""),
            "another allowed uid is served: {reply}"
        );
    } else {
        println!("skipped the other-uid half: it needs root to run a client as `nobody`");
    }
    held.pop();
    let start = Instant::now();
    while busy(&socket).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the place never came back"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(greeting(&swapper).contains("(v1)"));
}

/// A host with an admin socket whose idle timeout is `idle`: its directory, the socket, the
/// swapper.
fn admin_with_idle(idle: Duration) -> (tempfile::TempDir, PathBuf, Swapper) {
    let dir = tempdir();
    let socket = dir.path().join("admin.sock");
    let swapper = builder()
        .admin_socket(&socket)
        .admin_idle_timeout(idle)
        .build()
        .unwrap();
    (dir, socket, swapper)
}

/// A connection that says nothing is closed after the idle timeout, freeing its place.
#[test]
fn a_silent_admin_connection_is_closed() {
    use std::io::Read;
    let (_dir, socket, _swapper) = admin_with_idle(Duration::from_millis(200));
    let mut silent = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    // Half a request, then nothing.
    std::io::Write::write_all(&mut silent, b"{\"v\":1,").unwrap();
    let mut rest = Vec::new();
    let read = silent.read_to_end(&mut rest).unwrap();
    assert_eq!(read, 0, "the host closed the connection without a reply");
    let mut client = Client::connect(&socket).unwrap();
    assert!(matches!(
        client.request(&Request::Status).unwrap(),
        Outcome::Status(_)
    ));
}

/// The idle timeout was per read, so a peer that sent one byte before each timeout held its
/// connection forever (eight such held the operator's uid out). Now a request must be whole
/// within the timeout, however it trickles in.
#[test]
fn a_drip_fed_admin_request_is_cut_off() {
    use std::io::{Read, Write};
    let (_dir, socket, _swapper) = admin_with_idle(Duration::from_millis(300));
    let mut drip = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let request = b"{\"v\":1,\"op\":\"status\",\"padding\":\"................................\"}";
    // A byte every 50 ms, well within the timeout each, would take 3.5 s for the whole line.
    let mut sent = 0;
    for byte in request {
        if drip.write_all(&[*byte]).is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    drip.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = drip.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "no reply to a request that never ended: {rest:?}"
    );
    assert!(
        sent < request.len(),
        "the host kept reading a request for {} ms",
        sent * 50
    );
}

/// A peer that sends requests and never reads the replies fills the socket; the host's write
/// gives up after its write timeout (10 s) and closes the connection, instead of holding a
/// connection thread forever. Other clients are served meanwhile.
#[test]
fn a_peer_that_never_reads_is_cut_off() {
    use std::io::{Read, Write};
    let (_dir, socket, _swapper) = admin_host(None);
    let mut greedy = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    greedy
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Far more replies than a socket buffers. The host stops reading once its write blocks,
    // so this side's writes may block too: they run on a thread of their own.
    let mut writer = greedy.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let line = b"{\"v\":1,\"op\":\"status\"}\n".repeat(64);
        for _ in 0..1_000 {
            if writer.write_all(&line).is_err() {
                break;
            }
        }
    });
    let mut client = Client::connect(&socket).unwrap();
    assert!(matches!(
        client.request(&Request::Status).unwrap(),
        Outcome::Status(_)
    ));
    // Only now read: what the host wrote before it gave up, then the end of the stream. (Read
    // sooner, and the host's writes would go through again.)
    std::thread::sleep(Duration::from_secs(15));
    greedy
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut replies = Vec::new();
    greedy
        .read_to_end(&mut replies)
        .expect("the host closed the connection; a read timeout here means it never did");
    let answered = replies.iter().filter(|&&b| b == b'\n').count();
    assert!(
        answered > 0 && answered < 64_000,
        "{answered} of 64,000 requests answered before the host gave up"
    );
    drop(greedy);
    sender.join().unwrap();
}

/// `patch_apply` of a FIFO blocked a connection thread forever, and of `/dev/zero` read
/// without end. An artifact must now be a regular file under the size cap, checked on the
/// open handle before a byte is read.
#[test]
fn patch_apply_reads_only_regular_files_under_the_cap() {
    use std::os::unix::ffi::OsStrExt;
    let (dir, socket, swapper) = admin_host(None);
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let huge = dir.path().join("huge.so");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    let mut client = Client::connect(&socket).unwrap();
    for (artifact, expect) in [
        (fifo, "is a FIFO, not a plugin artifact"),
        (PathBuf::from("/dev/zero"), "is a character device"),
        (huge, "larger than the 268435456 bytes"),
    ] {
        let request = Request::PatchApply {
            artifact,
            percent: None,
            id: None,
        };
        match client.request(&request) {
            Err(ClientError::Refused(f)) => {
                assert_eq!(f.kind, FailureKind::Patch);
                assert!(f.message.contains(expect), "{}", f.message);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert!(greeting(&swapper).contains("(v1)"));
    // The same holds for a reload from a directory holding such a file.
    let err = swapper
        .load_files([PathBuf::from("/dev/zero")])
        .expect_err("a device is no artifact");
    assert!(matches!(err, LoadError::NotAFile { .. }), "{err:?}");
}

/// In a forked child running as `uid`, connects to `socket`, sends a status request and
/// returns the reply line, or the errno of the connect. Only raw system calls run in the
/// child, since the parent is multithreaded.
fn connect_as(uid: u32, socket: &Path) -> Result<String, i32> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: `sockaddr_un` is plain old data, for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = socket.as_os_str().as_bytes();
    assert!(path.len() < addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    let request = b"{\"v\":1,\"op\":\"status\"}\n";
    let mut fds = [0; 2];
    // SAFETY: plain system calls on valid buffers; the child only makes system calls and
    // leaves with _exit.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            libc::close(fds[0]);
            let out = fds[1];
            if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(90);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                let errno = *libc::__errno_location();
                let code = [b'E', errno as u8];
                libc::write(out, code.as_ptr().cast(), 2);
                libc::_exit(0);
            }
            libc::write(out, b"R".as_ptr().cast(), 1);
            libc::write(fd, request.as_ptr().cast(), request.len());
            let mut buf = [0u8; 4096];
            loop {
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 {
                    break;
                }
                libc::write(out, buf.as_ptr().cast(), n as usize);
                if buf[..n as usize].contains(&b'\n') {
                    break;
                }
            }
            libc::_exit(0);
        }
        libc::close(fds[1]);
        let mut got = vec![];
        let mut buf = [0u8; 4096];
        loop {
            let n = libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                break;
            }
            got.extend_from_slice(&buf[..n as usize]);
        }
        libc::close(fds[0]);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child failed: {status}"
        );
        match got.first() {
            Some(b'E') => Err(got[1] as i32),
            Some(b'R') => Ok(String::from_utf8_lossy(&got[1..]).into_owned()),
            _ => panic!("child said nothing"),
        }
    }
}

#[test]
fn malformed_requests_get_error_replies_and_the_host_keeps_serving() {
    let (_dir, socket, swapper) = admin_host(None);
    let mut client = Client::connect(&socket).unwrap();
    let cases = [
        ("not json at all\n", FailureKind::BadRequest),
        ("{\"v\":1}\n", FailureKind::BadRequest),
        (
            "{\"v\":1,\"op\":\"rollback\",\"to\":7}\n",
            FailureKind::BadRequest,
        ),
        ("{\"v\":2,\"op\":\"status\"}\n", FailureKind::Version),
        ("{\"v\":1,\"op\":\"rollback\"}\n", FailureKind::NotFound),
        (
            "{\"v\":1,\"op\":\"rollback\",\"to\":\"greeter@\"}\n",
            FailureKind::BadRequest,
        ),
        (
            "{\"v\":1,\"op\":\"patch_restore\",\"id\":\"nope\"}\n",
            FailureKind::NotFound,
        ),
        (
            "{\"v\":1,\"op\":\"patch_apply\",\"artifact\":\"/nonexistent.so\"}\n",
            FailureKind::Patch,
        ),
    ];
    for (line, kind) in cases {
        match client.send_raw(line) {
            Err(ClientError::Refused(f)) => assert_eq!(f.kind, kind, "{line}: {}", f.message),
            other => panic!("{line}: {other:?}"),
        }
    }
    // A line longer than the limit closes the connection after its error.
    let huge = format!(
        "{{\"v\":1,\"op\":\"status\",\"pad\":\"{}\"}}\n",
        "x".repeat(swapkit::admin::MAX_LINE)
    );
    assert!(
        matches!(client.send_raw(&huge), Err(ClientError::Refused(f)) if f.kind == FailureKind::BadRequest)
    );
    // Nothing changed, and the host serves calls and requests.
    assert_eq!(swapper.generation(), 1);
    assert!(greeting(&swapper).contains("(v1)"));
    let mut client = Client::connect(&socket).unwrap();
    match client.request(&Request::Status).unwrap() {
        // The admin socket is the one trigger this host armed.
        Outcome::Status(s) => assert_eq!(s.triggers, ["admin"]),
        other => panic!("{other:?}"),
    }
    // A reload that fails is an error reply; v1 keeps serving.
    let failed = |client: &mut Client| match client.request(&Request::Status).unwrap() {
        Outcome::Status(s) => (s.reloads.failed, s.reloads.last_error),
        other => panic!("{other:?}"),
    };
    let (failed_before, _) = failed(&mut client);
    let plugins = socket.with_file_name("plugins");
    std::fs::write(plugins.join(artifact_name(Backend::Native)), b"garbage").unwrap();
    match client.request(&Request::Reload) {
        Err(ClientError::Refused(f)) => assert_eq!(f.kind, FailureKind::Load),
        other => panic!("{other:?}"),
    }
    assert!(greeting(&swapper).contains("(v1)"));
    let (failed_after, last_error) = failed(&mut client);
    assert_eq!(failed_after, failed_before + 1);
    assert!(last_error.unwrap().contains("greeter"));
}

#[test]
fn concurrent_reload_requests_are_coalesced() {
    let (_dir, socket, swapper) = admin_host(None);
    let before = swapper.generation();
    const THREADS: usize = 8;
    const EACH: usize = 10;
    let generations: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    let mut client = Client::connect(&socket).unwrap();
                    (0..EACH)
                        .map(|_| match client.request(&Request::Reload).unwrap() {
                            Outcome::Swapped(swap) => swap.generation,
                            other => panic!("{other:?}"),
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Every request was answered by a reload that started after it: each client sees its
    // generations increase.
    for g in &generations {
        assert!(g.windows(2).all(|w| w[1] > w[0]), "{g:?}");
    }
    let reloads = swapper.generation() - before;
    assert!(reloads >= EACH as u64);
    assert!(
        reloads < (THREADS * EACH) as u64,
        "{reloads} reloads for {} requests: nothing was coalesced",
        THREADS * EACH
    );
    assert!(greeting(&swapper).contains("(v1)"));
}

#[test]
fn call_counts_reach_status_and_the_metrics_facade() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let dir = tempdir();
    publish(
        Fixture::GreeterV1,
        Backend::Native,
        &dir.path().join(artifact_name(Backend::Native)),
    );
    let swapper = builder()
        .metrics_interval(Duration::from_millis(20))
        .auto_rollback(Probation::new(Duration::from_secs(30)).min_calls(3))
        .build()
        .unwrap();
    swapper.load_dir(dir.path()).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| (0..50).for_each(|_| drop(greeter.greet("x").unwrap())));
        }
    });
    assert!(greeter.fail("on purpose").is_err());
    type Entries = Vec<(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        metrics_util::debugging::DebugValue,
    )>;
    let counter = |entries: &Entries, name: &str, kind: Option<&str>| {
        entries
            .iter()
            .find(|(key, ..)| {
                let labels = || key.key().labels();
                key.key().name() == name
                    && labels().any(|l| l.key() == "plugin" && l.value() == "greeter")
                    && kind.is_none_or(|k| labels().any(|l| l.key() == "kind" && l.value() == k))
            })
            .and_then(|(.., v)| match v {
                metrics_util::debugging::DebugValue::Counter(n) => Some(*n),
                _ => None,
            })
    };
    eventually("the metrics flush", || {
        let entries = snapshotter.snapshot().into_vec();
        counter(&entries, "swapkit_calls_total", None) == Some(101)
            && counter(&entries, "swapkit_call_failures_total", Some("panic")) == Some(1)
    });

    // Every other metric the README names, after a reload, a failed one, an auto-rollback and
    // with a pin held.
    let pin = swapper.pin();
    publish(
        Fixture::GreeterFaulty,
        Backend::Native,
        &dir.path().join(artifact_name(Backend::Native)),
    );
    swapper.reload().unwrap();
    eventually("the auto-rollback", || {
        let _ = greeter.greet("x");
        swapper.status().current.plugins[0].version == "1.0.0"
    });
    std::fs::write(
        dir.path().join(artifact_name(Backend::Native)),
        b"not a plugin",
    )
    .unwrap();
    swapper.reload().unwrap_err();
    fn named<'e>(
        entries: &'e Entries,
        name: &str,
        label: Option<(&str, &str)>,
    ) -> Option<&'e metrics_util::debugging::DebugValue> {
        entries.iter().find_map(|(key, _, _, value)| {
            let labelled = label
                .is_none_or(|(k, v)| key.key().labels().any(|l| l.key() == k && l.value() == v));
            (key.key().name() == name && labelled).then_some(value)
        })
    }
    use metrics_util::debugging::DebugValue::{Counter, Gauge, Histogram};
    // A snapshot drains what it reads: add the counters up over snapshots, keep the highest
    // gauge, and remember a histogram seen in any of them.
    let (mut published, mut failed, mut auto, mut alive, mut pins, mut timed) =
        (0, 0, 0, 0.0f64, 0.0f64, false);
    eventually("every metric", || {
        let e = snapshotter.snapshot().into_vec();
        let count = |name, label| match named(&e, name, label) {
            Some(Counter(n)) => *n,
            _ => 0,
        };
        let gauge = |name| match named(&e, name, None) {
            Some(Gauge(g)) => g.into_inner(),
            _ => 0.0,
        };
        published += count("swapkit_reloads_total", Some(("outcome", "published")));
        failed += count("swapkit_reloads_total", Some(("outcome", "failed")));
        auto += count("swapkit_auto_rollbacks_total", None);
        alive = alive.max(gauge("swapkit_generations_alive"));
        pins = pins.max(gauge("swapkit_pins_held"));
        timed |= matches!(named(&e, "swapkit_reload_duration_seconds", Some(("trigger", "reload"))), Some(Histogram(h)) if !h.is_empty());
        // The first load was read by the flush above: a reload and an auto-rollback since.
        published >= 2 && failed >= 1 && auto == 1 && alive >= 2.0 && pins >= 1.0 && timed
    });
    drop(pin);
}

#[test]
fn facilities_that_cannot_start_are_clear_errors() {
    let dir = tempdir();
    let socket = dir.path().join("admin.sock");
    let first = builder().admin_socket(&socket).build().unwrap();
    // A second host on a live socket is refused, and the first keeps it.
    let err = builder().admin_socket(&socket).build().unwrap_err();
    assert!(
        err.to_string().contains("another process is serving"),
        "{err}"
    );
    assert!(Client::connect(&socket).is_ok());
    // Dropping the swapper removes its socket.
    drop(first);
    assert!(!socket.exists());
    // A stale socket left by a host that died is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let _host = builder().admin_socket(&socket).build().unwrap();
    assert!(Client::connect(&socket).is_ok());

    // A signal that cannot be handled.
    let err = builder()
        .reload_on_signal(libc::SIGKILL)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::Ops {
                what: "signal handler",
                ..
            }
        ),
        "{err}"
    );
    // A state directory that cannot be made.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let err = builder().state_dir(file.join("state")).build().unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::Ops {
                what: "state directory",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn dropping_the_swapper_stops_the_admin_socket_even_if_its_file_is_gone() {
    let dir = tempdir();
    let socket = dir.path().join("admin.sock");
    let swapper = builder().admin_socket(&socket).build().unwrap();
    std::fs::remove_file(&socket).unwrap();
    // Returns: the accept thread is woken without the file.
    drop(swapper);
}

#[test]
fn an_admin_rollback_with_auto_rollback_on_is_not_judged() {
    let dir = tempdir();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let artifact = plugins.join(artifact_name(Backend::Native));
    publish(Fixture::GreeterV1, Backend::Native, &artifact);
    let socket = dir.path().join("admin.sock");
    // A window no test outlives: whatever is on probation stays there until judged.
    let swapper = builder()
        .admin_socket(&socket)
        .auto_rollback(Probation::new(Duration::from_secs(600)).min_calls(1_000_000))
        .build()
        .unwrap();
    swapper.load_dir(&plugins).unwrap();
    publish(Fixture::GreeterV2, Backend::Native, &artifact);
    let v2 = swapper.reload().unwrap().generation;
    let mut client = Client::connect(&socket).unwrap();
    let probation = |client: &mut Client| match client.request(&Request::Status).unwrap() {
        Outcome::Status(status) => status.probation.map(|p| p.generation),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        probation(&mut client),
        Some(v2),
        "a reload goes on probation"
    );
    let back = match client.request(&Request::Rollback { to: None }).unwrap() {
        Outcome::Swapped(swap) => swap.generation,
        other => panic!("{other:?}"),
    };
    assert!(back > v2 && greeting(&swapper).contains("(v1)"));
    // The peer's "admin uid=.. pid=.." once made this a reload: it went on probation.
    assert_eq!(
        probation(&mut client),
        None,
        "an admin rollback was put on probation"
    );
}

/// Auto-rollback judges every kind of failure, not only panics: a release whose calls trap,
/// or run past the call timeout, is rolled back as a panicking one is.
#[cfg(feature = "wasm")]
#[test]
fn auto_rollback_follows_traps_and_timeouts() {
    for (what, expected) in [("unreachable", "trap"), ("loop", "timeout")] {
        let swapper = builder()
            .wasm_limits(swapkit::WasmLimits {
                call_timeout: Duration::from_millis(50),
                ..Default::default()
            })
            .auto_rollback(Probation::new(Duration::from_secs(30)).min_calls(3))
            .build()
            .unwrap();
        swapper
            .load_files([Fixture::GreeterV1.wasm_path()])
            .unwrap();
        let faulty = swapper
            .load_files([Fixture::Hostile.wasm_path()])
            .unwrap()
            .generation;
        let greeter = swapper.client::<dyn Greeter>().unwrap();
        let mut kinds = vec![];
        eventually("the auto-rollback", || {
            // Once rolled back, v1's `fail` panics: only the faulty release's failures count.
            if let Err(e) = greeter.fail(what) {
                if e.site().is_some_and(|s| &*s.plugin != "hostile") {
                    return swapper.generation() > faulty;
                }
                kinds.push(match e {
                    swapkit::CallError::Trap { .. } => "trap",
                    swapkit::CallError::Timeout { .. } => "timeout",
                    _ => "other",
                });
            }
            swapper.generation() > faulty
        });
        assert!(
            kinds.len() >= 3 && kinds.iter().all(|k| *k == expected),
            "{what}: {kinds:?}"
        );
        assert_eq!(
            greeter.version().unwrap(),
            "1.0.0",
            "{what}: back on the previous release"
        );
    }
}

/// A release whose calls come back with an error status (here `BadInput`, as a plugin built
/// against a drifted encoding answers) is rolled back like one that panics or traps.
#[cfg(feature = "wasm")]
#[test]
fn auto_rollback_follows_error_statuses() {
    let dir = tempdir();
    // `greeter` 0.0.1: every call answers status 3 (BadInput) with a message.
    let bad = common::wat::Wat::plugin("greeter")
        .data(3200, b"arguments did not decode")
        .body(
            "swapkit_call",
            "(i32.store (i32.const 16) (i32.const 3200)) \
             (i32.store (i32.const 20) (i32.const 24)) (i32.const 3)",
        )
        .write_to(dir.path());
    let swapper = builder()
        .auto_rollback(Probation::new(Duration::from_secs(30)).min_calls(3))
        .build()
        .unwrap();
    swapper
        .load_files([Fixture::GreeterV1.wasm_path()])
        .unwrap();
    let faulty = swapper.load_files([bad]).unwrap().generation;
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    let mut errors = vec![];
    eventually("the auto-rollback", || {
        if let Err(e) = greeter.version() {
            errors.push(e.to_string());
        }
        swapper.generation() > faulty
    });
    assert!(errors.len() >= 3, "{errors:?}");
    assert!(
        errors.iter().all(|e| e.contains("did not decode")),
        "{errors:?}"
    );
    assert_eq!(
        greeter.version().unwrap(),
        "1.0.0",
        "back on the previous release"
    );
}
