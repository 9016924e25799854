//! Alternating two versions of a native plugin maps only two libraries, however many swaps:
//! content seen before reuses its mapping. A test binary of its own, so that no other test
//! maps plugins in the same process.

mod common;

use common::{mapped_copies, Fixture};
use fixture_api::Greeter;
use swapkit::Swapper;

#[test]
fn alternating_two_versions_maps_only_two_libraries() {
    if !std::path::Path::new("/proc/self/maps").exists() {
        println!("skipped: no /proc/self/maps on this platform");
        return;
    }
    let swapper = Swapper::new().unwrap();
    let greeter = swapper.client::<dyn Greeter>().unwrap();
    let (v1, v2) = (Fixture::GreeterV1.path(), Fixture::GreeterV2.path());
    for round in 0..50 {
        let (path, version) = if round % 2 == 0 {
            (&v1, "1.0.0")
        } else {
            (&v2, "2.0.0")
        };
        swapper.load_files([path]).unwrap();
        assert_eq!(greeter.version().unwrap(), version);
    }
    swapper
        .wait_drained(std::time::Duration::from_secs(10))
        .unwrap();
    let copies = mapped_copies();
    assert_eq!(
        copies.len(),
        2,
        "50 swaps between two versions mapped {copies:#?}"
    );
}
