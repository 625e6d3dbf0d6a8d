//! The bridge's Python sources, embedded in the binary and unpacked into the cache.
//!
//! Embedding makes an installed `dspex` independent of this repository; unpacking by content
//! hash means two binaries with different bridges never share (or overwrite) one directory,
//! and a directory, once in place, never changes under a running worker.

use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use include_dir::{include_dir, Dir};
use sha2::{Digest, Sha256};

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
/// (identical by construction) is used.
///
/// # Errors
///
/// [`EnvError::CacheNotWritable`] when the cache directory cannot be created or written.
pub fn unpack_bridge(cache: &Path) -> Result<PathBuf, EnvError> {
    let root = cache.join("bridge");
    let target = root.join(bridge_hash());
    if target.join(PACKAGE).is_dir() {
        return Ok(target);
    }
    fs::create_dir_all(&root).map_err(|source| EnvError::CacheNotWritable {
        action: "create directory",
        path: root.clone(),
        source,
    })?;
    let staging = create_staging_dir(&root)?;
    let result = write_files(&staging.join(PACKAGE)).and_then(|()| {
        fs::rename(&staging, &target).or_else(|source| {
            if target.join(PACKAGE).is_dir() {
                // Another thread or process unpacked the same content first.
                Ok(())
            } else {
                Err(EnvError::CacheNotWritable {
                    action: "move the unpacked bridge to",
                    path: target.clone(),
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
    log::debug!("python bridge available at {}", target.display());
    Ok(target)
}

/// A fresh directory under `root` that no other caller uses.
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
        match fs::create_dir(&path) {
            Ok(()) => return Ok(path),
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
    fn hex_prefix_is_sixteen_lowercase_hex_digits() {
        let digest = Sha256::digest(b"x");
        let hex = hex_prefix(&digest);
        assert_eq!(hex.len(), 16);
        assert!(hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
