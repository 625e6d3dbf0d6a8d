//! Whether the cache can be trusted with code that every worker runs.
//!
//! The cache holds the interpreter's venv and the bridge sources, so anyone who can write
//! to it can run code in every worker (and with the worker's rights, which for a root
//! `dspex` means root). Directories dspex creates are therefore private (0700) whatever
//! the umask, and a cache directory that someone else could write to, or that belongs to
//! another user, is refused rather than used. Only the directories dspex walks through
//! are checked, not every file: a private directory keeps other users away from all it
//! contains.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::EnvError;

/// Creates `dir` and any missing parents, each private to this user (mode 0700 set
/// explicitly, since the umask could widen what `mkdir` is given but never narrow it to
/// what a caller with umask 0 expects). Existing directories are left as they are.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), EnvError> {
    let mut missing: Vec<&Path> = Vec::new();
    for ancestor in dir.ancestors() {
        if ancestor.as_os_str().is_empty() || ancestor.exists() {
            break;
        }
        missing.push(ancestor);
    }
    for path in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            // Another thread or process made it first; it is checked like any other.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => continue,
            Err(source) => {
                return Err(EnvError::CacheNotWritable {
                    action: "create directory",
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(|source| {
            EnvError::CacheNotWritable {
                action: "make private",
                path: path.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(())
}

/// [`create_private_dir`], then [`check_private`].
pub(crate) fn private_dir(dir: &Path) -> Result<(), EnvError> {
    create_private_dir(dir)?;
    check_private(dir)
}

/// Refuses a directory that another user owns or that group or others may write to.
pub(crate) fn check_private(dir: &Path) -> Result<(), EnvError> {
    let meta = fs::metadata(dir).map_err(|source| EnvError::CacheNotWritable {
        action: "inspect",
        path: dir.to_path_buf(),
        source,
    })?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if let Some(problem) = untrusted(meta.uid(), meta.mode(), me) {
        return Err(EnvError::UntrustedCache {
            path: dir.to_path_buf(),
            problem,
        });
    }
    Ok(())
}

/// Why a directory with this owner and mode cannot be trusted by user `me`.
fn untrusted(owner: u32, mode: u32, me: u32) -> Option<String> {
    if owner != me {
        return Some(format!(
            "it belongs to another user (uid {owner}; dspex runs as uid {me})"
        ));
    }
    let writable = mode & 0o022;
    if writable != 0 {
        let who = match (writable & 0o020 != 0, writable & 0o002 != 0) {
            (true, true) => "its group and other users",
            (true, false) => "its group",
            _ => "other users",
        };
        return Some(format!(
            "{who} can write to it (mode {:04o})",
            mode & 0o7777
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_and_write_bits_decide_trust() {
        assert_eq!(untrusted(1000, 0o40700, 1000), None);
        assert_eq!(untrusted(1000, 0o40755, 1000), None, "readable is fine");
        let other = untrusted(0, 0o40700, 1000).unwrap();
        assert!(other.contains("another user (uid 0"), "{other}");
        let world = untrusted(1000, 0o40777, 1000).unwrap();
        assert_eq!(
            world,
            "its group and other users can write to it (mode 0777)"
        );
        let group = untrusted(1000, 0o40770, 1000).unwrap();
        assert!(group.starts_with("its group can"), "{group}");
        let sticky = untrusted(1000, 0o41703, 1000).unwrap();
        assert!(sticky.starts_with("other users can"), "{sticky}");
    }

    #[test]
    fn created_directories_are_private_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/c");
        // SAFETY: umask only changes this process's file creation mask; the test restores it.
        let old = unsafe { libc::umask(0) };
        let created = create_private_dir(&dir);
        unsafe { libc::umask(old) };
        created.unwrap();
        for path in [tmp.path().join("a"), tmp.path().join("a/b"), dir.clone()] {
            let mode = fs::metadata(&path).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", path.display());
        }
        check_private(&dir).unwrap();
    }

    #[test]
    fn a_world_writable_directory_is_refused_naming_it_and_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_private(tmp.path()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&tmp.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("chmod go-w"), "{message}");
        assert!(message.contains("DSPEX_HOME"), "{message}");
    }
}
