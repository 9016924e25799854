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
    use std::io::Read;
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
    let too_large = |size| LoadError::TooLarge {
        path: path.into(),
        size,
        limit: cap,
    };
    if meta.len() > cap {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut bytes).map_err(read)?;
    if bytes.len() as u64 > cap {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
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
