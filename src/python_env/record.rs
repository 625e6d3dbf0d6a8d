//! Whether the packages in a venv are still what pip installed.
//!
//! pip writes a `RECORD` into each package's `.dist-info`: every file it installed with its
//! SHA-256 and size. Checking those finds a venv damaged after the fact (a deleted or
//! edited file of `dspy`), which the ready marker cannot know about and which otherwise
//! shows up as a confusing import error in every worker. Reading and hashing every file
//! of a DSPy venv (about 500 MB) takes seconds, so this runs when asked for (`dspex
//! setup`, or to explain a failed start), never on every start.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// How many damaged files a report names; the rest are counted.
const NAMED: usize = 5;

/// What is wrong with a venv's installed files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Damage {
    /// The first few problems, e.g. "dspy/predict/predict.py is missing".
    pub(super) named: Vec<String>,
    /// How many files are missing or changed in all.
    pub(super) count: usize,
    /// The distributions those files belong to, as (name, version).
    pub(super) distributions: Vec<(String, String)>,
}

impl Damage {
    pub(super) fn summary(&self) -> String {
        let more = self.count.saturating_sub(self.named.len());
        let mut text = format!(
            "{} installed file{} missing or changed ({}",
            self.count,
            if self.count == 1 { " is" } else { "s are" },
            self.named.join("; ")
        );
        if more > 0 {
            text.push_str(&format!("; and {more} more"));
        }
        text.push(')');
        text
    }
}

/// What [`check`] looked at, for reporting.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Checked {
    pub(super) distributions: usize,
    pub(super) files: usize,
}

/// Checks every file listed in the `RECORD`s of `venv`'s site-packages: it exists, has the
/// recorded size and, with `hashes`, the recorded SHA-256. Entries without a hash (pip
/// records byte-code that way) are skipped.
pub(super) fn check(venv: &Path, hashes: bool) -> io::Result<(Checked, Option<Damage>)> {
    let mut checked = Checked::default();
    let mut damage = Damage {
        named: Vec::new(),
        count: 0,
        distributions: Vec::new(),
    };
    for site in site_packages(venv)? {
        let mut infos: Vec<PathBuf> = fs::read_dir(&site)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "dist-info"))
            .collect();
        infos.sort();
        for info in infos {
            let Ok(record) = fs::read_to_string(info.join("RECORD")) else {
                continue;
            };
            checked.distributions += 1;
            let mut broken = false;
            for line in record.lines().filter(|l| !l.trim().is_empty()) {
                let Some(entry) = Entry::parse(line) else {
                    continue;
                };
                if entry.hash.is_empty() {
                    continue;
                }
                checked.files += 1;
                if let Some(problem) = entry.problem(&site, hashes) {
                    broken = true;
                    damage.count += 1;
                    if damage.named.len() < NAMED {
                        damage.named.push(problem);
                    }
                }
            }
            if broken {
                damage.distributions.push(distribution(&info));
            }
        }
    }
    Ok((checked, (damage.count > 0).then_some(damage)))
}

/// `<venv>/lib/pythonX.Y/site-packages` (one per Python version present).
fn site_packages(venv: &Path) -> io::Result<Vec<PathBuf>> {
    let lib = venv.join("lib");
    let mut sites: Vec<PathBuf> = fs::read_dir(&lib)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("python"))
        })
        .map(|p| p.join("site-packages"))
        .filter(|p| p.is_dir())
        .collect();
    sites.sort();
    Ok(sites)
}

/// `(name, version)` from a `name-version.dist-info` directory name.
fn distribution(info: &Path) -> (String, String) {
    let stem = info
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.rsplit_once('-') {
        Some((name, version)) => (name.to_owned(), version.to_owned()),
        None => (stem, String::new()),
    }
}

/// One `RECORD` line: `path,sha256=<urlsafe base64>,size`.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    path: String,
    hash: String,
    size: Option<u64>,
}

impl Entry {
    /// Parses a CSV line (paths with commas are quoted, `""` inside quotes is a quote).
    fn parse(line: &str) -> Option<Entry> {
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                ('"', _) => quoted = !quoted,
                (',', false) => fields.push(std::mem::take(&mut field)),
                _ => field.push(c),
            }
        }
        fields.push(field);
        let mut fields = fields.into_iter();
        let path = fields.next().filter(|p| !p.is_empty())?;
        let hash = fields.next().unwrap_or_default();
        let size = fields.next().and_then(|s| s.trim().parse().ok());
        Some(Entry { path, hash, size })
    }

    /// What is wrong with this file, if anything.
    fn problem(&self, site: &Path, hashes: bool) -> Option<String> {
        let path = site.join(&self.path);
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Some(format!("{} is missing", self.path))
            }
            Err(e) => return Some(format!("{} cannot be read: {e}", self.path)),
        };
        if self.size.is_some_and(|size| size != meta.len()) {
            return Some(format!("{} has changed size", self.path));
        }
        if hashes {
            let expected = self.hash.strip_prefix("sha256=")?;
            match sha256_b64(&path) {
                Ok(actual) if actual == expected => {}
                Ok(_) => return Some(format!("{} was changed", self.path)),
                Err(e) => return Some(format!("{} cannot be read: {e}", self.path)),
            }
        }
        None
    }
}

/// A file's SHA-256 in the unpadded URL-safe base64 that `RECORD` uses.
fn sha256_b64(path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(base64_url(&hasher.finalize()))
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lines_parse_with_quotes_and_empty_fields() {
        assert_eq!(
            Entry::parse("dspy/__init__.py,sha256=abc,123"),
            Some(Entry {
                path: "dspy/__init__.py".into(),
                hash: "sha256=abc".into(),
                size: Some(123)
            })
        );
        assert_eq!(
            Entry::parse("\"a,b\"\"c.py\",sha256=x,1").unwrap().path,
            "a,b\"c.py"
        );
        let pyc = Entry::parse("dspy/__pycache__/x.pyc,,").unwrap();
        assert_eq!((pyc.hash.as_str(), pyc.size), ("", None));
        assert_eq!(Entry::parse(""), None);
    }

    #[test]
    fn base64_matches_the_record_encoding() {
        // `printf abc | sha256sum | xxd -r -p | base64 | tr '+/' '-_' | tr -d =`
        let digest = Sha256::digest(b"abc");
        assert_eq!(
            base64_url(&digest),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
        assert_eq!(base64_url(b"f"), "Zg");
        assert_eq!(base64_url(b"fo"), "Zm8");
        assert_eq!(base64_url(b"foo"), "Zm9v");
    }

    #[test]
    fn missing_resized_and_edited_files_are_found() {
        let venv = tempfile::tempdir().unwrap();
        let site = venv.path().join("lib/python3.11/site-packages");
        fs::create_dir_all(site.join("pkg")).unwrap();
        fs::create_dir_all(site.join("pkg-1.2.dist-info")).unwrap();
        let files = [
            ("pkg/a.py", "a = 1\n"),
            ("pkg/b.py", "b = 2\n"),
            ("pkg/c.py", "c\n"),
        ];
        let mut record = String::new();
        for (name, text) in files {
            fs::write(site.join(name), text).unwrap();
            let hash = base64_url(&Sha256::digest(text.as_bytes()));
            record.push_str(&format!("{name},sha256={hash},{}\n", text.len()));
        }
        record.push_str("pkg/__pycache__/a.pyc,,\npkg-1.2.dist-info/RECORD,,\n");
        fs::write(site.join("pkg-1.2.dist-info/RECORD"), record).unwrap();

        let (checked, damage) = check(venv.path(), true).unwrap();
        assert_eq!(
            checked,
            Checked {
                distributions: 1,
                files: 3
            }
        );
        assert_eq!(damage, None);

        fs::remove_file(site.join("pkg/a.py")).unwrap();
        fs::write(site.join("pkg/b.py"), "b = 22\n").unwrap();
        fs::write(site.join("pkg/c.py"), "d\n").unwrap();
        let damage = check(venv.path(), false).unwrap().1.unwrap();
        assert_eq!(damage.count, 2, "without hashes a same-size edit passes");
        let damage = check(venv.path(), true).unwrap().1.unwrap();
        assert_eq!(damage.count, 3);
        assert_eq!(
            damage.named,
            [
                "pkg/a.py is missing",
                "pkg/b.py has changed size",
                "pkg/c.py was changed"
            ]
        );
        assert_eq!(damage.distributions, [("pkg".to_owned(), "1.2".to_owned())]);
        assert!(damage
            .summary()
            .starts_with("3 installed files are missing or changed (pkg/a.py is missing;"));
    }
}
