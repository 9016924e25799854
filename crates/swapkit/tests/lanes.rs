//! The direct lane: every kind of plain argument and result crosses it on each backend; a
//! panic or trap in a lane is a call error; a plugin without lanes takes the encoded path; a
//! hostile wasm guest's lane answers are refused, never trusted; a plain struct whose layout
//! drifted is refused at load.

mod common;

use std::sync::Arc;

use common::{start, Backend, Fixture, Logs};
use fixture_api::{Greeter, Lanes, Point, Tag};
use swapkit::abi::PluginHeader;
use swapkit::{CallError, Swapper};

/// Lanes has 13 methods, 12 of them plain (`maybe` takes an `Option`); Greeter's 4 are all
/// plain.
const LANES: usize = 12 + 4;

/// The current generation's status of `plugin`.
fn status_of(swapper: &Swapper, plugin: &str) -> swapkit::PluginStatus {
    swapper
        .status()
        .current
        .plugins
        .into_iter()
        .find(|p| p.name == plugin)
        .expect("the plugin is loaded")
}

fn lanes_of(swapper: &Swapper, plugin: &str) -> usize {
    status_of(swapper, plugin).lanes
}

fn counts(swapper: &Swapper, plugin: &str) -> swapkit::CallCounts {
    status_of(swapper, plugin).counts
}

/// Every kind the lane carries, checked against what the plugin computes.
fn every_kind_crosses_the_lane(backend: Backend) {
    let swapper = start(backend, &Logs::default(), &[Fixture::Lanes]).unwrap();
    assert_eq!(lanes_of(&swapper, "fixture-lanes"), LANES);
    let lanes = swapper.client::<dyn Lanes>().unwrap();
    assert_eq!(
        lanes.add(u64::MAX / 4, -7).unwrap(),
        (u64::MAX / 4) as i64 - 7
    );
    assert_eq!(lanes.add(0, i32::MIN).unwrap(), i32::MIN as i64);
    assert_eq!(lanes.sum(&[1.5, 2.25, -0.75]).unwrap(), 3.0);
    assert_eq!(lanes.sum(&[]).unwrap(), 0.0);
    let (a, b) = (Point { x: 1.0, y: 2.0 }, Point { x: 3.0, y: -4.0 });
    assert_eq!(lanes.mid(a, &b).unwrap(), Point { x: 2.0, y: -1.0 });
    assert_eq!(lanes.shout("héllo").unwrap(), "HÉLLO! (1.0.0)");
    assert_eq!(lanes.shout("").unwrap(), "! (1.0.0)");
    let long = "x".repeat(100_000);
    assert_eq!(
        lanes.shout(&long).unwrap().len(),
        100_000 + "! (1.0.0)".len()
    );
    assert_eq!(lanes.reverse(&[1, 2, 3]).unwrap(), vec![3, 2, 1]);
    assert_eq!(lanes.reverse(&[]).unwrap(), Vec::<u8>::new());
    let points: Vec<Point> = (0..1000)
        .map(|i| Point {
            x: i as f64,
            y: -(i as f64),
        })
        .collect();
    let scaled = lanes.scale(&points, 0.5).unwrap();
    assert_eq!(scaled.len(), 1000);
    assert_eq!(
        scaled[999],
        Point {
            x: 499.5,
            y: -499.5
        }
    );
    assert!(!lanes.flip(true).unwrap());
    assert!(lanes.flip(false).unwrap());
    assert_eq!(lanes.next('a').unwrap(), 'b');
    assert_eq!(lanes.next('\u{10FFFF}').unwrap(), '\u{10FFFF}');
    assert_eq!(
        lanes.tag(7, 'é', true).unwrap(),
        Tag {
            id: 7,
            letter: 'é',
            on: true,
            spare: [0; 3]
        }
    );
    for _ in 0..3 {
        lanes.touch().unwrap();
    }
    assert_eq!(lanes.touches().unwrap(), 3);
    // Not plain: the encoded path, in the same plugin.
    assert_eq!(lanes.maybe(Some(41)).unwrap(), Some(42));
    assert_eq!(lanes.maybe(None).unwrap(), None);
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    assert_eq!(greeter.score(7, "abc").unwrap(), 10);
    assert_eq!(greeter.greet("lane").unwrap(), "Hello, lane, from lanes");
    // Lane calls are counted like any other (22 on Lanes, 2 on Greeter).
    assert_eq!(counts(&swapper, "fixture-lanes").calls, 24);
}

/// A panic in a lane comes back as `CallError::Panic` with its message, is counted, and the
/// plugin keeps serving (on wasm, from a fresh instance).
fn a_panic_in_a_lane_is_a_call_error(backend: Backend) {
    let swapper = start(backend, &Logs::default(), &[Fixture::Lanes]).unwrap();
    let lanes = swapper.client::<dyn Lanes>().unwrap();
    let err = lanes.boom("lane on fire").unwrap_err();
    assert!(
        matches!(&err, CallError::Panic { site, message }
            if site.method == "boom" && site.interface == "Lanes" && message.contains("lane on fire")),
        "{err:?}"
    );
    assert_eq!(counts(&swapper, "fixture-lanes").panics, 1);
    assert_eq!(lanes.add(1, 2).unwrap(), 3);
    assert_eq!(lanes.shout("still").unwrap(), "STILL! (1.0.0)");
}

/// Calls from several threads at once, each checking its own answers: the per-thread result
/// buffers never mix two threads' bytes.
fn threads_get_their_own_answers(backend: Backend) {
    let swapper = Arc::new(start(backend, &Logs::default(), &[Fixture::Lanes]).unwrap());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let swapper = swapper.clone();
            s.spawn(move || {
                let lanes = swapper.client::<dyn Lanes>().unwrap();
                for i in 0..500u64 {
                    let text = format!("t{t}-{i}");
                    assert_eq!(lanes.shout(&text).unwrap(), format!("T{t}-{i}! (1.0.0)"));
                    let p = Point {
                        x: t as f64,
                        y: i as f64,
                    };
                    assert_eq!(
                        lanes.scale(&[p], 2.0).unwrap(),
                        vec![Point {
                            x: 2.0 * t as f64,
                            y: 2.0 * i as f64
                        }]
                    );
                    assert_eq!(lanes.add(i, t as i32).unwrap(), (i + t) as i64);
                }
            });
        }
    });
}

on_both_backends!(
    every_kind_crosses_the_lane,
    a_panic_in_a_lane_is_a_call_error,
    threads_get_their_own_answers,
);

/// The fixture's v1 header without the extension flag: what a plugin built before lanes
/// looks like to a host.
static WITHOUT_LANES: PluginHeader = PluginHeader {
    magic: swapkit::abi::MAGIC,
    abi_version: swapkit::abi::ABI_VERSION,
    flags: swapkit::abi::FLAG_PANIC_UNWIND,
    fingerprint: swapkit::abi::Fingerprint::CURRENT,
    entry: fixture_lanes::SWAPKIT_PLUGIN.header.entry,
};

/// A plugin without lanes keeps working: every call takes the encoded path, with the same
/// answers.
#[test]
fn a_plugin_without_lanes_takes_the_encoded_path() {
    let swapper = Logs::default()
        .builder()
        .interface::<dyn Lanes>()
        .static_plugin(&WITHOUT_LANES)
        .build()
        .unwrap();
    assert_eq!(lanes_of(&swapper, "fixture-lanes"), 0);
    let lanes = swapper.client::<dyn Lanes>().unwrap();
    assert_eq!(lanes.add(40, 2).unwrap(), 42);
    assert_eq!(lanes.shout("old").unwrap(), "OLD! (1.0.0)");
    let (a, b) = (Point { x: 0.0, y: 0.0 }, Point { x: 2.0, y: 2.0 });
    assert_eq!(lanes.mid(a, &b).unwrap(), Point { x: 1.0, y: 1.0 });
    assert!(matches!(
        lanes.boom("old boom"),
        Err(CallError::Panic { .. })
    ));
    assert_eq!(counts(&swapper, "fixture-lanes").calls, 4);
}

/// A v1 header whose flags claim an extension its type does not hold: refused, not read past
/// its end.
static CLAIMS_AN_EXTENSION: PluginHeader = PluginHeader {
    magic: swapkit::abi::MAGIC,
    abi_version: swapkit::abi::ABI_VERSION,
    flags: swapkit::abi::FLAG_PANIC_UNWIND | swapkit::abi::FLAG_EXTENDED,
    fingerprint: swapkit::abi::Fingerprint::CURRENT,
    entry: fixture_lanes::SWAPKIT_PLUGIN.header.entry,
};

#[test]
fn a_header_that_claims_an_extension_it_lacks_is_refused() {
    let err = Swapper::builder()
        .static_plugin(&CLAIMS_AN_EXTENSION)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, swapkit::LoadError::Manifest { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("extension flag"), "{text}");
}

/// Nested calls from inside the decoding of an encoded result of the same plugin: a lane
/// that returns a value never touches the buffer being decoded, so it is served, and so is
/// its panic; a lane that returns bytes would write that buffer, so it is refused.
#[test]
fn lanes_made_while_decoding_a_result_of_the_same_plugin() {
    use swapkit::abi::Transport;
    let swapper = Swapper::new().unwrap();
    swapper.load_files([Fixture::Lanes.path()]).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    let inner = swapper.client::<dyn Lanes>().unwrap();
    NESTED.with(|n| {
        n.borrow_mut().0 = Some(Box::new(move || {
            (
                inner.add(1, 2),
                inner.boom("nested").map(|_| ()),
                inner.shout("nested"),
            )
        }))
    });
    // Greeter's method 0 is `greet`, called here through the encoded path.
    let outer: Nested = greeter.transport().call(0, &("outer",)).unwrap();
    assert_eq!(outer.0, "Hello, outer, from lanes");
    let (add, boom, shout) = NESTED.with(|n| n.borrow_mut().1.take()).unwrap();
    assert_eq!(add.unwrap(), 3);
    assert!(matches!(boom, Err(CallError::Panic { .. })), "{boom:?}");
    assert!(
        matches!(shout, Err(CallError::Reentrant { .. })),
        "{shout:?}"
    );
}

type NestedResults = (
    Result<i64, CallError>,
    Result<(), CallError>,
    Result<String, CallError>,
);
type NestedCall = Box<dyn Fn() -> NestedResults>;

thread_local! {
    static NESTED: std::cell::RefCell<(Option<NestedCall>, Option<NestedResults>)> =
        const { std::cell::RefCell::new((None, None)) };
}

/// A result whose Deserialize impl calls the plugin before decoding its own bytes.
struct Nested(String);

impl<'de> serde::Deserialize<'de> for Nested {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let call = NESTED
            .with(|n| n.borrow_mut().0.take())
            .expect("a nested call");
        let results = call();
        NESTED.with(|n| n.borrow_mut().1 = Some(results));
        <String as serde::Deserialize>::deserialize(d).map(Nested)
    }
}

/// The layouts of the plain structs an interface lists are in its hash: a plugin whose
/// `Point` or `Tag` differs (here: the hash of the signature alone, as a plugin built before
/// the layouts were hashed would send) is refused at load, with a hint.
#[cfg(feature = "wasm")]
#[test]
fn a_plain_layout_that_drifted_is_refused_at_load() {
    use swapkit::abi::{hash::interface_hash, Interface, InterfaceDecl};
    let drifted = InterfaceDecl {
        hash: interface_hash(
            <dyn Lanes as Interface>::NAME,
            <dyn Lanes as Interface>::SIGNATURE,
        ),
        ..swapkit::abi::InterfaceDecl::of::<dyn Lanes>()
    };
    assert_ne!(drifted.hash, <dyn Lanes as Interface>::HASH);
    let dir = tempfile::tempdir().unwrap();
    let path = common::wat::Wat::plugin("drifted")
        .exports(drifted)
        .write_to(dir.path());
    let swapper = Swapper::builder().interface::<dyn Lanes>().build().unwrap();
    let err = swapper.load_files([path]).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, swapkit::LoadError::InterfaceHash(_)),
        "{err:?}"
    );
    assert!(text.contains("another layout"), "{text}");
}

#[cfg(feature = "wasm")]
mod hostile {
    use super::*;
    use common::wat::Wat;
    use swapkit::abi::lane::method_hash;
    use swapkit::abi::Interface;

    fn method(name: &str) -> u32 {
        <dyn Lanes as Interface>::METHODS
            .iter()
            .position(|m| *m == name)
            .unwrap() as u32
    }

    /// The lane table at 8192: `count`, then the hashes of `methods`.
    fn table(count: u64, methods: &[&str]) -> Vec<u8> {
        let mut bytes = count.to_le_bytes().to_vec();
        for m in methods {
            let hash = method_hash(<dyn Lanes as Interface>::HASH, method(m));
            bytes.extend_from_slice(&hash.to_le_bytes());
        }
        bytes
    }

    /// A module that exports `Lanes`, lists lanes for `flip`, `next`, `shout`, `tag` and
    /// `add`, and answers each with something its type cannot hold (`add` traps). Its encoded
    /// path answers `maybe` with `None`.
    fn liar() -> Wat {
        let (flip, next, shout, tag, add) = (
            method("flip"),
            method("next"),
            method("shout"),
            method("tag"),
            method("add"),
        );
        let bad_tag = [1u32.to_le_bytes(), 0x11_0000u32.to_le_bytes(), [1, 0, 0, 0]].concat();
        Wat::plugin("liar")
            .exports(swapkit::abi::InterfaceDecl::of::<dyn Lanes>())
            .data(8192, &table(5, &["flip", "next", "shout", "tag", "add"]))
            .data(3000, &[0xff, 0xfe])
            .data(3200, &bad_tag)
            .data(3100, &[0])
            .body(
                "swapkit_call",
                "(i32.store (i32.const 16) (i32.const 3100)) \
                 (i32.store (i32.const 20) (i32.const 1)) (i32.const 0)",
            )
            .extra(&format!(
                r#"(func (export "swapkit_lanes") (result i32) (i32.const 8192))
 (func (export "swapkit_lane") (param i32 i32 i64 i64 i64 i64 i64 i64) (result i64)
   (if (i32.eq (local.get 1) (i32.const {flip})) (then (return (i64.const 7))))
   (if (i32.eq (local.get 1) (i32.const {next})) (then (return (i64.const 0xD800))))
   (if (i32.eq (local.get 1) (i32.const {shout}))
     (then
       (if (i64.eq (i64.shr_u (local.get 2) (i64.const 32)) (i64.const 1))
         (then (return (i64.const 0x0010_0000_FFFF_0000))))
       (return (i64.const 0x0000_0002_0000_0BB8))))
   (if (i32.eq (local.get 1) (i32.const {tag}))
     (then
       (if (i64.eq (local.get 2) (i64.const 2)) (then (return (i64.const 0x0000_000B_0000_0C80))))
       (return (i64.const 0x0000_000C_0000_0C80))))
   (if (i32.eq (local.get 1) (i32.const {add})) (then unreachable))
   (i64.const 0))"#
            ))
    }

    /// Every answer a hostile lane makes that its type cannot hold is a `CallError::Decode`
    /// naming the method; a trap is a `CallError::Trap`; and the plugin serves the next call.
    #[test]
    fn a_hostile_lane_answer_is_refused_and_the_host_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let path = liar().write_to(dir.path());
        let swapper = Swapper::builder().interface::<dyn Lanes>().build().unwrap();
        swapper.load_files([path]).unwrap();
        assert_eq!(lanes_of(&swapper, "liar"), 5);
        let lanes = swapper.client::<dyn Lanes>().unwrap();
        let decode = |r: Result<(), CallError>, method: &str, what: &str| {
            let err = r.unwrap_err();
            assert!(
                matches!(&err, CallError::Decode { site, reason } if site.method == method && reason.contains(what)),
                "{method}: {err:?}"
            );
        };
        decode(lanes.flip(true).map(drop), "flip", "bool");
        decode(lanes.next('a').map(drop), "next", "char");
        decode(lanes.shout("ab").map(drop), "shout", "UTF-8");
        decode(lanes.shout("a").map(drop), "shout", "outside linear memory");
        decode(lanes.tag(1, 'a', true).map(drop), "tag", "Tag");
        decode(lanes.tag(2, 'a', true).map(drop), "tag", "length");
        let err = lanes.add(1, 2).unwrap_err();
        assert!(
            matches!(&err, CallError::Trap { site, .. } if site.method == "add"),
            "{err:?}"
        );
        // A method it lists no lane for takes the encoded path, and is served.
        assert_eq!(lanes.maybe(Some(1)).unwrap(), None);
        let counts = counts(&swapper, "liar");
        assert_eq!((counts.errors, counts.traps, counts.calls), (6, 1, 8));
    }

    /// Lane exports that do not fit the ABI are refused at load, with what is wrong.
    #[test]
    fn malformed_lane_exports_are_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let lane = r#"(func (export "swapkit_lane") (param i32 i32 i64 i64 i64 i64 i64 i64) (result i64) (i64.const 0))"#;
        let cases = [
            (
                "lane-alone",
                Wat::plugin("lane-alone").extra(lane),
                "without the other",
            ),
            (
                "lane-type",
                Wat::plugin("lane-type").extra(
                    r#"(func (export "swapkit_lanes") (result i32) (i32.const 8192))
                       (func (export "swapkit_lane") (param i32 i32 i64) (result i64) (i64.const 0))"#,
                ),
                "wrong signature",
            ),
            (
                "lane-count",
                Wat::plugin("lane-count")
                    .data(8192, &table(1 << 40, &[]))
                    .extra(&format!(
                        r#"(func (export "swapkit_lanes") (result i32) (i32.const 8192)) {lane}"#
                    )),
                "claims",
            ),
            (
                "lane-outside",
                Wat::plugin("lane-outside").extra(&format!(
                    r#"(func (export "swapkit_lanes") (result i32) (i32.const 65535)) {lane}"#
                )),
                "outside linear memory",
            ),
        ];
        for (name, wat, why) in cases {
            let swapper = Swapper::new().unwrap();
            let err = swapper.load_files([wat.write_to(dir.path())]).unwrap_err();
            assert!(err.to_string().contains(why), "{name}: {err}");
            assert_eq!(swapper.status().current.id, 0, "{name}: something loaded");
        }
    }
}
