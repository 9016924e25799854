//! `#[derive(Plain)]`: what a struct's layout hash covers, how its bytes are checked, and how
//! the layouts of the listed structs join an interface's hash.

use swapkit_abi::lane::{read_plain, Plain};
use swapkit_abi::{hash::interface_hash, Interface};

mod v1 {
    #[derive(
        swapkit_abi::Plain, Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize,
    )]
    #[repr(C)]
    pub struct Point {
        pub x: f64,
        pub y: f64,
    }
}

mod renamed {
    #[derive(swapkit_abi::Plain, Clone, Copy)]
    #[repr(C)]
    pub struct Point {
        pub x: f64,
        pub z: f64,
    }
}

mod retyped {
    #[derive(swapkit_abi::Plain, Clone, Copy)]
    #[repr(C)]
    pub struct Point {
        pub x: f64,
        pub y: i64,
    }
}

mod grown {
    #[derive(swapkit_abi::Plain, Clone, Copy)]
    #[repr(C)]
    pub struct Point {
        pub x: f64,
        pub y: f64,
        pub t: u64,
    }
}

#[derive(swapkit_abi::Plain, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Flags {
    id: u32,
    letter: char,
    on: bool,
    spare: [u8; 3],
}

#[derive(swapkit_abi::Plain, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Pair(u32, u32);

#[test]
fn a_layout_hash_covers_field_names_types_and_count() {
    let base = v1::Point::LAYOUT;
    assert_ne!(base, renamed::Point::LAYOUT);
    assert_ne!(base, retyped::Point::LAYOUT);
    assert_ne!(base, grown::Point::LAYOUT);
    const { assert!(v1::Point::ANY_BITS) };
    const { assert!(!Flags::ANY_BITS) };
    const { assert!(Pair::ANY_BITS) };
}

#[test]
fn each_field_is_checked_where_it_lies() {
    let good = Flags {
        id: 7,
        letter: 'é',
        on: true,
        spare: [0; 3],
    };
    let bytes = swapkit_abi::lane::bytes_of(&good).to_vec();
    assert_eq!(read_plain::<Flags>(&bytes), Ok(good));
    let mut bad_bool = bytes.clone();
    bad_bool[8] = 2;
    assert!(read_plain::<Flags>(&bad_bool).is_err());
    let mut bad_char = bytes.clone();
    bad_char[4..8].copy_from_slice(&0xD800u32.to_ne_bytes());
    assert!(read_plain::<Flags>(&bad_char).is_err());
    assert!(read_plain::<Flags>(&bytes[..11]).is_err());
    assert_eq!(
        read_plain::<Pair>(&[1, 0, 0, 0, 2, 0, 0, 0]),
        Ok(Pair(1, 2))
    );
}

#[swapkit_abi::interface(plain = [v1::Point])]
trait Geometry {
    fn mid(&self, a: v1::Point, b: &v1::Point) -> v1::Point;
}

#[swapkit_abi::interface]
trait Untouched {
    fn mid(&self, a: u64) -> u64;
}

#[test]
fn listed_layouts_join_the_interface_hash_and_others_keep_theirs() {
    let text_only = interface_hash(
        <dyn Geometry as Interface>::NAME,
        <dyn Geometry as Interface>::SIGNATURE,
    );
    assert_ne!(<dyn Geometry as Interface>::HASH, text_only);
    assert_eq!(
        <dyn Geometry as Interface>::HASH,
        swapkit_abi::lane::mix(text_only, &[v1::Point::LAYOUT])
    );
    assert_eq!(
        <dyn Untouched as Interface>::HASH,
        interface_hash("Untouched", "mid(u64)->u64")
    );
}

/// An array of zero-sized elements has no bytes to check: checking one answers instead of
/// dividing the bytes into chunks of length zero (which panicked in the host on every wasm
/// answer of such a type).
#[test]
fn an_array_of_zero_sized_elements_is_checked_without_panicking() {
    type Empty = [[bool; 0]; 2];
    assert!(<Empty as Plain>::valid(&[]));
    assert!(!<Empty as Plain>::valid(&[1]));
    assert!(read_plain::<Empty>(&[]).is_ok());
    assert!(read_plain::<Empty>(&[0]).is_err());
}
