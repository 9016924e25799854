//! Directories that only this process's user may write: the state directory, the compile
//! cache and the native scratch directory all hold files that become code, so another user who
//! could write there could choose what runs.

use std::io;
use std::path::Path;

/// Makes `dir` (and any missing parent) if needed, the last component with mode 0700, then
/// checks it: a directory, not a link, owned by this user, and writable by no one else. A
/// directory that fails the check is refused, never used or loosened silently.
pub(crate) fn ensure(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)?;
    check(dir)
}

/// Checks that `dir` is a directory (not a link) that only this user owns and may write.
pub(crate) fn check(dir: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory (a link or a file stands there)",
            dir.display()
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(io::Error::other(format!(
                "{} belongs to uid {}, not to this process's uid {me}; another user could put \
                 code in it",
                dir.display(),
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(io::Error::other(format!(
                "{} may be written by other users (mode {:o}); make it 0700",
                dir.display(),
                meta.mode() & 0o777
            )));
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_directory_others_may_write_is_refused_and_a_new_one_is_private() {
        let base = tempfile::tempdir().unwrap();
        let fresh = base.path().join("a/b/private");
        ensure(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure(&open).unwrap_err();
        assert!(e.to_string().contains("make it 0700"), "{e}");
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(ensure(&link)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }
}
