//! Errors of the Python environment layer.
//!
//! Setting up Python fails in ways the user has to fix outside dspex (install Python, the venv
//! module, network access to the package index, a broken interpreter path), so every message
//! names what was tried and the command or setting that fixes it.

use std::io;
use std::path::PathBuf;

/// Why a Python environment for the workers could not be prepared.
///
/// Every variant's message says what happened and what to do about it; the CLI prints it as is
/// under the `environment` error kind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// None of `DSPEX_HOME`, `XDG_CACHE_HOME` or `HOME` is set.
    #[error(
        "cannot locate the dspex cache: none of DSPEX_HOME, XDG_CACHE_HOME or HOME is set; \
         set DSPEX_HOME to a writable directory"
    )]
    NoCacheDir,

    /// A file or directory inside the cache could not be created or written.
    #[error(
        "cannot {action} `{}`: {source}; make sure that directory is writable (the dspex cache \
         can be moved with DSPEX_HOME)",
        path.display()
    )]
    CacheNotWritable {
        /// What dspex was doing, e.g. "create directory".
        action: &'static str,
        /// The path it was doing it to.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// A cache directory that another user owns or can write to: whoever can write there
    /// can run code in every worker.
    #[error(
        "refusing to use the dspex cache directory `{}`: {problem}, so its code could be \
         replaced by someone else; fix it with `chmod go-w '{}'` (and make sure you own it), \
         or set DSPEX_HOME to a directory of your own",
        path.display(),
        path.display()
    )]
    UntrustedCache {
        /// The directory.
        path: PathBuf,
        /// Who else could write to it.
        problem: String,
    },

    /// The unpacked bridge does not match the sources embedded in dspex, and unpacking it
    /// again did not help.
    #[error(
        "the unpacked bridge `{}` does not match the one built into dspex ({detail}) and could \
         not be replaced; remove that directory and run dspex again",
        path.display()
    )]
    BridgeTampered {
        /// The unpacked bridge directory.
        path: PathBuf,
        /// The first difference found.
        detail: String,
    },

    /// Files of installed packages are missing or changed.
    #[error(
        "the python environment `{}` is damaged: {summary}; run `dspex setup` to repair it \
         (or `dspex setup --force` to rebuild it from scratch)",
        venv.display()
    )]
    VenvDamaged {
        /// The venv directory.
        venv: PathBuf,
        /// How many files are wrong, with the first few named.
        summary: String,
        /// The damaged distributions as `(name, version)`, for a targeted reinstall.
        distributions: Vec<(String, String)>,
    },

    /// The requirements file named by `python.requirements` could not be read.
    #[error(
        "cannot read the requirements file `{}` (python.requirements): {source}",
        path.display()
    )]
    Requirements {
        /// The requirements file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// No interpreter suitable for creating the managed venv was found.
    #[error(
        "no Python 3.9+ found to create the dspex environment ({tried}); install Python 3.9+ \
         (e.g. apt-get install python3 python3-venv) or set DSPEX_BOOTSTRAP_PYTHON to one"
    )]
    NoBootstrapPython {
        /// What was tried and why each candidate was rejected.
        tried: String,
    },

    /// `python.executable` names a file that does not exist.
    #[error(
        "python interpreter `{}` does not exist; fix python.executable or set \
         python.executable = \"auto\"",
        path.display()
    )]
    InterpreterNotFound {
        /// The configured interpreter.
        path: PathBuf,
    },

    /// The interpreter exists but does not run or does not behave like Python.
    #[error(
        "python interpreter `{}` does not work: {detail}; fix python.executable or set \
         python.executable = \"auto\"",
        path.display()
    )]
    InterpreterFailed {
        /// The interpreter.
        path: PathBuf,
        /// What went wrong (exit status, stderr tail, timeout).
        detail: String,
    },

    /// The interpreter is older than dspex supports.
    #[error(
        "python interpreter `{}` is Python {version}, dspex needs 3.9 or newer; point \
         python.executable at a newer Python or set python.executable = \"auto\"",
        path.display()
    )]
    PythonTooOld {
        /// The interpreter.
        path: PathBuf,
        /// Its version, e.g. "3.8.10".
        version: String,
    },

    /// The bootstrap interpreter lacks the `venv` module (or `ensurepip`, which venv needs).
    #[error(
        "`{} -m venv` is not available: {tail}; install the venv module (e.g. apt-get install \
         python3-venv) or set DSPEX_BOOTSTRAP_PYTHON to a Python that has it",
        python.display()
    )]
    VenvModuleMissing {
        /// The bootstrap interpreter.
        python: PathBuf,
        /// The end of its error output.
        tail: String,
    },

    /// `python -m venv` failed for another reason.
    #[error(
        "creating the virtual environment `{}` failed: {tail}; remove that directory and run \
         `dspex setup`",
        venv.display()
    )]
    VenvFailed {
        /// The venv directory.
        venv: PathBuf,
        /// The end of the command's output.
        tail: String,
    },

    /// `pip install -r requirements` failed.
    #[error(
        "installing the Python requirements into `{}` failed ({status}):\n{tail}\ncheck your \
         network access to the package index, then run `dspex setup`",
        venv.display()
    )]
    PipFailed {
        /// The venv directory.
        venv: PathBuf,
        /// How pip ended, e.g. "exit status: 1".
        status: String,
        /// The last lines of pip's output.
        tail: String,
    },

    /// `import dspy` failed in the interpreter the workers would use.
    #[error("`{}` cannot import dspy: {tail}; {hint}", python.display())]
    DspyImport {
        /// The interpreter.
        python: PathBuf,
        /// The end of the import's error output.
        tail: String,
        /// How to fix it for this kind of setup.
        hint: String,
    },

    /// A subprocess (venv, pip, a check) could not be started at all.
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        /// The command line that failed to start.
        program: String,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
}
