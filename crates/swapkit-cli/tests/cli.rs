//! The CLI end to end: a real host process (examples/ops/host), real plugins, the real
//! `swapkit` binary talking to the host's admin socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{build_plugins, build_wasm, cargo, ok, swapkit, workspace};

/// The ops host binary, as `cargo test --workspace` builds it (`examples/ops/host` has an
/// integration test, so its binary is built there): asking the same command for it again
/// finds everything fresh. `cargo build -p ops-host` would unify dependency features over
/// ops-host alone, which differ from the workspace's (dev-dependencies enable more), and
/// rebuild wasmtime and much else: minutes on a clean clone.
fn build_host() -> PathBuf {
    let out = Command::new(cargo())
        .current_dir(workspace())
        .args(["test", "--workspace", "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo test --workspace --no-run");
    assert!(
        out.status.success(),
        "building the workspace's tests failed"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "ops-host" && m["profile"]["test"] == false)
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
        .expect("ops-host executable")
}

/// A host process, with the lines it printed so far.
struct Host {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Host {
    fn spawn(exe: &Path, args: &[&str]) -> Host {
        let mut child = Command::new(exe)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning ops-host");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(vec![]));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let host = Host { child, lines };
        host.wait_for("ready");
        host
    }

    /// Waits until the host prints a line containing `text`, after `from` lines.
    fn wait_for_after(&self, from: usize, text: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            {
                let lines = self.lines.lock().unwrap();
                if let Some(i) = lines.iter().skip(from).position(|l| l.contains(text)) {
                    return from + i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the host never printed {text:?}; it printed {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_for(&self, text: &str) -> usize {
        self.wait_for_after(0, text)
    }

    fn seen(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    fn status(&self, socket: &str) -> serde_json::Value {
        serde_json::from_str(&ok(&["status", "--socket", socket, "--json"])).unwrap()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces `to` with a copy of `from` by an atomic rename, as a deploy would.
fn publish(from: &Path, to: &Path) {
    let tmp = to.with_file_name(".publish.tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[test]
fn the_cli_steers_a_running_host() {
    let exe = build_host();
    let built = build_plugins(&["hello-greeter-v1", "hello-greeter-v2", "ops-discount"]);
    let (v1, v2, discount) = (&built[0], &built[1], &built[2]);
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let artifact = plugins.join(format!("greeter.{}", std::env::consts::DLL_EXTENSION));
    publish(v1, &artifact);
    let socket = dir.path().join("admin.sock");
    let socket_s = socket.to_str().unwrap();
    let host = Host::spawn(
        &exe,
        &[
            "--plugins",
            plugins.to_str().unwrap(),
            "--socket",
            socket_s,
            "--no-watch",
        ],
    );
    host.wait_for("serving Hello, ops!");

    // The socket is the owner's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the admin socket's mode");

    // status: the plugin, its version and its calls.
    let text = ok(&["status", "--socket", socket_s]);
    assert!(text.contains("greeter") && text.contains("1.0.0"), "{text}");
    let status = host.status(socket_s);
    assert_eq!(status["plugins"][0]["version"], "1.0.0");
    assert!(
        status["plugins"][0]["calls"].as_u64().unwrap() > 0,
        "{status}"
    );
    let first = status["generation"].as_u64().unwrap();

    // reload after a rebuild: v2's artifact replaces v1's, then the CLI asks for a reload.
    let from = host.seen();
    publish(v2, &artifact);
    let text = ok(&["reload", "--socket", socket_s]);
    assert!(text.contains("loaded greeter@2.0.0"), "{text}");
    host.wait_for_after(from, "Hi there, ops");
    assert_eq!(
        host.status(socket_s)["generation"].as_u64().unwrap(),
        first + 1
    );

    // rollback --to: back to 1.0.0, although its file is gone from the plugin directory.
    let from = host.seen();
    let text = ok(&["rollback", "--socket", socket_s, "--to", "greeter@1.0.0"]);
    assert!(
        text.contains("rolled back") && text.contains("greeter@1.0.0"),
        "{text}"
    );
    host.wait_for_after(from, "serving Hello, ops!");
    let status = host.status(socket_s);
    assert_eq!(status["plugins"][0]["version"], "1.0.0");
    // The selection rolled back from is kept, so one can go forward again.
    assert!(
        status["history"][0]["plugins"][0]["version"] == "2.0.0",
        "{status}"
    );

    // A rollback to nothing kept is an error that names what is kept; nothing changes.
    let (success, _, stderr) = swapkit(&["rollback", "--socket", socket_s, "--to", "9.9.9"]);
    assert!(
        !success && stderr.contains("no kept selection has version 9.9.9"),
        "{stderr}"
    );

    // patch apply, list, restore.
    let from = host.seen();
    let text = ok(&[
        "patch",
        "apply",
        "--socket",
        socket_s,
        discount.to_str().unwrap(),
        "--id",
        "ten-off",
    ]);
    assert!(
        text.contains("ten-off") && text.contains("ops_host::pricing::price"),
        "{text}"
    );
    host.wait_for_after(from, "price 900");
    // A second patch of the same target stacks above the first; at 0% it admits no key, so
    // the first still serves, and `patch list` shows the stack in the order calls check it.
    ok(&[
        "patch",
        "apply",
        "--socket",
        socket_s,
        discount.to_str().unwrap(),
        "--id",
        "ten-off-trial",
        "--percent",
        "0",
    ]);
    let text = ok(&["patch", "list", "--socket", socket_s]);
    assert!(
        text.contains("ops_host::pricing::price")
            && text.contains("1. `ten-off-trial` for 0.00% of keys")
            && text.contains("2. `ten-off` for all keys"),
        "{text}"
    );
    assert!(
        text.contains("ops_host::pricing::capped  not patchable: a generic function"),
        "the module form's note: {text}"
    );
    ok(&["patch", "restore", "--socket", socket_s, "ten-off-trial"]);
    let text = ok(&["patch", "list", "--socket", socket_s]);
    assert!(
        text.contains("1. `ten-off` for all keys") && !text.contains("ten-off-trial"),
        "restoring the top patch left the one below: {text}"
    );
    let from = host.seen();
    ok(&["patch", "restore", "--socket", socket_s, "ten-off"]);
    host.wait_for_after(from, "price 1000");
    let (success, _, stderr) = swapkit(&["patch", "restore", "--socket", socket_s, "ten-off"]);
    assert!(
        !success && stderr.contains("no patch set `ten-off`"),
        "{stderr}"
    );

    // SIGHUP reloads too: v2 is still the file on disk.
    let from = host.seen();
    let pid = host.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    host.wait_for_after(from, "Hi there, ops");

    // canary: v1 beside v2 for the host's key, then not, then aborted; then promoted.
    let v1_s = v1.to_str().unwrap();
    let from = host.seen();
    let text = ok(&[
        "canary",
        "start",
        "--socket",
        socket_s,
        v1_s,
        "--percent",
        "100",
    ]);
    assert!(
        text.contains("started greeter 1.0.0 beside 2.0.0 at 100.00%"),
        "{text}"
    );
    host.wait_for_after(from, "serving Hello, ops!");
    let status = host.status(socket_s);
    let canary = &status["canary"];
    assert_eq!(
        (&canary["stable"]["version"], &canary["canary"]["version"]),
        (&"2.0.0".into(), &"1.0.0".into()),
        "{status}"
    );
    let text = ok(&["status", "--socket", socket_s]);
    assert!(text.contains("canary of `greeter` at 100.00%"), "{text}");
    let (success, _, stderr) = swapkit(&["canary", "start", "--socket", socket_s, v1_s]);
    assert!(
        !success && stderr.contains("is running already"),
        "{stderr}"
    );
    let from = host.seen();
    ok(&["canary", "set", "--socket", socket_s, "0"]);
    host.wait_for_after(from, "Hi there, ops");
    let text = ok(&["canary", "abort", "--socket", socket_s]);
    assert!(text.contains("canary aborted"), "{text}");
    let status = host.status(socket_s);
    assert!(status["canary"].is_null(), "{status}");
    assert!(
        status["last_canary"].as_str().unwrap().contains("aborted"),
        "{status}"
    );
    let (success, _, stderr) = swapkit(&["canary", "promote", "--socket", socket_s]);
    assert!(
        !success && stderr.contains("no canary is running"),
        "{stderr}"
    );
    let (success, _, stderr) = swapkit(&["canary", "start", "--socket", socket_s, v1_s, "--gate"]);
    assert!(!success && stderr.contains("no canary gate"), "{stderr}");
    let from = host.seen();
    ok(&[
        "canary",
        "start",
        "--socket",
        socket_s,
        v1_s,
        "--percent",
        "100",
    ]);
    let text = ok(&["canary", "promote", "--socket", socket_s]);
    assert!(text.contains("canary promoted"), "{text}");
    host.wait_for_after(from, "serving Hello, ops!");
    let status = host.status(socket_s);
    assert_eq!(status["plugins"][0]["version"], "1.0.0", "{status}");
    assert_eq!(status["plugins"].as_array().unwrap().len(), 1, "{status}");

    // A malformed request gets an error reply, on a connection that stays usable, and the
    // host keeps serving.
    let mut stream = UnixStream::connect(&socket).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for (line, kind) in [
        ("this is not json\n", "bad_request"),
        ("{\"v\":1,\"op\":\"explode\"}\n", "bad_request"),
        ("{\"v\":99,\"op\":\"status\"}\n", "version"),
    ] {
        stream.write_all(line.as_bytes()).unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["error"]["kind"], kind, "{line}: {reply}");
    }
    stream.write_all(b"{\"v\":1,\"op\":\"status\"}\n").unwrap();
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    assert!(reply.contains("\"ok\""), "{reply}");
    let from = host.seen();
    let calls = |s: &serde_json::Value| s["plugins"][0]["calls"].as_u64().unwrap();
    let before = calls(&host.status(socket_s));
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        calls(&host.status(socket_s)) > before,
        "the host stopped serving"
    );
    assert!(host.seen() >= from);
}

#[test]
fn new_build_and_inspect_make_a_plugin_from_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("hi-there");
    let text = ok(&[
        "new",
        "plugin",
        "hi-there",
        "--path",
        root.to_str().unwrap(),
    ]);
    assert!(text.contains("created plugin `hi-there`"), "{text}");
    // A second scaffold over it is refused.
    let (success, _, stderr) = swapkit(&[
        "new",
        "plugin",
        "hi-there",
        "--path",
        root.to_str().unwrap(),
    ]);
    assert!(
        !success && stderr.contains("already holds a crate"),
        "{stderr}"
    );

    let out = dir.path().join("dist");
    let key = dir.path().join("release");
    let text = ok(&["keygen", key.to_str().unwrap()]);
    assert!(text.starts_with("key "), "{text}");
    let secret = format!("{}.key", key.display());
    let text = ok(&[
        "build",
        root.to_str().unwrap(),
        "--debug",
        "--out",
        out.to_str().unwrap(),
        "--sign",
        &secret,
        "--both",
    ]);
    assert!(text.contains("signed with key"), "{text}");
    let artifact = out
        .join("native")
        .join(format!("hi_there.{}", std::env::consts::DLL_EXTENSION));
    assert!(artifact.is_file(), "{text}");
    assert!(text.contains("hi-there 0.1.0 (native)"), "{text}");
    // --both: the wasm module beside it, each signed, published by rename: nothing else is
    // left in the output directories (no half-written or temporary file).
    assert!(text.contains("hi-there 0.1.0 (wasm)"), "{text}");
    for (what, file) in [
        (
            "native",
            format!("hi_there.{}", std::env::consts::DLL_EXTENSION),
        ),
        ("wasm", "hi_there.wasm".to_owned()),
    ] {
        let mut names: Vec<String> = std::fs::read_dir(out.join(what))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [file.clone(), format!("{file}.sig")], "{what}");
    }
    let wasm = out.join("wasm").join("hi_there.wasm");
    let text = ok(&[
        "verify",
        "--key",
        &format!("{}.pub", key.display()),
        wasm.to_str().unwrap(),
    ]);
    assert!(
        text.contains("ok") && text.contains("signed by key"),
        "{text}"
    );

    let text = ok(&["inspect", artifact.to_str().unwrap()]);
    for wanted in [
        "plugin       hi-there 0.1.0",
        "abi          v1",
        "Greeter (hash",
        "signature: ",
        "greet",
        "sha256",
        "signature    by key",
        "for this content, plugin and version",
    ] {
        assert!(text.contains(wanted), "{wanted:?} missing from:\n{text}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", "--json", artifact.to_str().unwrap()])).unwrap();
    assert_eq!(json["manifest"]["name"], "hi-there");
    assert_eq!(json["backend"], "native");

    // A broken file: the error says what is wrong with it.
    let broken = dir.path().join("broken.so");
    std::fs::write(&broken, b"\x7fELF but not really").unwrap();
    let (success, _, stderr) = swapkit(&["inspect", broken.to_str().unwrap()]);
    assert!(!success && stderr.contains("broken.so"), "{stderr}");
    let truncated = dir.path().join("truncated.wasm");
    std::fs::write(&truncated, b"\0asm\x01\0\0\0\x01").unwrap();
    let (success, _, stderr) = swapkit(&["inspect", truncated.to_str().unwrap()]);
    assert!(!success && stderr.contains("truncated.wasm"), "{stderr}");
    // With --json, a bad artifact is still JSON on stdout, and the exit status fails.
    let (success, stdout, _) = swapkit(&["inspect", "--json", broken.to_str().unwrap()]);
    assert!(!success, "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(json["error"]["kind"], "NotALibrary", "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("broken.so")),
        "{json}"
    );

    // A host scaffold: it compiles too. Checked, not built: it is a workspace of its own, so
    // its dependencies' features and profile differ from this workspace's, and building it
    // would compile wasmtime again (minutes on a clean clone); checking needs no codegen.
    let host = dir.path().join("hi-host");
    ok(&["new", "host", "hi-host", "--path", host.to_str().unwrap()]);
    std::fs::copy(workspace().join("Cargo.lock"), host.join("Cargo.lock")).unwrap();
    let status = Command::new(cargo())
        .current_dir(&host)
        .args(["check", "--offline"])
        .env("CARGO_TARGET_DIR", workspace().join("target"))
        .status()
        .unwrap();
    assert!(status.success(), "the scaffolded host does not compile");
}

#[test]
fn bad_arguments_and_unreachable_hosts_are_clear_errors() {
    let (success, _, stderr) = swapkit(&["status", "--socket", "/nonexistent/admin.sock"]);
    assert!(
        !success && stderr.contains("cannot connect to /nonexistent/admin.sock"),
        "{stderr}"
    );
    let (success, _, stderr) = swapkit(&["new", "plugin", "9lives"]);
    assert!(!success && stderr.contains("not a crate name"), "{stderr}");
    let (success, _, stderr) = swapkit(&["build", "/nonexistent/crate"]);
    assert!(!success && stderr.contains("not a crate"), "{stderr}");
    let (success, _, _) = swapkit(&["frobnicate"]);
    assert!(!success);
}

#[test]
fn it_runs_as_a_cargo_subcommand() {
    // cargo runs `cargo swapkit status ...` as `cargo-swapkit swapkit status ...`.
    let out = Command::new(env!("CARGO_BIN_EXE_cargo-swapkit"))
        .args(["swapkit", "status", "--socket", "/nonexistent/admin.sock"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("cannot connect to /nonexistent/admin.sock"),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_cargo-swapkit"))
        .args(["swapkit", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("inspect"));
}

/// A hostile library's constructors run as soon as it is mapped. `inspect` reads the header
/// from the file's bytes, and the manifest in a child process: this library ends the process
/// that maps it, and the CLI survives it and says so; with `--no-exec` nothing of it runs.
/// Mapped in process (`--in-process`, what the child does), it takes the process down.
#[test]
fn inspect_runs_no_code_of_a_native_library_in_its_own_process() {
    let artifact = build_plugins(&["fixture-ctor-exit"]).remove(0);
    let path = artifact.to_str().unwrap();
    let (success, stdout, stderr) = swapkit(&["inspect", path]);
    assert!(!success, "{stdout}");
    assert!(
        stderr.contains("child process") && stderr.contains("ctor-exit: constructor ran"),
        "the CLI reports what the child did: {stderr}"
    );
    let (success, stdout, stderr) = swapkit(&["inspect", "--no-exec", path]);
    assert!(success, "{stderr}");
    for wanted in [
        "header       `",
        "abi          v1",
        "no code of it ran",
        "manifest     not read",
    ] {
        assert!(
            stdout.contains(wanted),
            "{wanted:?} missing from:\n{stdout}"
        );
    }
    assert!(!stderr.contains("constructor ran"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&swapkit(&["inspect", "--no-exec", "--json", path]).1).unwrap();
    assert_eq!(json["header"]["abi_version"], 1, "{json}");
    let out = Command::new(env!("CARGO_BIN_EXE_swapkit"))
        .args(["inspect", "--in-process", path])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(42),
        "mapped in process, the library ended it"
    );
    // A plugin that maps cleanly reads the same through the child, and says how.
    let good = build_plugins(&["fixture-greeter-v1"]).remove(0);
    let text = ok(&["inspect", good.to_str().unwrap()]);
    assert!(text.contains("plugin       greeter 1.0.0"), "{text}");
    assert!(text.contains("manifest read by a child process"), "{text}");
}

/// `inspect` compiles a wasm module in its own process, under the host's bounds: a module
/// with a function bigger than `WasmLimits::max_function_bytes` is refused before cranelift
/// sees it, with the bound named.
#[test]
fn inspect_refuses_a_wasm_module_past_the_compile_bounds() {
    // One function of `()` to `()`: no locals, 300 KiB of `nop`, `end`.
    let body_len = 300 << 10;
    let mut body = leb(0);
    body.extend(std::iter::repeat_n(0x01, body_len));
    body.push(0x0b);
    let mut code = leb(1);
    code.extend(leb(body.len()));
    code.extend(body);
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    for (id, section) in [(1u8, vec![1, 0x60, 0, 0]), (3, vec![1, 0]), (10, code)] {
        wasm.push(id);
        wasm.extend(leb(section.len()));
        wasm.extend(section);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.wasm");
    std::fs::write(&path, wasm).unwrap();
    let (success, stdout, stderr) = swapkit(&["inspect", path.to_str().unwrap()]);
    assert!(!success, "{stdout}");
    assert!(
        stderr.contains("WasmLimits::max_function_bytes") && stderr.contains("not compiled"),
        "{stderr}"
    );
}

/// `n` in unsigned LEB128.
fn leb(mut n: usize) -> Vec<u8> {
    let mut out = vec![];
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// `sign` and `verify` read everything they need from the artifact's bytes (its hash, and the
/// claims `export_plugin!` wrote), so a library whose constructor ends the process that maps
/// it is signed and verified without it running anywhere. `verify` checks the signature
/// before the claims, refuses claims that differ from the signed ones, and a file without
/// claims is refused by `sign` with the reason.
#[test]
fn sign_and_verify_never_run_the_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let built = build_plugins(&["fixture-ctor-exit"]).remove(0);
    let artifact = dir.path().join(built.file_name().unwrap());
    std::fs::copy(&built, &artifact).unwrap();
    let path = artifact.to_str().unwrap();
    let key = dir.path().join("release");
    ok(&["keygen", key.to_str().unwrap()]);
    let (secret, public) = (
        format!("{}.key", key.display()),
        format!("{}.pub", key.display()),
    );
    let ran = |out: &str| out.contains("constructor ran");

    let (success, stdout, stderr) = swapkit(&["verify", "--key", &public, path]);
    assert!(!success && stderr.contains("unsigned"), "{stdout}{stderr}");
    assert!(!ran(&stderr));
    let (success, stdout, stderr) = swapkit(&["sign", "--key", &secret, path]);
    assert!(success, "{stdout}{stderr}");
    assert!(
        stdout.contains("signed ctor-exit 0.1.0 (native)"),
        "{stdout}"
    );
    assert!(!ran(&stderr), "{stderr}");
    let (success, stdout, stderr) = swapkit(&["verify", "--key", &public, path]);
    assert!(success && stdout.contains("ok"), "{stdout}{stderr}");
    assert!(!ran(&stderr), "{stderr}");

    // A signature by the same key over the same bytes, claiming another plugin.
    let text = std::fs::read_to_string(format!("{path}.sig")).unwrap();
    let signed = swapkit::trust::SignatureFile::parse(&text).unwrap();
    let mut forged = signed.statement.clone();
    forged.plugin = "greeter".into();
    let secret_key =
        swapkit::trust::SecretKey::parse(&std::fs::read_to_string(&secret).unwrap()).unwrap();
    let other = swapkit::trust::SignatureFile::sign(forged, &secret_key).unwrap();
    std::fs::write(format!("{path}.sig"), other.to_text()).unwrap();
    let (success, stdout, stderr) = swapkit(&["verify", "--key", &public, path]);
    assert!(!success && stderr.contains("greeter"), "{stdout}{stderr}");
    assert!(!ran(&stderr));

    // The same library with its claims' magic broken: nothing to sign.
    let mut bytes = std::fs::read(&built).unwrap();
    let at = bytes
        .windows(8)
        .position(|w| w == b"SWKCLM01")
        .expect("the claims are in the file");
    bytes[at] = b'X';
    let bare = dir.path().join("bare.so");
    std::fs::write(&bare, bytes).unwrap();
    let (success, stdout, stderr) = swapkit(&["sign", "--key", &secret, bare.to_str().unwrap()]);
    assert!(
        !success && stderr.contains("cannot read what it claims to be"),
        "{stdout}{stderr}"
    );
    assert!(!ran(&stderr));
}

/// `inspect --no-exec` reads the file once and inspects the bytes it read. A file switched
/// between a wasm module and a library whose constructor ends the process that maps it, as
/// fast as a thread can rename, never gets that library mapped into the CLI (which would end
/// it with status 42).
#[test]
fn inspect_no_exec_never_maps_a_file_switched_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let elf = build_plugins(&["fixture-ctor-exit"]).remove(0);
    let wasm = build_wasm(&["fixture-greeter-v1"]).remove(0);
    let target = dir.path().join("flip.so");
    std::fs::copy(&wasm, &target).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    /// Stops the switching thread however the loop below ends, a failed assertion included.
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let _stop = Stop(&stop);
        s.spawn(|| {
            let tmp = dir.path().join(".flip");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for source in [&elf, &wasm] {
                    let _ = std::fs::remove_file(&tmp);
                    std::fs::copy(source, &tmp).unwrap();
                    std::fs::rename(&tmp, &target).unwrap();
                }
            }
        });
        for _ in 0..60 {
            let out = Command::new(env!("CARGO_BIN_EXE_swapkit"))
                .args(["inspect", "--no-exec", target.to_str().unwrap()])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_ne!(
                out.status.code(),
                Some(42),
                "the library was mapped: {stderr}"
            );
            assert!(!stderr.contains("constructor ran"), "{stderr}");
        }
    });
}

/// A release signed with `swapkit sign` verifies with its public key, and `verify` refuses,
/// saying why, an artifact signed by another key, changed after signing, or unsigned. Keys
/// are never overwritten, and a secret key others may read is refused.
#[test]
fn keygen_sign_and_verify_a_release() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let built = build_plugins(&["fixture-greeter-v1"]).remove(0);
    let artifact = dir
        .path()
        .join(format!("greeter.{}", std::env::consts::DLL_EXTENSION));
    std::fs::copy(&built, &artifact).unwrap();
    let path = artifact.to_str().unwrap();
    let (mine, theirs) = (dir.path().join("mine"), dir.path().join("theirs"));
    ok(&["keygen", mine.to_str().unwrap()]);
    ok(&["keygen", theirs.to_str().unwrap()]);
    let (success, _, stderr) = swapkit(&["keygen", mine.to_str().unwrap()]);
    assert!(!success && stderr.contains("never overwrites"), "{stderr}");
    let mode = std::fs::metadata(dir.path().join("mine.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (my_key, my_pub) = (
        format!("{}.key", mine.display()),
        format!("{}.pub", mine.display()),
    );
    let their_pub = format!("{}.pub", theirs.display());

    let (success, _, stderr) = swapkit(&["verify", "--key", &my_pub, path]);
    assert!(!success && stderr.contains("unsigned"), "{stderr}");
    let text = ok(&["sign", "--key", &my_key, path]);
    assert!(text.contains("signed greeter 1.0.0 (native)"), "{text}");
    let text = ok(&["verify", "--key", &my_pub, path]);
    assert!(
        text.contains("ok") && text.contains("signed by key"),
        "{text}"
    );
    let (success, _, stderr) = swapkit(&["verify", "--key", &their_pub, path]);
    assert!(!success && stderr.contains("does not trust"), "{stderr}");
    let mut bytes = std::fs::read(&artifact).unwrap();
    bytes.extend_from_slice(b"x");
    std::fs::write(&artifact, bytes).unwrap();
    let (success, _, stderr) = swapkit(&["verify", "--key", &my_pub, path]);
    assert!(
        !success && stderr.contains("changed after it was signed"),
        "{stderr}"
    );

    std::fs::set_permissions(&my_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (success, _, stderr) = swapkit(&["sign", "--key", &my_key, path]);
    assert!(!success && stderr.contains("chmod 600"), "{stderr}");
}
