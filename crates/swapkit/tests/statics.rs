//! Static-backend specifics: a static swapper cannot reload, and hand-written headers that
//! break the ABI's rules are caught at load or at the call.

mod common;

use common::{start, Backend, Fixture, Logs};
use fixture_api::Greeter;
use swapkit::{abi::Status, BackendKind, CallError, LoadError, Swapper};

#[test]
fn reload_and_rollback_are_refused_and_it_keeps_serving() {
    let logs = Logs::default();
    let swapper = start(Backend::Static, &logs, &[Fixture::GreeterV1]).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    for err in [
        swapper.reload().unwrap_err(),
        swapper.rollback().unwrap_err(),
        swapper.load_files([Fixture::GreeterV2.path()]).unwrap_err(),
        swapper.load_dir(".").unwrap_err(),
    ] {
        assert!(matches!(err, LoadError::StaticMode), "{err:?}");
        assert!(err.to_string().contains("use native plugins"), "{err}");
    }
    assert_eq!(greeter.greet("s").unwrap(), "hello, s (v1)");
    let status = swapper.status();
    assert_eq!(status.current.plugins[0].backend, BackendKind::Static);
    assert_eq!(
        status.current.plugins[0].origin,
        "static:fixture_greeter_v1"
    );
}

#[test]
fn undecodable_manifest_is_refused() {
    let err = Swapper::builder()
        .static_plugin(&fixture_handmade::GARBAGE_MANIFEST)
        .build()
        .unwrap_err();
    assert!(matches!(err, LoadError::Manifest { .. }), "{err:?}");
}

#[test]
fn load_without_an_instance_is_refused() {
    let err = Swapper::builder()
        .static_plugin(&fixture_handmade::NULL_INSTANCE)
        .build()
        .unwrap_err();
    match err {
        LoadError::Hook {
            plugin,
            hook: "on_load",
            message,
            ..
        } => {
            assert_eq!(plugin, "null-instance");
            assert!(message.contains("without an instance"), "{message}");
        }
        other => panic!("expected a hook error, got {other:?}"),
    }
}

#[test]
fn bad_replies_from_a_plugin_are_call_errors() {
    let swapper = Swapper::builder()
        .static_plugin(&fixture_handmade::ODD)
        .build()
        .unwrap();
    let odd = swapper.client::<dyn Greeter>().unwrap();
    let err = odd.greet("x").unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Decode { site, .. } if site.method == "greet"
        ),
        "{err:?}"
    );
    let err = odd.version().unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::UnknownStatus { raw: 99, site } if site.method == "version"
        ),
        "{err:?}"
    );
    let err = odd.score(1, "x").unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Guest {
                status: Status::BadInput,
                site,
                ..
            } if site.method == "score"
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("arguments did not decode"),
        "{err}"
    );
}

#[test]
fn shared_interface_needs_a_named_client() {
    let swapper = Swapper::builder()
        .static_plugin(Fixture::GreeterV1.header())
        .static_plugin(&fixture_handmade::ODD)
        .build()
        .unwrap();
    let any = swapper.client::<dyn Greeter>().unwrap();
    let err = any.greet("x").unwrap_err();
    match &err {
        CallError::Ambiguous { plugins, .. } => assert_eq!(plugins, "greeter, odd"),
        other => panic!("expected an ambiguity, got {other:?}"),
    }
    let greeter = swapper.client_of::<dyn Greeter>("greeter").unwrap();
    assert_eq!(greeter.greet("x").unwrap(), "hello, x (v1)");
    let pin = swapper.pin();
    assert_eq!(
        pin.client_of::<dyn Greeter>("greeter").version().unwrap(),
        "1.0.0"
    );
    assert!(matches!(
        pin.client::<dyn Greeter>().version().unwrap_err(),
        CallError::Ambiguous { .. }
    ));
    let missing = swapper.client_of::<dyn Greeter>("nobody").unwrap();
    assert!(matches!(
        missing.version().unwrap_err(),
        CallError::NotExported { .. }
    ));
}

#[test]
fn raw_transport_errors_are_typed() {
    use swapkit::abi::Transport;

    struct Unencodable;
    impl serde::Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("cannot encode this"))
        }
    }

    let logs = Logs::default();
    let swapper = start(Backend::Static, &logs, &[Fixture::GreeterV1]).unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    let err = greeter
        .transport()
        .call::<_, String>(0, &Unencodable)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Encode {
                method: "greet",
                ..
            }
        ),
        "{err:?}"
    );
    let err = greeter.transport().call::<_, String>(42, &()).unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Guest {
                status: Status::UnknownMethod,
                site,
                ..
            } if site.method == "<unknown method>"
        ),
        "{err:?}"
    );
    let err = greeter
        .transport()
        .call::<_, String>(0, &(7u8, 8u8, 9u8))
        .unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Guest {
                status: Status::BadInput,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(greeter.greet("fine").unwrap(), "hello, fine (v1)");
}
