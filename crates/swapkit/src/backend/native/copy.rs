//! The private copy a native library is mapped from, written so that nobody can swap it
//! between the write and `dlopen`.
//!
//! Where the kernel has `memfd_create` (Linux), the bytes go to an anonymous memory file that
//! is then sealed against any change and mapped through `/proc/self/fd/N`: there is no path
//! another user could replace, and no file left behind. Elsewhere the copy is a new file
//! (`O_EXCL | O_NOFOLLOW`, mode 0500 once written) in a scratch directory of mode 0700 named
//! after this process; scratch directories of processes that died are removed at start.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where private copies are made.
pub(crate) enum Scratch {
    /// Sealed memory files.
    #[cfg(target_os = "linux")]
    Memfd,
    /// Files in a private directory, removed with it.
    Dir(tempfile::TempDir),
}

static COPIES: AtomicU64 = AtomicU64::new(0);

impl Scratch {
    /// Memory files if the kernel has them, else a private directory under `parent` (the
    /// system's temporary directory if `None`).
    pub fn new(parent: Option<&Path>) -> io::Result<Scratch> {
        #[cfg(target_os = "linux")]
        if memfd("swapkit-probe").is_ok() {
            return Ok(Scratch::Memfd);
        }
        Scratch::dir(parent)
    }

    /// A private scratch directory under `parent`, after removing those of dead processes.
    pub fn dir(parent: Option<&Path>) -> io::Result<Scratch> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_owned);
        remove_stale(&parent);
        let dir = tempfile::Builder::new()
            .prefix(&format!("swapkit-{}-", std::process::id()))
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(&parent)?;
        crate::private_dir::check(dir.path())?;
        Ok(Scratch::Dir(dir))
    }

    /// Writes a private copy of `bytes`, to be mapped from [`Copy::path`]. `stem` names it in
    /// listings (`/proc/self/maps`), nothing more.
    pub fn write(&self, stem: &str, bytes: &[u8]) -> io::Result<Copy> {
        let n = COPIES.fetch_add(1, Ordering::Relaxed);
        match self {
            #[cfg(target_os = "linux")]
            Scratch::Memfd => {
                let mut file = memfd(&format!("swapkit-{stem}-{n}"))?;
                file.write_all(bytes)?;
                seal(&file)?;
                let path = path_of(&file);
                Ok(Copy {
                    path,
                    memfd: Some(file),
                })
            }
            Scratch::Dir(dir) => {
                use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
                let path = dir.path().join(format!("{stem}-{n}.{}", super::EXTENSION));
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o700)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)?;
                file.write_all(bytes)?;
                file.set_permissions(std::fs::Permissions::from_mode(0o500))?;
                Ok(Copy {
                    path,
                    #[cfg(target_os = "linux")]
                    memfd: None,
                })
            }
        }
    }

    /// Where copies go, for errors: the directory, or a description of memory files.
    pub fn describe(&self) -> PathBuf {
        match self {
            #[cfg(target_os = "linux")]
            Scratch::Memfd => PathBuf::from("memfd:"),
            Scratch::Dir(dir) => dir.path().to_owned(),
        }
    }
}

/// A private copy, not mapped yet. Dropped unmapped (its content turned out to be loaded
/// already, or a check failed), it is gone: the memory file closed, the file removed.
pub(crate) struct Copy {
    path: PathBuf,
    /// The memory file, open until the copy is mapped.
    #[cfg(target_os = "linux")]
    memfd: Option<std::fs::File>,
}

impl Copy {
    /// The path to map the copy from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the copy for the rest of the process, once it is mapped.
    ///
    /// The descriptor of a memory file stays open, as the mapping does (see the module docs of
    /// `native`): the dynamic loader knows a library by its path, so the path must never
    /// name another library later.
    pub fn keep(mut self) {
        #[cfg(target_os = "linux")]
        if let Some(file) = self.memfd.take() {
            let _fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        }
        self.path = PathBuf::new();
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if self.memfd.is_some() {
            return;
        }
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The path to map a memory file from: `/proc/<pid>/fd/N` when that names this very file, else
/// `/proc/self/fd/N`.
///
/// The dynamic loader records the path it was given, and a debugger reads a library's symbols
/// by opening that path in its own process, where `/proc/self` is the debugger: gdb then
/// blocks reading one of its own descriptors. `/proc/<pid>` means this process from anywhere.
/// It is used only after checking that it reaches the same file (device and inode) as the
/// descriptor, since `/proc` may belong to another pid namespace.
#[cfg(target_os = "linux")]
fn path_of(file: &std::fs::File) -> PathBuf {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let fd = file.as_raw_fd();
    let by_pid = PathBuf::from(format!("/proc/{}/fd/{fd}", std::process::id()));
    let same = match (file.metadata(), std::fs::metadata(&by_pid)) {
        (Ok(ours), Ok(theirs)) => ours.dev() == theirs.dev() && ours.ino() == theirs.ino(),
        _ => false,
    };
    if same {
        by_pid
    } else {
        PathBuf::from(format!("/proc/self/fd/{fd}"))
    }
}

/// A new anonymous memory file that can be sealed.
#[cfg(target_os = "linux")]
fn memfd(name: &str) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let name = std::ffi::CString::new(name.replace('\0', "_")).expect("no NUL left");
    // SAFETY: `name` is a valid C string; the flags are defined by the kernel ABI.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Seals a memory file against any later write, growth or shrinking, by anyone: another
/// process of the same user could otherwise open `/proc/<pid>/fd/N` and rewrite it.
///
/// The kernel refuses `F_SEAL_WRITE` with `EBUSY` while a page of the file looks pinned, which
/// a page just written can for a moment: it may still sit in another CPU's LRU batch, holding
/// a reference, and on a loaded machine the kernel's own wait for it (about 75 ms) runs out.
/// So a busy seal is tried again, for up to about a second in all.
#[cfg(target_os = "linux")]
fn seal(file: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    retry_busy(|| {
        // SAFETY: the descriptor is open; F_ADD_SEALS takes an int argument.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })
}

/// Runs `op` until it does not fail with `EBUSY`, sleeping 2, 4, ... 256 ms in between: the
/// last error if it is still busy after that.
#[cfg(target_os = "linux")]
fn retry_busy(mut op: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    let mut pause = std::time::Duration::from_millis(2);
    loop {
        match op() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && pause.as_millis() <= 256 => {
                tracing::debug!(
                    ?pause,
                    "sealing a private copy found a page busy; trying again"
                );
                std::thread::sleep(pause);
                pause *= 2;
            }
            other => return other,
        }
    }
}

/// Removes the scratch directories (`swapkit-<pid>-*`) of this user's processes that are no
/// longer running: a host that crashed leaves its copies behind.
fn remove_stale(parent: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("swapkit-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let dead = unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if meta.is_dir() && meta.uid() == me && dead {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(dir = %entry.path().display(), pid, "removed the scratch directory of a host that is gone")
                }
                Err(e) => {
                    tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove a stale scratch directory")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_busy_seal_is_tried_again_and_gives_up_in_the_end() {
        let busy = || Err(io::Error::from_raw_os_error(libc::EBUSY));
        let mut tries = 0;
        retry_busy(|| {
            tries += 1;
            if tries < 3 {
                busy()
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(tries, 3);
        let mut tries = 0;
        let e = retry_busy(|| {
            tries += 1;
            busy()
        })
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
        assert_eq!(tries, 9, "2, 4, ... 256 ms between them");
        // Any other error is not tried again.
        let mut tries = 0;
        let e = retry_busy(|| {
            tries += 1;
            Err(io::Error::from_raw_os_error(libc::EPERM))
        })
        .unwrap_err();
        assert_eq!((e.raw_os_error(), tries), (Some(libc::EPERM), 1));
    }

    #[test]
    fn a_copy_cannot_be_changed_once_written() {
        let scratch = Scratch::new(None).unwrap();
        let copy = scratch.write("t", b"hello").unwrap();
        let path = copy.path();
        assert_eq!(std::fs::read(path).unwrap(), b"hello");
        // Opening it again for writing (as another process could, by its /proc path, or by
        // its name in a scratch directory) fails.
        let reopened = std::fs::OpenOptions::new().write(true).open(path);
        match reopened {
            Err(_) => {}
            Ok(mut f) => assert!(f.write_all(b"evil").is_err(), "the copy was rewritten"),
        }
        assert_eq!(std::fs::read(path).unwrap(), b"hello");
    }

    #[test]
    fn the_fallback_directory_is_private_and_stale_ones_are_removed() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        // A dead host's directory: no process has pid 2^22 + 1 on a default pid_max.
        let stale = parent.path().join("swapkit-4194305-abc");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("old.so"), b"x").unwrap();
        // A running host's directory (this one) stays.
        let live = parent
            .path()
            .join(format!("swapkit-{}-xyz", std::process::id()));
        std::fs::create_dir(&live).unwrap();
        let scratch = Scratch::dir(Some(parent.path())).unwrap();
        assert!(!stale.exists(), "the dead host's scratch is gone");
        assert!(live.exists());
        let dir = scratch.describe();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let copy = scratch.write("lib", b"bytes").unwrap();
        let path = copy.path().to_owned();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o500);
        // A copy never mapped is removed when dropped; a kept one stays.
        drop(copy);
        assert!(!path.exists(), "an unmapped copy is gone");
        let kept = scratch.write("lib", b"bytes").unwrap();
        let path = kept.path().to_owned();
        kept.keep();
        assert!(path.exists(), "a kept copy stays");
    }
}
