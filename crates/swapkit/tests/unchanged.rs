//! A reload does not read again an artifact whose file is unchanged since it was read (same
//! inode, size, modification and status-change times, the last older than two clock ticks):
//! these tests are the ways that shortcut could serve the wrong code, and the private copy
//! staged beside the hash that must leave nothing behind when it is not needed. A test binary
//! of its own, so that counting this process's mappings and memory files sees only its tests
//! (which take turns through `ONE_AT_A_TIME`).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use common::{mapped_copies, tempdir, Fixture};
use fixture_api::Greeter;
use swapkit::Swapper;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Longer than the two clock ticks after which a file's metadata is trusted to show a change.
const SETTLE: Duration = Duration::from_millis(60);

fn version(swapper: &Swapper) -> String {
    swapper.client::<dyn Greeter>().unwrap().version().unwrap()
}

/// The memory files holding private copies that this process has open.
fn open_copies() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|to| to.to_string_lossy().starts_with("/memfd:swapkit-"))
        })
        .count()
}

/// Greeter v1 and v2, padded with zeros to one length (a library ignores bytes past its
/// section headers).
fn same_length_versions() -> (Vec<u8>, Vec<u8>) {
    let mut one = std::fs::read(Fixture::GreeterV1.path()).unwrap();
    let mut two = std::fs::read(Fixture::GreeterV2.path()).unwrap();
    let len = one.len().max(two.len()) + 16;
    one.resize(len, 0);
    two.resize(len, 0);
    (one, two)
}

fn artifact(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.{}", std::env::consts::DLL_EXTENSION))
}

/// A swapper serving padded v1 from a file that has settled, and what a test changes it to.
struct Serving {
    dir: tempfile::TempDir,
    path: PathBuf,
    /// Padded v2, as long as the file.
    two: Vec<u8>,
    /// The file's metadata when written.
    before: std::fs::Metadata,
    swapper: Swapper,
}

fn serving_v1() -> Serving {
    let dir = tempdir();
    let path = artifact(dir.path(), "greeter");
    let (one, two) = same_length_versions();
    std::fs::write(&path, &one).unwrap();
    let before = std::fs::metadata(&path).unwrap();
    std::thread::sleep(SETTLE);
    let swapper = Swapper::new().unwrap();
    swapper.load_files([&path]).unwrap();
    assert_eq!(version(&swapper), "1.0.0");
    Serving {
        dir,
        path,
        two,
        before,
        swapper,
    }
}

/// The case a cache of file metadata gets wrong: the file rewritten in place, its size the
/// same and its modification time put back (as `cp -p`, `rsync -t` or `touch -d` leave it).
/// Only its status-change time shows the change, and that is enough: v2 is served.
#[test]
fn a_file_rewritten_in_place_with_its_size_and_modification_time_kept_is_read_again() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Serving {
        dir: _dir,
        path,
        two,
        before,
        swapper,
    } = serving_v1();
    // Unchanged: found by its metadata, and still v1.
    swapper.load_files([&path]).unwrap();
    assert_eq!(version(&swapper), "1.0.0");

    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all(&two).unwrap();
    file.set_modified(before.modified().unwrap()).unwrap();
    drop(file);
    let after = std::fs::metadata(&path).unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (after.ino(), after.len(), after.modified().unwrap()),
            (before.ino(), before.len(), before.modified().unwrap()),
            "the rewrite must keep inode, size and modification time for this test to mean anything"
        );
    }
    swapper.load_files([&path]).unwrap();
    assert_eq!(
        version(&swapper),
        "2.0.0",
        "the rewritten file was read again"
    );
}

/// A file replaced by a rename (what a deployment should do) is another inode: read again,
/// even if its size and times match the old one's.
#[test]
fn a_file_replaced_by_a_rename_is_read_again() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Serving {
        dir,
        path,
        two,
        before,
        swapper,
    } = serving_v1();
    let next = dir.path().join(".greeter.next");
    std::fs::write(&next, &two).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&next)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    std::fs::rename(&next, &path).unwrap();
    std::thread::sleep(SETTLE);
    swapper.load_files([&path]).unwrap();
    assert_eq!(version(&swapper), "2.0.0");
}

/// Content already loaded, met under a new name (a rollback deployed by rename): its private
/// copy is staged beside the hash before the hash says it is known, and then dropped: no new
/// mapping, no memory file left open.
#[test]
fn content_already_loaded_under_another_name_leaves_no_copy_behind() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !Path::new("/proc/self/maps").exists() {
        println!("skipped: no /proc/self/maps on this platform");
        return;
    }
    let swapper = Swapper::new().unwrap();
    swapper.load_files([Fixture::GreeterV2.path()]).unwrap();
    swapper.load_files([Fixture::GreeterV1.path()]).unwrap();
    let (maps, fds) = (mapped_copies(), open_copies());
    assert!(fds >= 2, "each mapped copy keeps its memory file open");

    let dir = tempdir();
    let renamed = artifact(dir.path(), "renamed");
    std::fs::copy(Fixture::GreeterV2.path(), &renamed).unwrap();
    swapper.load_files([&renamed]).unwrap();
    assert_eq!(version(&swapper), "2.0.0");
    assert_eq!(mapped_copies(), maps, "v2 is mapped once");
    assert_eq!(open_copies(), fds, "the staged copy was closed");

    // New content under a new name is mapped, and its memory file stays open.
    let (_, padded) = same_length_versions();
    let fresh = artifact(dir.path(), "fresh");
    std::fs::write(&fresh, padded).unwrap();
    swapper.load_files([&fresh]).unwrap();
    assert_eq!(version(&swapper), "2.0.0");
    assert_eq!(mapped_copies().len(), maps.len() + 1);
    assert_eq!(open_copies(), fds + 1);
}

/// The state directory keeps every artifact loaded. A reload that finds a file unchanged,
/// and so does not read it, still keeps it again if its kept copy went missing.
#[test]
fn a_kept_copy_that_went_missing_is_kept_again_by_a_reload_of_an_unchanged_file() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let state = dir.path().join("state");
    let path = artifact(dir.path(), "greeter");
    std::fs::copy(Fixture::GreeterV1.path(), &path).unwrap();
    std::thread::sleep(SETTLE);
    let swapper = Swapper::builder().state_dir(&state).build().unwrap();
    swapper.load_files([&path]).unwrap();
    let sha = swapkit::inspect_file(&path).unwrap().sha256;
    let kept = artifact(&state.join("artifacts"), &sha);
    assert!(kept.is_file(), "{} was kept", kept.display());

    std::fs::remove_file(&kept).unwrap();
    swapper.load_files([&path]).unwrap();
    assert!(kept.is_file(), "{} was kept again", kept.display());
    assert_eq!(std::fs::read(&kept).unwrap(), std::fs::read(&path).unwrap());
    assert_eq!(version(&swapper), "1.0.0");
}
