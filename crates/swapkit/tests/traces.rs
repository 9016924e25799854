//! What swapkit logs and traces: the spans of a reload, the events of patching, the admin
//! socket's request log.
//!
//! A test binary of its own, with one global layer installed before anything else: a
//! callsite that registers while no subscriber is set caches "never", and a scoped subscriber
//! set on one thread races with another thread registering the same callsite. Here every test
//! installs the layer (once) before it runs any swapkit code, and reads only what its own
//! thread, or its own request, recorded.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use common::{start, Backend, Fixture, Logs};
use fixture_api::Counter;
use swapkit::patch::Rollout;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// One span opened or event made: its thread, target, name (a span's) or message (an
/// event's), and its other fields as ` name=value`.
#[derive(Debug, Clone)]
struct Record {
    thread: ThreadId,
    target: String,
    what: String,
    fields: String,
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.rest.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

struct Capture(Arc<Mutex<Vec<Record>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        self.0.lock().unwrap().push(Record {
            thread: std::thread::current().id(),
            target: attrs.metadata().target().to_owned(),
            what: attrs.metadata().name().to_owned(),
            fields: fields.rest,
        });
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.0.lock().unwrap().push(Record {
            thread: std::thread::current().id(),
            target: event.metadata().target().to_owned(),
            what: fields.message,
            fields: fields.rest,
        });
    }
}

/// Everything recorded so far in this process; installs the layer on first use.
fn records() -> Vec<Record> {
    static SEEN: OnceLock<Arc<Mutex<Vec<Record>>>> = OnceLock::new();
    let seen = SEEN.get_or_init(|| {
        let seen = Arc::new(Mutex::new(vec![]));
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(Capture(seen.clone())),
        )
        .expect("the only global subscriber of this binary");
        seen
    });
    let all = seen.lock().unwrap().clone();
    all
}

/// What this thread recorded after `from` (a count of [`records`]).
fn mine_since(from: usize) -> Vec<Record> {
    let me = std::thread::current().id();
    records()
        .into_iter()
        .skip(from)
        .filter(|r| r.thread == me)
        .collect()
}

/// The spans a reload opens, in the order they open: `reload`, `load` per artifact,
/// `on_load`, `save`, `migrate`, `on_init`, and `retire` for the generation left.
#[test]
fn a_reload_traces_each_step_in_a_span() {
    let from = records().len();
    let swapper = start(Backend::Native, &Logs::default(), &[Fixture::StateV1]).unwrap();
    let counter = swapper.client::<dyn Counter>().unwrap();
    counter.remember("kept").unwrap();
    swapper
        .load_files([Fixture::StateV2.artifact(Backend::Native)])
        .unwrap();
    let spans: Vec<String> = mine_since(from)
        .into_iter()
        .filter(|r| r.target.starts_with("swapkit"))
        .map(|r| r.what)
        .collect();
    // After the first load's spans: the second's, in order.
    let second = spans.iter().rposition(|s| s == "reload").unwrap();
    let at = |name: &str| {
        spans[second..]
            .iter()
            .position(|s| s == name)
            .unwrap_or_else(|| panic!("no `{name}` span after the reload in {spans:?}"))
    };
    let order = [
        "reload", "load", "on_load", "save", "migrate", "on_init", "retire",
    ];
    let positions: Vec<usize> = order.iter().map(|n| at(n)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{spans:?}");
    assert_eq!(counter.notes().unwrap(), ["kept"]);
}

#[swapkit::patchable]
fn risky(x: u64) -> u64 {
    x + 1
}

/// Apply, panic, the health change (once) and restore each log an event that names the
/// target, the patch, and where it came from.
#[test]
fn patching_logs_apply_panic_health_and_restore() {
    let from = records().len();
    let guard = swapkit::patch!(risky, |x| if x == 13 { panic!("unlucky") } else { x + 2 })
        .id("risky-fix")
        .rollout(Rollout::percent(50.0).without_key(true))
        .apply()
        .unwrap();
    assert_eq!(risky(1), 3);
    assert_eq!(
        risky(13),
        14,
        "the original runs for a call whose patch panicked"
    );
    assert_eq!(risky(13), 14);
    guard.restore().unwrap();
    let events: Vec<Record> = mine_since(from)
        .into_iter()
        .filter(|r| r.target == "swapkit::patch")
        .collect();
    let with = |start: &str| {
        events
            .iter()
            .filter(|e| e.what.starts_with(start))
            .map(|e| e.fields.clone())
            .collect::<Vec<_>>()
    };
    let applied = with("patch applied");
    assert_eq!(applied.len(), 1, "{events:#?}");
    for part in [
        "patch=risky-fix",
        "target_fn=\"traces::risky\"",
        "in-process closure at crates/swapkit/tests/traces.rs:",
        "rollout=50.00% of keys, and calls with no key",
    ] {
        assert!(applied[0].contains(part), "{part} not in {applied:?}");
    }
    let panicked = with("patch panicked");
    assert_eq!(panicked.len(), 2, "{events:#?}");
    assert!(
        panicked[1].contains("panics=2") && panicked[1].contains("unlucky"),
        "{panicked:?}"
    );
    assert_eq!(
        with("patch health changed").len(),
        1,
        "only the first panic"
    );
    assert_eq!(with("patch restored").len(), 1, "{events:#?}");
}

/// Every admin request is logged with the peer's uid and pid (from SO_PEERCRED), on the
/// admin socket's own thread.
#[test]
fn admin_requests_are_logged_with_the_peers_uid_and_pid() {
    records();
    let dir = common::tempdir();
    let socket = dir.path().join("admin.sock");
    let swapper = swapkit::Swapper::builder()
        .admin_socket(&socket)
        .build()
        .unwrap();
    swapper
        .load_files([Fixture::GreeterV1.artifact(Backend::Native)])
        .unwrap();
    let mut client = swapkit::admin::Client::connect(&socket).unwrap();
    client.request(&swapkit::admin::Request::PatchList).unwrap();
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let wanted = format!("uid={uid} pid=Some({})", std::process::id());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !records().iter().any(|r| {
        r.what == "admin request"
            && r.fields.contains(&wanted)
            && r.fields.contains("op=\"patch_list\"")
    }) {
        assert!(
            Instant::now() < deadline,
            "no admin request logged with {wanted}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
