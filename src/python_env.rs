//! The Python the workers run: a managed venv in a per-user cache, or an interpreter the user
//! names, plus the bridge package they import.
//!
//! `python.executable = "auto"` must work on a fresh machine and outside this repository, so
//! dspex carries the bridge's sources and requirements inside the binary and builds what it
//! needs on first use: one venv per requirements hash under `<cache>/venvs/`, the bridge
//! unpacked by content hash under `<cache>/bridge/`. Both are safe to prepare from many
//! threads and processes at once (parallel test binaries, two CLIs), and both are reused
//! without locks or subprocesses once they exist.
//!
//! Everything here blocks (it runs `python -m venv` and `pip`); call it off the actor thread.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

mod bridge;
mod error;
mod interpreter;
mod venv;

pub use bridge::unpack_bridge;
pub use error::EnvError;

pub use crate::config::PythonExecutable;

/// What [`ensure`] should prepare, from the `python` configuration section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonSetup {
    /// `python.executable`.
    pub executable: PythonExecutable,
    /// `python.venv`: with [`PythonExecutable::Auto`], a venv directory to create or install
    /// into instead of the cache's; never deleted by dspex. Ignored for a
    /// [`PythonExecutable::Path`].
    pub venv: Option<PathBuf>,
    /// `python.requirements`: the requirements file to install; `None` installs the bridge's
    /// own ([`bundled_requirements`]).
    pub requirements: Option<PathBuf>,
    /// Whether the interpreter must be able to `import dspy` (false only for workers that do
    /// not use DSPy, such as echo workers in tests).
    pub require_dspy: bool,
    /// The cache directory; `None` resolves it with [`cache_dir`].
    pub cache_dir: Option<PathBuf>,
}

impl Default for PythonSetup {
    /// The managed venv with the bundled requirements, dspy required, cache from the
    /// environment.
    fn default() -> Self {
        Self {
            executable: PythonExecutable::Auto,
            venv: None,
            requirements: None,
            require_dspy: true,
            cache_dir: None,
        }
    }
}

/// A prepared Python environment: what a worker launcher needs to start the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonEnv {
    /// The interpreter to run.
    pub python: PathBuf,
    /// The directory to put on `PYTHONPATH`; it contains `dspex_bridge/`.
    pub bridge_path: PathBuf,
    /// The venv the interpreter belongs to, when there is one.
    pub venv: Option<PathBuf>,
    /// The first 16 hex digits of the SHA-256 of the requirements in use.
    pub requirements_hash: String,
}

/// A report from [`ensure`] for a progress display.
///
/// Nothing is reported when the environment already exists; creating one reports `Step`s
/// (what is happening now), pip's output as `Line`s, and a final `Done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<'a> {
    /// A new phase started, e.g. "creating a virtual environment at ...".
    Step(&'a str),
    /// One line of a subprocess's output (pip).
    Line(&'a str),
    /// The environment is ready.
    Done(&'a str),
}

/// Prepares the interpreter and the bridge for the workers.
///
/// With [`PythonExecutable::Auto`], the venv for the requirements' hash is created on first
/// use (bootstrap interpreter from `DSPEX_BOOTSTRAP_PYTHON`, else `python3`, else `python`;
/// `python -m venv`; `pip install -r`; an `import dspy` check when `require_dspy`) while holding
/// a file lock, and reused afterwards without either. With [`PythonExecutable::Path`], the
/// interpreter is checked to run (and to import dspy when `require_dspy`), never modified.
/// Either way the bridge is unpacked into the cache ([`unpack_bridge`]).
///
/// # Errors
///
/// An [`EnvError`] whose message says what to install, fix or run: no usable Python, a missing
/// venv module, a failed pip install, dspy not importable, an unwritable cache.
///
/// # Examples
///
/// ```no_run
/// use dspex::python_env::{ensure, Progress, PythonSetup};
///
/// let env = ensure(&PythonSetup::default(), &mut |p| match p {
///     Progress::Step(s) | Progress::Done(s) => eprintln!("{s}"),
///     Progress::Line(l) => eprintln!("  {l}"),
/// })?;
/// println!("workers run {} with {} on PYTHONPATH", env.python.display(), env.bridge_path.display());
/// # Ok::<(), dspex::python_env::EnvError>(())
/// ```
pub fn ensure(
    setup: &PythonSetup,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<PythonEnv, EnvError> {
    let cache = match &setup.cache_dir {
        Some(dir) => dir.clone(),
        None => cache_dir()?,
    };
    let requirements = Requirements::load(setup.requirements.as_deref())?;
    let bridge_path = unpack_bridge(&cache)?;
    let (python, venv) = match &setup.executable {
        PythonExecutable::Auto => {
            let plan = venv_plan(&cache, setup, &requirements)?;
            let python = venv::ensure_venv(&plan, progress)?;
            (python, Some(plan.dir))
        }
        PythonExecutable::Path(path) => {
            check_given_interpreter(path, setup.require_dspy, &cache, &requirements)?;
            (path.clone(), enclosing_venv(path))
        }
    };
    Ok(PythonEnv {
        python,
        bridge_path,
        venv,
        requirements_hash: requirements.hash,
    })
}

/// The per-user cache directory: `$DSPEX_HOME`, else `$XDG_CACHE_HOME/dspex`, else
/// `~/.cache/dspex`.
///
/// # Errors
///
/// [`EnvError::NoCacheDir`] when none of those variables is set.
pub fn cache_dir() -> Result<PathBuf, EnvError> {
    cache_dir_from(|name| env::var_os(name))
}

fn cache_dir_from(var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, EnvError> {
    let set = |name: &str| {
        var(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    if let Some(home) = set("DSPEX_HOME") {
        return Ok(home);
    }
    // The XDG spec says a relative value is invalid and must be ignored.
    if let Some(xdg) = set("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return Ok(xdg.join("dspex"));
    }
    if let Some(home) = set("HOME") {
        return Ok(home.join(".cache").join("dspex"));
    }
    Err(EnvError::NoCacheDir)
}

/// The bridge's `requirements.txt`, as compiled into this binary.
pub fn bundled_requirements() -> &'static str {
    include_str!("../python/requirements.txt")
}

/// The key a managed venv is stored under: the first 16 hex digits of the SHA-256 of the
/// requirements text, so changed requirements get a fresh venv and unchanged ones share it.
pub fn requirements_hash(requirements: &str) -> String {
    bridge::hex_prefix(&Sha256::digest(requirements.as_bytes()))
}

/// The requirements in use and where they came from.
struct Requirements {
    text: String,
    hash: String,
    /// The user's file; `None` for the bundled requirements.
    file: Option<PathBuf>,
}

impl Requirements {
    fn load(file: Option<&Path>) -> Result<Self, EnvError> {
        let text = match file {
            Some(path) => fs::read_to_string(path).map_err(|source| EnvError::Requirements {
                path: path.to_path_buf(),
                source,
            })?,
            None => bundled_requirements().to_owned(),
        };
        Ok(Self {
            hash: requirements_hash(&text),
            text,
            file: file.map(Path::to_path_buf),
        })
    }

    /// For messages: the file, or that the bundled requirements were used.
    fn describe(&self) -> String {
        match &self.file {
            Some(path) => format!("`{}`", path.display()),
            None => "the requirements bundled with dspex".to_owned(),
        }
    }
}

fn venv_plan<'a>(
    cache: &Path,
    setup: &PythonSetup,
    requirements: &'a Requirements,
) -> Result<venv::Plan<'a>, EnvError> {
    let venvs = cache.join("venvs");
    let (dir, lock, disposable) = match &setup.venv {
        None => (
            venvs.join(&requirements.hash),
            venvs.join(format!("{}.lock", requirements.hash)),
            true,
        ),
        Some(dir) => {
            // The lock is keyed by the absolute path, so two spellings of one venv share it.
            let dir = std::path::absolute(dir).map_err(|source| EnvError::CacheNotWritable {
                action: "resolve",
                path: dir.clone(),
                source,
            })?;
            let key = requirements_hash(&dir.to_string_lossy());
            (dir, venvs.join(format!("custom-{key}.lock")), false)
        }
    };
    Ok(venv::Plan {
        dir,
        lock,
        disposable,
        requirements,
        require_dspy: setup.require_dspy,
        bootstrap: env::var_os("DSPEX_BOOTSTRAP_PYTHON").filter(|v| !v.is_empty()),
    })
}

/// Checks a `python.executable` path: it runs, is 3.9+, and imports dspy when required.
fn check_given_interpreter(
    python: &Path,
    require_dspy: bool,
    cache: &Path,
    requirements: &Requirements,
) -> Result<(), EnvError> {
    let version = interpreter::check_interpreter(python)?;
    log::debug!("{} is Python {version}", python.display());
    if !require_dspy {
        return Ok(());
    }
    match interpreter::dspy_import_error(python) {
        None => Ok(()),
        Some(tail) => Err(EnvError::DspyImport {
            python: python.to_path_buf(),
            tail,
            hint: format!(
                "install it with `{} -m pip install -r {}` or set python.executable = \"auto\"",
                python.display(),
                requirements_file_for_hint(cache, requirements).display()
            ),
        }),
    }
}

/// A requirements file the user can pass to pip: theirs, or the bundled one written out to
/// `<cache>/requirements/<hash>.txt` (the binary may be far from any checkout).
fn requirements_file_for_hint(cache: &Path, requirements: &Requirements) -> PathBuf {
    if let Some(file) = &requirements.file {
        return file.clone();
    }
    let dir = cache.join("requirements");
    let path = dir.join(format!("{}.txt", requirements.hash));
    if !path.exists() {
        let staging = dir.join(format!(
            "{}.txt.{}.tmp",
            requirements.hash,
            std::process::id()
        ));
        let written = fs::create_dir_all(&dir)
            .and_then(|()| fs::write(&staging, &requirements.text))
            .and_then(|()| fs::rename(&staging, &path));
        if let Err(e) = written {
            log::warn!("cannot write {}: {e}", path.display());
        }
    }
    path
}

/// The venv an interpreter path points into (`<venv>/bin/python`), if any.
fn enclosing_venv(python: &Path) -> Option<PathBuf> {
    let venv = python.parent()?.parent()?;
    venv.join("pyvenv.cfg")
        .is_file()
        .then(|| venv.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(vars: &[(&str, &str)]) -> Result<PathBuf, EnvError> {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        cache_dir_from(|name| vars.get(name).cloned())
    }

    #[test]
    fn cache_dir_prefers_dspex_home() {
        let dir = resolve(&[
            ("DSPEX_HOME", "/d"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(dir.unwrap(), PathBuf::from("/d"));
    }

    #[test]
    fn cache_dir_falls_back_to_xdg_then_home() {
        let xdg = resolve(&[("DSPEX_HOME", ""), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(xdg.unwrap(), PathBuf::from("/x/dspex"));
        let home = resolve(&[("HOME", "/h")]);
        assert_eq!(home.unwrap(), PathBuf::from("/h/.cache/dspex"));
    }

    #[test]
    fn cache_dir_ignores_relative_xdg_cache_home() {
        let dir = resolve(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/h")]);
        assert_eq!(dir.unwrap(), PathBuf::from("/h/.cache/dspex"));
    }

    #[test]
    fn cache_dir_without_any_variable_says_to_set_dspex_home() {
        let err = resolve(&[]).unwrap_err();
        assert!(matches!(err, EnvError::NoCacheDir));
        assert!(err.to_string().contains("set DSPEX_HOME"));
    }

    #[test]
    fn requirements_hash_is_stable_and_content_sensitive() {
        let a = requirements_hash("dspy==3.4.1\n");
        assert_eq!(a, requirements_hash("dspy==3.4.1\n"));
        assert_ne!(a, requirements_hash("dspy==3.4.0\n"));
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn enclosing_venv_recognises_pyvenv_cfg() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(dir.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        let found = enclosing_venv(&dir.join("bin").join("python"));
        let bare = enclosing_venv(Path::new("python3"));
        assert_eq!(found, Some(dir));
        assert_eq!(bare, None);
    }
}
