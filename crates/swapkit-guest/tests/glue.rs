//! The guest glue at the raw ABI: what the entry points of an `export_plugin!` header do with
//! good and bad input, as a host would drive them.

use core::ffi::c_void;
use std::sync::Mutex;

use swapkit_abi::{wire, HostApi, Manifest, RawSlice, Status};
use swapkit_guest::{Error, Host, Plugin};

#[swapkit_abi::interface]
pub trait Counter {
    fn add(&self, by: u64) -> u64;
    fn explode(&self);
}

struct Count(Mutex<u64>);

impl Plugin for Count {
    fn on_load(host: &Host) -> Result<Self, Error> {
        host.info("hello from on_load");
        Ok(Count(Mutex::new(0)))
    }
}

impl Counter for Count {
    fn add(&self, by: u64) -> u64 {
        let mut n = self.0.lock().unwrap();
        *n += by;
        *n
    }

    fn explode(&self) {
        panic!("kaboom")
    }
}

swapkit_guest::export_plugin! {
    plugin: Count,
    name: "counter",
    version: "3.1.4",
    interfaces: [Counter],
    dependencies: ["clock"],
}

static LOGGED: Mutex<Vec<(u32, String)>> = Mutex::new(vec![]);

unsafe extern "C" fn log(_ctx: *const c_void, level: u32, msg: *const u8, len: usize) {
    // SAFETY: the guest passes a message valid for `len` bytes for the length of the call.
    let text = unsafe { RawSlice { ptr: msg, len }.as_slice() };
    LOGGED
        .lock()
        .unwrap()
        .push((level, String::from_utf8(text.to_vec()).unwrap()));
}

fn call(instance: *mut c_void, interface: u32, method: u32, input: &[u8]) -> (u32, Vec<u8>) {
    let mut out = RawSlice::EMPTY;
    // SAFETY: `instance` came from this plugin's `load`; input and out are valid buffers.
    let status = unsafe {
        (SWAPKIT_PLUGIN.header.entry.call)(
            instance,
            interface,
            method,
            input.as_ptr(),
            input.len(),
            &mut out,
        )
    };
    // SAFETY: the guest's out buffer is valid until its next call on this thread.
    (status, unsafe { out.as_slice() }.to_vec())
}

/// This test host offers no services.
unsafe extern "C" fn service(
    _: *const c_void,
    _: u32,
    _: *const u8,
    _: usize,
    out: *mut RawSlice,
) -> u32 {
    // SAFETY: the guest passes a writable out slot (ABI.md, the service host function).
    unsafe { out.write(RawSlice::from_slice(b"no services here")) };
    Status::ServiceFailed as u32
}

#[test]
fn entry_points_follow_the_abi() {
    let entry = &SWAPKIT_PLUGIN.header.entry;
    let mut out = RawSlice::EMPTY;
    // SAFETY: `manifest` takes a writable out slot.
    assert_eq!(unsafe { (entry.manifest)(&mut out) }, Status::Ok as u32);
    // SAFETY: the out buffer is valid until the next call on this thread.
    let manifest: Manifest = Manifest::decode(unsafe { out.as_slice() }).unwrap();
    assert_eq!(
        (manifest.name.as_str(), manifest.version.as_str()),
        ("counter", "3.1.4")
    );
    assert_eq!(manifest.crate_name, "glue");
    assert_eq!(manifest.interfaces[0].methods, ["add", "explode"]);
    assert_eq!(manifest.dependencies[0].plugin, "clock");

    let api = HostApi {
        size: std::mem::size_of::<HostApi>(),
        ctx: std::ptr::null(),
        log,
        service,
    };
    let mut instance: *mut c_void = std::ptr::null_mut();
    assert_eq!(
        // SAFETY: `api` outlives the instance; instance and out are writable.
        unsafe { (entry.load)(&api, &mut instance, &mut out) },
        Status::Ok as u32
    );
    assert!(!instance.is_null());
    assert_eq!(
        LOGGED.lock().unwrap().as_slice(),
        [(3, "hello from on_load".to_owned())]
    );
    assert_eq!(
        // SAFETY: `instance` came from `load` and was not freed.
        unsafe { (entry.init)(instance, &mut out) },
        Status::Ok as u32
    );

    let args = wire::to_vec(&(5u64,)).unwrap();
    let (status, bytes) = call(instance, 0, 0, &args);
    assert_eq!(
        (status, wire::from_bytes::<u64>(&bytes).unwrap()),
        (Status::Ok as u32, 5)
    );
    let (_, bytes) = call(instance, 0, 0, &args);
    assert_eq!(
        wire::from_bytes::<u64>(&bytes).unwrap(),
        10,
        "one instance keeps its state"
    );

    let (status, bytes) = call(instance, 0, 1, &[]);
    assert_eq!(
        (status, bytes.as_slice()),
        (Status::Panic as u32, b"kaboom".as_slice())
    );
    let (status, _) = call(instance, 0, 0, &args);
    assert_eq!(
        status,
        Status::Ok as u32,
        "a panic leaves the instance usable"
    );

    let (status, bytes) = call(instance, 0, 0, &[0xff]);
    assert_eq!(
        status,
        Status::BadInput as u32,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let (status, _) = call(instance, 0, 0, &[5, 0]);
    assert_eq!(
        status,
        Status::BadInput as u32,
        "trailing bytes are bad input"
    );
    let (status, bytes) = call(instance, 0, 9, &[]);
    assert_eq!(
        (status, String::from_utf8_lossy(&bytes).as_ref()),
        (Status::UnknownMethod as u32, "no method number 9")
    );
    let (status, bytes) = call(instance, 7, 0, &args);
    assert_eq!(
        (status, String::from_utf8_lossy(&bytes).as_ref()),
        (
            Status::UnknownInterface as u32,
            "no exported interface number 7"
        )
    );

    assert_eq!(
        // SAFETY: `instance` came from `load`, and is not used after this.
        unsafe { (entry.free)(instance, &mut out) },
        Status::Ok as u32
    );
}

#[test]
fn header_prefix_describes_this_build() {
    assert_eq!(SWAPKIT_PLUGIN.header.magic, swapkit_abi::MAGIC);
    assert_eq!(SWAPKIT_PLUGIN.header.abi_version, swapkit_abi::ABI_VERSION);
    assert_eq!(
        SWAPKIT_PLUGIN.header.flags & swapkit_abi::FLAG_PANIC_UNWIND,
        swapkit_abi::FLAG_PANIC_UNWIND
    );
    assert_eq!(
        SWAPKIT_PLUGIN.header.fingerprint,
        swapkit_abi::Fingerprint::CURRENT
    );
}
