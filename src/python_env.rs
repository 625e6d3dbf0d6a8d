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
//! The cache holds code every worker runs, so it is created private (0700), refused when
//! another user could write to it, and its bridge is compared with the embedded sources on
//! every start (see `trust` and `bridge`). Whether the venv's installed files are intact is
//! checked on demand (`dspex setup`, see `record`), since hashing a DSPy venv takes seconds.
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
mod record;
mod trust;
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

/// What [`prepare`] does with a managed venv that is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Existing {
    /// Use it when its ready marker says it was installed completely (every start).
    #[default]
    Reuse,
    /// Also check every installed file against pip's records and repair what is damaged
    /// (`dspex setup`).
    Verify,
    /// Build it again from scratch (`dspex setup --force`). A venv the user named
    /// (`python.venv`) is not deleted; its requirements are reinstalled.
    Rebuild,
}

/// What [`prepare`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// An existing environment was used as it was.
    Reused,
    /// An existing environment was checked file by file and found intact.
    Verified {
        /// Installed distributions checked.
        distributions: usize,
        /// Installed files checked.
        files: usize,
    },
    /// Damaged distributions were reinstalled, as `name==version`.
    Repaired(Vec<String>),
    /// The environment was created (or rebuilt).
    Built,
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
    prepare(setup, Existing::Reuse, progress).map(|(env, _)| env)
}

/// [`ensure`], choosing how thoroughly an existing managed venv is treated, and saying
/// what was done.
///
/// # Errors
///
/// As for [`ensure`]; with [`Existing::Verify`] also [`EnvError::VenvDamaged`] when a venv
/// the user named (`python.venv`) is damaged and reinstalling its damaged packages did
/// not repair it (a venv in the cache is rebuilt instead).
pub fn prepare(
    setup: &PythonSetup,
    existing: Existing,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(PythonEnv, Action), EnvError> {
    let cache = match &setup.cache_dir {
        Some(dir) => dir.clone(),
        None => cache_dir()?,
    };
    let requirements = Requirements::load(setup.requirements.as_deref())?;
    let bridge_path = unpack_bridge(&cache)?;
    let (python, venv, action) = match &setup.executable {
        PythonExecutable::Auto => {
            let plan = venv_plan(&cache, setup, &requirements, existing)?;
            let (python, action) = venv::ensure_venv(&plan, progress)?;
            (python, Some(plan.dir), action)
        }
        PythonExecutable::Path(path) => {
            check_given_interpreter(path, setup.require_dspy, &cache, &requirements)?;
            (path.clone(), enclosing_venv(path), Action::Reused)
        }
    };
    let env = PythonEnv {
        python,
        bridge_path,
        venv,
        requirements_hash: requirements.hash,
    };
    Ok((env, action))
}

/// Checks that the files installed in `env`'s venv are all there with their recorded
/// sizes (a quick check: it does not hash them, see [`Existing::Verify`]). For telling a
/// damaged venv apart from other reasons workers fail to start. An interpreter without a
/// venv passes.
///
/// # Errors
///
/// [`EnvError::VenvDamaged`] naming the first damaged files and saying to run `dspex setup`.
pub fn check_venv_files(env: &PythonEnv) -> Result<(), EnvError> {
    let Some(venv) = &env.venv else {
        return Ok(());
    };
    match record::check(venv, false) {
        Ok((_, None)) => Ok(()),
        Ok((_, Some(damage))) => Err(EnvError::VenvDamaged {
            venv: venv.clone(),
            summary: damage.summary(),
            distributions: damage.distributions,
        }),
        Err(e) => Err(EnvError::VenvDamaged {
            venv: venv.clone(),
            summary: format!("its packages cannot be listed ({e})"),
            distributions: Vec::new(),
        }),
    }
}

/// The version of the Python at `python` (`"3.11.7"`), which must be 3.9 or newer.
///
/// # Errors
///
/// [`EnvError::InterpreterNotFound`], [`EnvError::InterpreterFailed`] or
/// [`EnvError::PythonTooOld`], each saying what to change.
pub fn python_version(python: &Path) -> Result<String, EnvError> {
    interpreter::check_interpreter(python).map(|v| v.to_string())
}

/// The Python that creates the managed venv (`DSPEX_BOOTSTRAP_PYTHON`, else `python3`,
/// else `python` from `PATH`) and its version.
///
/// # Errors
///
/// [`EnvError::NoBootstrapPython`] saying what was tried.
pub fn bootstrap_python() -> Result<(PathBuf, String), EnvError> {
    interpreter::find_bootstrap(bootstrap_from_env()).map(|(path, v)| (path, v.to_string()))
}

/// `dspy.__version__` as `python` imports it.
///
/// # Errors
///
/// [`EnvError::DspyImport`] with the import's error output and how to repair it.
pub fn dspy_version(python: &Path) -> Result<String, EnvError> {
    interpreter::dspy_version(python).map_err(|tail| EnvError::DspyImport {
        python: python.to_path_buf(),
        tail,
        hint: "run `dspex setup` to repair the managed environment, or install the bridge's \
               requirements into that interpreter"
            .into(),
    })
}

/// Where DSPy's disk cache lives by default: `<cache dir>/lm-cache`, created private.
///
/// # Errors
///
/// As for [`cache_dir`], plus [`EnvError::CacheNotWritable`] / [`EnvError::UntrustedCache`]
/// when the directory cannot be created or is not private.
pub fn lm_cache_dir() -> Result<PathBuf, EnvError> {
    let cache = cache_dir()?;
    trust::private_dir(&cache)?;
    let dir = cache.join("lm-cache");
    trust::private_dir(&dir)?;
    Ok(dir)
}

fn bootstrap_from_env() -> Option<OsString> {
    env::var_os("DSPEX_BOOTSTRAP_PYTHON").filter(|v| !v.is_empty())
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
    existing: Existing,
) -> Result<venv::Plan<'a>, EnvError> {
    let venvs = cache.join("venvs");
    trust::private_dir(&venvs)?;
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
        bootstrap: bootstrap_from_env(),
        existing,
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
    match interpreter::dspy_version(python) {
        Ok(_) => Ok(()),
        Err(tail) => Err(EnvError::DspyImport {
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
        let written = trust::private_dir(&dir)
            .map_err(std::io::Error::other)
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
