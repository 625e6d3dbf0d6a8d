//! The bridge's Python sources, embedded in the binary and unpacked into the cache.
//!
//! Embedding makes an installed `dspex` independent of this repository; unpacking by content
//! hash means two binaries with different bridges never share (or overwrite) one directory,
//! and a directory, once in place, never changes under a running worker.
//!
//! The directory name alone proves nothing about what is in it now, and every worker
//! imports from it, so each start compares the unpacked files with the embedded ones (a
//! few hundred kilobytes, well under a millisecond). A directory that differs in any way,
//! a changed, missing or extra file (a planted `dspy.py` would shadow DSPy), is replaced
//! by a fresh copy.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use include_dir::{include_dir, Dir};
use sha2::{Digest, Sha256};

use super::trust;
use super::EnvError;

static BRIDGE_SOURCES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/python/dspex_bridge");

/// Name of the package directory inside an unpacked bridge.
const PACKAGE: &str = "dspex_bridge";

/// The embedded files worth unpacking, sorted by path so the content hash is stable.
///
/// Byte-compiled caches are skipped: they depend on whoever last ran the sources in the
/// checkout, and Python regenerates them next to the unpacked files anyway.
fn bridge_files() -> Vec<(&'static Path, &'static [u8])> {
    fn collect(dir: &'static Dir<'static>, out: &mut Vec<(&'static Path, &'static [u8])>) {
        for sub in dir.dirs() {
            if sub.path().file_name().is_some_and(|n| n == "__pycache__") {
                continue;
            }
            collect(sub, out);
        }
        for file in dir.files() {
            if file.path().extension().is_some_and(|e| e == "pyc") {
                continue;
            }
            out.push((file.path(), file.contents()));
        }
    }
    let mut files = Vec::new();
    collect(&BRIDGE_SOURCES, &mut files);
    files.sort_by(|a, b| a.0.cmp(b.0));
    files
}

/// The first 16 hex digits of a SHA-256 over every embedded file's path and contents.
pub(super) fn bridge_hash() -> String {
    let mut hasher = Sha256::new();
    for (path, contents) in bridge_files() {
        // Length-prefixing keeps ("ab", "c") and ("a", "bc") from hashing alike.
        let name = portable_name(path);
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((contents.len() as u64).to_le_bytes());
        hasher.update(contents);
    }
    hex_prefix(&hasher.finalize())
}

/// `a/b.py` whatever the platform separator, so the hash is the same everywhere.
fn portable_name(path: &Path) -> String {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part.to_string_lossy()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

pub(super) fn hex_prefix(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Unpacks the embedded bridge into `<cache>/bridge/<content-hash>/dspex_bridge/` and returns
/// `<cache>/bridge/<content-hash>`, the directory to put on `PYTHONPATH`.
///
/// Idempotent and safe to call concurrently from threads and processes: the files are written
/// to a private temporary directory that is renamed into place in one step, so a reader sees
/// either nothing or the complete package; when another caller wins the rename, its copy
/// (identical by construction) is used. A directory already in place is used only if its
/// files are exactly the embedded ones; otherwise it is replaced (with a warning).
///
/// # Errors
///
/// [`EnvError::CacheNotWritable`] when the cache directory cannot be created or written,
/// [`EnvError::UntrustedCache`] when it belongs to another user or others can write to it,
/// [`EnvError::BridgeTampered`] when a damaged copy keeps coming back.
pub fn unpack_bridge(cache: &Path) -> Result<PathBuf, EnvError> {
    let root = cache.join("bridge");
    let target = root.join(bridge_hash());
    trust::private_dir(cache)?;
    trust::private_dir(&root)?;
    let mut problem = String::new();
    // Another process may be replacing a damaged copy at the same time; a few rounds let
    // both settle on one good copy.
    for _ in 0..3 {
        if target.exists() {
            match verify(&target) {
                Ok(()) => return Ok(target),
                Err(detail) => {
                    log::warn!(
                        "the unpacked bridge {} does not match the one built into dspex \
                         ({detail}); unpacking it again",
                        target.display()
                    );
                    problem = detail;
                    discard(&root, &target)?;
                }
            }
        }
        unpack_into(&root, &target)?;
    }
    Err(EnvError::BridgeTampered {
        path: target,
        detail: problem,
    })
}

/// Writes the package into a staging directory and renames it to `target`; losing that
/// race to another caller is fine (the caller verifies what is there).
fn unpack_into(root: &Path, target: &Path) -> Result<(), EnvError> {
    let staging = create_staging_dir(root)?;
    let result = write_files(&staging.join(PACKAGE)).and_then(|()| {
        fs::rename(&staging, target).or_else(|source| {
            if target.join(PACKAGE).is_dir() {
                // Another thread or process unpacked the same content first.
                Ok(())
            } else {
                Err(EnvError::CacheNotWritable {
                    action: "move the unpacked bridge to",
                    path: target.to_path_buf(),
                    source,
                })
            }
        })
    });
    if staging.exists() {
        // Only left behind when the rename lost or failed; the content is in `target` or the
        // error says why it is not.
        let _ = fs::remove_dir_all(&staging);
    }
    result?;
    log::debug!("python bridge unpacked at {}", target.display());
    Ok(())
}

/// Moves a bad copy out of the way (one rename, so no reader sees half of it) and deletes
/// it. Another caller having moved it already is fine.
fn discard(root: &Path, target: &Path) -> Result<(), EnvError> {
    let aside = create_staging_dir(root)?;
    let moved = aside.join("old");
    match fs::rename(target, &moved) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            let _ = fs::remove_dir_all(&aside);
            return Err(EnvError::CacheNotWritable {
                action: "replace the damaged bridge",
                path: target.to_path_buf(),
                source,
            });
        }
    }
    let _ = fs::remove_dir_all(&aside);
    Ok(())
}

/// Whether `target` holds exactly the embedded package: the directory itself private, only
/// `dspex_bridge/` in it, and in that every embedded file with its contents and nothing
/// else (byte-code caches included: Python would run a planted `.pyc`).
fn verify(target: &Path) -> Result<(), String> {
    if let Err(e) = trust::check_private(target) {
        return Err(e.to_string());
    }
    let mut expected: std::collections::BTreeMap<String, &[u8]> = bridge_files()
        .into_iter()
        .map(|(path, contents)| (format!("{PACKAGE}/{}", portable_name(path)), contents))
        .collect();
    let mut found = Vec::new();
    walk(target, target, &mut found).map_err(|e| format!("cannot read it: {e}"))?;
    for (name, is_file) in found {
        if !is_file {
            return Err(format!("`{name}` is not a regular file"));
        }
        let Some(contents) = expected.remove(&name) else {
            return Err(format!("unexpected file `{name}`"));
        };
        match fs::read(target.join(&name)) {
            Ok(bytes) if bytes == contents => {}
            Ok(_) => return Err(format!("`{name}` was changed")),
            Err(e) => return Err(format!("cannot read `{name}`: {e}")),
        }
    }
    match expected.keys().next() {
        Some(missing) => Err(format!("`{missing}` is missing")),
        None => Ok(()),
    }
}

/// Every non-directory under `dir` as (path relative to `root` with `/`, is a regular file).
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, bool)>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            out.push((portable_name(relative), kind.is_file()));
        }
    }
    Ok(())
}

/// A fresh private directory under `root` that no other caller uses.
fn create_staging_dir(root: &Path) -> Result<PathBuf, EnvError> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let base = format!(
        ".unpack-{}-{:?}-{nanos}",
        std::process::id(),
        std::thread::current().id()
    )
    .replace(
        |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.',
        "",
    );
    for attempt in 0u32.. {
        let path = root.join(format!("{base}-{attempt}"));
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {
                // The umask may have narrowed the mode further, never widened it; make it
                // exactly private so the renamed bridge passes its own check.
                fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).map_err(
                    |source| EnvError::CacheNotWritable {
                        action: "make private",
                        path: path.clone(),
                        source,
                    },
                )?;
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(EnvError::CacheNotWritable {
                    action: "create directory",
                    path,
                    source,
                })
            }
        }
    }
    unreachable!("u32 attempts exhausted")
}

fn write_files(package_dir: &Path) -> Result<(), EnvError> {
    let not_writable = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| EnvError::CacheNotWritable {
            action,
            path,
            source,
        }
    };
    fs::create_dir_all(package_dir).map_err(not_writable("create directory", package_dir))?;
    for (relative, contents) in bridge_files() {
        let path = package_dir.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(not_writable("create directory", parent))?;
        }
        let mut file = fs::File::create(&path).map_err(not_writable("create file", &path))?;
        file.write_all(contents)
            .map_err(not_writable("write file", &path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn portable_name_joins_with_slashes() {
        assert_eq!(portable_name(Path::new("a/b/c.py")), "a/b/c.py");
    }

    #[test]
    fn bridge_files_exclude_byte_code() {
        assert!(bridge_files().iter().all(|(p, _)| {
            p.extension() != Some(OsStr::new("pyc"))
                && !p.components().any(|c| c.as_os_str() == "__pycache__")
        }));
    }

    #[test]
    fn a_fresh_unpack_verifies_and_any_change_is_found() {
        let cache = tempfile::tempdir().unwrap();
        let target = unpack_bridge(cache.path()).unwrap();
        assert_eq!(verify(&target), Ok(()));
        let package = target.join(PACKAGE);
        let init = package.join("__init__.py");
        let original = fs::read(&init).unwrap();
        fs::write(&init, b"import os; os.system('echo pwned')").unwrap();
        assert_eq!(
            verify(&target),
            Err("`dspex_bridge/__init__.py` was changed".into())
        );
        fs::write(&init, &original).unwrap();
        fs::write(target.join("dspy.py"), b"").unwrap();
        assert_eq!(verify(&target), Err("unexpected file `dspy.py`".into()));
        fs::remove_file(target.join("dspy.py")).unwrap();
        fs::create_dir(package.join("__pycache__")).unwrap();
        fs::write(package.join("__pycache__/worker.cpython-311.pyc"), b"").unwrap();
        assert!(verify(&target).unwrap_err().contains("unexpected file"));
        fs::remove_dir_all(package.join("__pycache__")).unwrap();
        fs::remove_file(package.join("worker.py")).unwrap();
        assert_eq!(
            verify(&target),
            Err("`dspex_bridge/worker.py` is missing".into())
        );
    }

    #[test]
    fn hex_prefix_is_sixteen_lowercase_hex_digits() {
        let digest = Sha256::digest(b"x");
        let hex = hex_prefix(&digest);
        assert_eq!(hex.len(), 16);
        assert!(hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
