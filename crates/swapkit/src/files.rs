//! Reading files that come from outside (artifacts, signatures, cache entries): regular files
//! only, opened without blocking, under a size cap, optionally without following a link.

use std::path::Path;

use crate::error::LoadError;

/// The largest artifact swapkit reads: 256 MiB, far above any real plugin.
pub(crate) const MAX_ARTIFACT: u64 = 256 << 20;

/// Reads an artifact: a regular file of at most [`MAX_ARTIFACT`] bytes. It is opened without
/// blocking (a FIFO would wait for a writer forever) and checked through the open handle, so
/// a device, a FIFO or a socket is refused before a byte is read, and a file that grows while
/// it is read stops at the cap.
///
/// `nofollow` refuses a symbolic link in the last component (for the state directory, where
/// nothing should be a link).
pub(crate) fn read_artifact(path: &Path, nofollow: bool) -> Result<Vec<u8>, LoadError> {
    read_capped(path, nofollow, MAX_ARTIFACT)
}

/// Reads a regular file of at most `cap` bytes, opened without blocking.
pub(crate) fn read_capped(path: &Path, nofollow: bool, cap: u64) -> Result<Vec<u8>, LoadError> {
    let (file, meta) = open_capped(path, nofollow, cap)?;
    read_opened(path, file, &meta, cap)
}

/// Opens a regular file of at most `cap` bytes without blocking, and checks it through the
/// open handle: what [`read_opened`] then reads is the file whose metadata is returned.
pub(crate) fn open_capped(
    path: &Path,
    nofollow: bool,
    cap: u64,
) -> Result<(std::fs::File, std::fs::Metadata), LoadError> {
    let read = |source| LoadError::Read {
        path: path.into(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        &mut options,
        libc::O_NONBLOCK | if nofollow { libc::O_NOFOLLOW } else { 0 },
    );
    let file = options.open(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(LoadError::NotAFile {
            path: path.into(),
            kind: file_kind(&meta.file_type()),
        });
    }
    if meta.len() > cap {
        return Err(LoadError::TooLarge {
            path: path.into(),
            size: meta.len(),
            limit: cap,
        });
    }
    Ok((file, meta))
}

/// Reads what [`open_capped`] opened, stopping at the cap if the file grew since.
pub(crate) fn read_opened(
    path: &Path,
    file: std::fs::File,
    meta: &std::fs::Metadata,
    cap: u64,
) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| LoadError::Read {
            path: path.into(),
            source,
        })?;
    if bytes.len() as u64 > cap {
        return Err(LoadError::TooLarge {
            path: path.into(),
            size: bytes.len() as u64,
            limit: cap,
        });
    }
    Ok(bytes)
}

/// What tells, without reading a file, that it has not changed since it was read: its
/// device and inode, its size, and its modification and status-change times to the
/// nanosecond. Every write, truncation, rename over it or change of its times changes its
/// status-change time, which no unprivileged process can set back, so an equal id means the
/// same bytes, provided the id was taken [settled](FileId::settled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// How old a file's status-change time must be, when its id is taken, for any later change to
/// show: the kernel stamps files from a clock that moves once per tick (10 ms at the slowest
/// tick rate, `HZ=100`), so a change within the tick of the reading could carry the same time.
/// Two ticks.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(20);

impl FileId {
    /// The id of an open file, where the platform keeps a status-change time (Unix); `None`
    /// elsewhere, so that every reading hashes.
    pub fn of(meta: &std::fs::Metadata) -> Option<FileId> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Some(FileId {
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.size(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                ctime: (meta.ctime(), meta.ctime_nsec()),
            })
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            None
        }
    }

    /// Whether any change to the file after `now` is bound to change its id: its
    /// status-change time is more than [`SETTLE`] before `now` (a time in the future, from a
    /// clock that differs from ours, never is). A file written just before it is read is not
    /// settled, and is read and hashed again next time.
    pub fn settled(&self, now: std::time::SystemTime) -> bool {
        let Ok(now) = now.duration_since(std::time::UNIX_EPOCH) else {
            return false;
        };
        let (secs, nanos) = self.ctime;
        let Ok(secs) = u64::try_from(secs) else {
            return true;
        };
        let changed = std::time::Duration::new(secs, nanos.clamp(0, 999_999_999) as u32);
        changed + SETTLE < now
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// What a file that is not a regular file is, for an error.
fn file_kind(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn id_of(path: &Path) -> FileId {
        let (_, meta) = open_capped(path, false, MAX_ARTIFACT).unwrap();
        FileId::of(&meta).unwrap()
    }

    /// A file changed just now is not trusted by its metadata (a change within the same clock
    /// tick could leave it as it is); two ticks later it is, and any change shows.
    #[test]
    fn a_file_is_known_by_its_metadata_only_once_it_has_settled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, b"one").unwrap();
        let id = id_of(&path);
        assert!(!id.settled(std::time::SystemTime::now()));
        std::thread::sleep(SETTLE * 3);
        assert!(id.settled(std::time::SystemTime::now()));
        assert_eq!(id_of(&path), id, "nothing changed");
        assert_eq!(id.size(), 3);

        std::fs::write(&path, b"two").unwrap();
        assert_ne!(id_of(&path), id, "rewritten in place, same size");
        // A status-change time in the future (a clock that differs from ours) never settles.
        let ahead = FileId {
            ctime: (i64::MAX / 2, 0),
            ..id
        };
        assert!(!ahead.settled(std::time::SystemTime::now()));
    }
}
