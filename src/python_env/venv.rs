//! The managed virtual environment: created once, under a file lock, and reused afterwards.
//!
//! A venv is only trusted once its ready marker exists, and the marker is written after the
//! install finished, so a process killed half-way through `pip install` leaves a directory that
//! the next caller rebuilds instead of using. Readers of a finished venv take no lock and start
//! no process, which keeps the common path (every `dspex run`, every test) cheap.
//!
//! The marker says the install finished, not that it is still intact. `dspex setup` checks
//! the installed files against pip's records and repairs a damaged venv by reinstalling
//! the damaged packages (quick, and it keeps everything else), falling back to a rebuild
//! from scratch for a venv in the cache.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};

use super::interpreter::{self, run_streaming, run_with_timeout, tail, TAIL_LINES};
use super::record::{self, Damage};
use super::{trust, Action, EnvError, Existing, Progress, Requirements};

/// Written last, inside the venv, once the requirements are installed.
const MARKER: &str = "dspex-ready.json";
/// The requirements the venv was installed from, kept for `dspex doctor` and for humans.
const REQUIREMENTS_COPY: &str = "dspex-requirements.txt";
/// `python -m venv` also bootstraps pip; a generous bound against a hung interpreter.
const VENV_TIMEOUT: Duration = Duration::from_secs(600);

/// What the ready marker records.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    /// Hash of the requirements that were installed.
    requirements_hash: String,
    /// Whether `import dspy` was seen to work in this venv.
    dspy_import_checked: bool,
    /// The dspex version that built the venv, for diagnostics.
    dspex_version: String,
}

/// Where a venv lives and what it must provide.
pub(super) struct Plan<'a> {
    /// The venv directory.
    pub(super) dir: PathBuf,
    /// The lock file serialising its creation across threads and processes.
    pub(super) lock: PathBuf,
    /// The cache owns `dir`, so an incomplete one may be deleted and rebuilt. A venv the user
    /// named (`python.venv`) is never deleted, only installed into.
    pub(super) disposable: bool,
    pub(super) requirements: &'a Requirements,
    pub(super) require_dspy: bool,
    /// `DSPEX_BOOTSTRAP_PYTHON`, when set.
    pub(super) bootstrap: Option<OsString>,
    /// What to do with a venv that is already there.
    pub(super) existing: Existing,
}

/// The interpreter inside a venv.
pub(super) fn python_in(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

/// Returns the venv's interpreter, creating, completing, checking or rebuilding the venv
/// first as `plan.existing` asks, and what was done.
pub(super) fn ensure_venv(
    plan: &Plan<'_>,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(PathBuf, Action), EnvError> {
    let python = python_in(&plan.dir);
    if plan.disposable && plan.dir.exists() {
        trust::check_private(&plan.dir)?;
    }
    if plan.existing == Existing::Reuse && is_ready(plan, &python) {
        log::debug!("reusing python environment {}", plan.dir.display());
        return Ok((python, Action::Reused));
    }
    if plan.existing == Existing::Verify && is_ready(plan, &python) {
        if let Some(checked) = intact(plan, progress) {
            return Ok((python, checked));
        }
    }
    let _lock = lock(plan, progress)?;
    let action = match plan.existing {
        Existing::Rebuild => {
            build(plan, &python, progress, true)?;
            Action::Built
        }
        _ if is_ready(plan, &python) => match plan.existing {
            // Someone else finished it while this caller waited for the lock.
            Existing::Reuse => Action::Reused,
            _ => match intact(plan, progress) {
                Some(checked) => checked,
                None => repair(plan, &python, progress)?,
            },
        },
        _ => match read_marker(&plan.dir) {
            Some(marker)
                if marker.requirements_hash == plan.requirements.hash && python.exists() =>
            {
                // Installed earlier by a caller that did not need dspy; only the check is
                // missing.
                verify_dspy(plan, &python, progress)?;
                Action::Reused
            }
            _ => {
                build(plan, &python, progress, false)?;
                Action::Built
            }
        },
    };
    if action != Action::Reused {
        let done = format!("python environment ready: {}", plan.dir.display());
        progress(Progress::Done(&done));
    }
    Ok((python, action))
    // `_lock` is dropped here; closing the file releases the lock.
}

/// `Some(Verified)` when every installed file matches pip's records.
fn intact(plan: &Plan<'_>, progress: &mut dyn FnMut(Progress<'_>)) -> Option<Action> {
    let step = format!("checking the installed files of {}", plan.dir.display());
    progress(Progress::Step(&step));
    match record::check(&plan.dir, true) {
        Ok((checked, None)) => Some(Action::Verified {
            distributions: checked.distributions,
            files: checked.files,
        }),
        Ok((_, Some(damage))) => {
            log::warn!(
                "python environment {} is damaged: {}",
                plan.dir.display(),
                damage.summary()
            );
            None
        }
        Err(e) => {
            log::warn!("cannot list the packages of {}: {e}", plan.dir.display());
            None
        }
    }
}

/// Reinstalls the damaged packages of a ready venv; rebuilds a cache venv when that is not
/// enough. Called with the lock held.
fn repair(
    plan: &Plan<'_>,
    python: &Path,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Action, EnvError> {
    let damage = match record::check(&plan.dir, true) {
        Ok((_, damage)) => damage,
        Err(_) => None,
    };
    // Without the marker an interrupted repair is never mistaken for a working venv.
    let marker = plan.dir.join(MARKER);
    ignore_missing(&marker, fs::remove_file(&marker))?;
    let reinstalled = match &damage {
        Some(damage) => reinstall(plan, python, damage, progress),
        None => Err(None),
    };
    match reinstalled {
        Ok(specs) => {
            write_marker(plan, false)?;
            if plan.require_dspy {
                verify_dspy(plan, python, progress)?;
            }
            Ok(Action::Repaired(specs))
        }
        Err(why) if plan.disposable => {
            if let Some(why) = why {
                log::warn!("reinstalling the damaged packages did not help ({why}); rebuilding");
            }
            build(plan, python, progress, true)?;
            Ok(Action::Built)
        }
        Err(why) => {
            let damage = damage.unwrap_or(Damage {
                named: vec![],
                count: 0,
                distributions: vec![],
            });
            Err(EnvError::VenvDamaged {
                venv: plan.dir.clone(),
                summary: why.unwrap_or_else(|| damage.summary()),
                distributions: damage.distributions,
            })
        }
    }
}

/// `pip install --force-reinstall --no-deps name==version` for each damaged distribution,
/// then checks again. `Err(Some(why))` when that did not repair the venv, `Err(None)` when
/// it could not be tried (pip itself is damaged).
fn reinstall(
    plan: &Plan<'_>,
    python: &Path,
    damage: &Damage,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<String>, Option<String>> {
    if damage.distributions.is_empty()
        || damage
            .distributions
            .iter()
            .any(|(name, version)| name == "pip" || version.is_empty())
    {
        return Err(None);
    }
    let specs: Vec<String> = damage
        .distributions
        .iter()
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    let step = format!(
        "repairing {}: {}; reinstalling {}",
        plan.dir.display(),
        damage.summary(),
        specs.join(" ")
    );
    log::info!("{step}");
    progress(Progress::Step(&step));
    let mut cmd = Command::new(python);
    cmd.args(PIP_INSTALL)
        .args(["--force-reinstall", "--no-deps"])
        .args(&specs);
    pip(&mut cmd, python, &plan.dir, progress).map_err(|e| Some(e.to_string()))?;
    match record::check(&plan.dir, true) {
        Ok((_, None)) => Ok(specs),
        Ok((_, Some(left))) => Err(Some(left.summary())),
        Err(e) => Err(Some(e.to_string())),
    }
}

fn is_ready(plan: &Plan<'_>, python: &Path) -> bool {
    read_marker(&plan.dir).is_some_and(|marker| {
        marker.requirements_hash == plan.requirements.hash
            && (marker.dspy_import_checked || !plan.require_dspy)
    }) && python.exists()
}

fn read_marker(venv: &Path) -> Option<Marker> {
    let text = fs::read_to_string(venv.join(MARKER)).ok()?;
    // An unreadable marker is treated as absent: the venv gets rebuilt, which is always safe.
    serde_json::from_str(&text).ok()
}

fn write_marker(plan: &Plan<'_>, dspy_import_checked: bool) -> Result<(), EnvError> {
    let marker = Marker {
        requirements_hash: plan.requirements.hash.clone(),
        dspy_import_checked,
        dspex_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let text = serde_json::to_string_pretty(&marker).expect("marker serialises");
    let path = plan.dir.join(MARKER);
    let staging = plan.dir.join(format!("{MARKER}.tmp"));
    // Rename so a reader never sees a half-written marker.
    fs::write(&staging, text)
        .and_then(|()| fs::rename(&staging, &path))
        .map_err(|source| EnvError::CacheNotWritable {
            action: "write",
            path,
            source,
        })
}

/// Takes the creation lock, saying so when another process holds it.
fn lock(plan: &Plan<'_>, progress: &mut dyn FnMut(Progress<'_>)) -> Result<File, EnvError> {
    let not_writable = |action| {
        let path = plan.lock.clone();
        move |source| EnvError::CacheNotWritable {
            action,
            path,
            source,
        }
    };
    if let Some(parent) = plan.lock.parent() {
        fs::create_dir_all(parent).map_err(|source| EnvError::CacheNotWritable {
            action: "create directory",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&plan.lock)
        .map_err(not_writable("open lock file"))?;
    if !FileExt::try_lock_exclusive(&file).map_err(not_writable("lock"))? {
        let waiting = format!(
            "waiting for another dspex process to finish setting up {}",
            plan.dir.display()
        );
        log::info!("{waiting}");
        progress(Progress::Step(&waiting));
        FileExt::lock_exclusive(&file).map_err(not_writable("lock"))?;
    }
    Ok(file)
}

/// Creates the venv (or completes a user-named one) and installs the requirements.
/// `again`: an existing venv is rebuilt on purpose, not because it is incomplete (a
/// user-named one gets its requirements reinstalled).
fn build(
    plan: &Plan<'_>,
    python: &Path,
    progress: &mut dyn FnMut(Progress<'_>),
    again: bool,
) -> Result<(), EnvError> {
    let dir = &plan.dir;
    // A stale marker must not outlive the install it described: if this one is interrupted, a
    // later caller with the old requirements would otherwise trust a half-upgraded venv.
    let marker = dir.join(MARKER);
    ignore_missing(&marker, fs::remove_file(&marker))?;
    if plan.disposable && dir.exists() {
        let step = if again {
            format!("removing the environment {} to rebuild it", dir.display())
        } else {
            format!("removing the incomplete environment {}", dir.display())
        };
        log::info!("{step}");
        progress(Progress::Step(&step));
        ignore_missing(dir, fs::remove_dir_all(dir))?;
    }
    if !python.exists() {
        let (bootstrap, _) = interpreter::find_bootstrap(plan.bootstrap.clone())?;
        let step = format!(
            "creating a virtual environment at {} with {}",
            dir.display(),
            bootstrap.display()
        );
        log::info!("{step}");
        progress(Progress::Step(&step));
        create_venv(&bootstrap, dir)?;
        if plan.disposable {
            // `python -m venv` follows the umask; the cache's own directory must be private.
            let private = std::os::unix::fs::PermissionsExt::from_mode(0o700);
            fs::set_permissions(dir, private).map_err(|source| EnvError::CacheNotWritable {
                action: "make private",
                path: dir.clone(),
                source,
            })?;
        }
    }
    let copy = dir.join(REQUIREMENTS_COPY);
    fs::write(&copy, &plan.requirements.text).map_err(|source| EnvError::CacheNotWritable {
        action: "write",
        path: copy.clone(),
        source,
    })?;
    // A user's file is installed from where it is, so relative `-r`/`-e` lines inside it work.
    let requirements_file = plan.requirements.file.as_deref().unwrap_or(&copy);
    let step = format!(
        "installing Python requirements from {} (this can take a few minutes)",
        requirements_file.display()
    );
    log::info!("{step}");
    progress(Progress::Step(&step));
    let mut cmd = Command::new(python);
    cmd.args(PIP_INSTALL);
    if again && !plan.disposable {
        cmd.arg("--force-reinstall");
    }
    cmd.arg("-r").arg(requirements_file);
    pip(&mut cmd, python, dir, progress)?;
    write_marker(plan, false)?;
    if plan.require_dspy {
        verify_dspy(plan, python, progress)?;
    }
    Ok(())
}

/// The result of removing `path`, with "already gone" counted as success.
fn ignore_missing(path: &Path, removed: io::Result<()>) -> Result<(), EnvError> {
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EnvError::CacheNotWritable {
            action: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn create_venv(bootstrap: &Path, dir: &Path) -> Result<(), EnvError> {
    let mut cmd = Command::new(bootstrap);
    cmd.args(["-m", "venv"]).arg(dir);
    let output = run_with_timeout(&mut cmd, VENV_TIMEOUT).map_err(|source| EnvError::Spawn {
        program: format!("{} -m venv {}", bootstrap.display(), dir.display()),
        source,
    })?;
    let Some(output) = output else {
        return Err(EnvError::VenvFailed {
            venv: dir.to_path_buf(),
            tail: format!("it did not finish within {}s", VENV_TIMEOUT.as_secs()),
        });
    };
    if output.status.success() {
        return Ok(());
    }
    // Debian's message about missing ensurepip goes to stdout, tracebacks to stderr.
    let combined = format!("{}\n{}", output.stdout, output.stderr);
    let last = tail(&combined, TAIL_LINES);
    if venv_module_missing(&combined) {
        Err(EnvError::VenvModuleMissing {
            python: bootstrap.to_path_buf(),
            tail: last,
        })
    } else {
        Err(EnvError::VenvFailed {
            venv: dir.to_path_buf(),
            tail: format!("{} ({})", last, output.status),
        })
    }
}

/// Whether `python -m venv` failed because the module (or the ensurepip it needs) is absent,
/// as on Debian/Ubuntu without `python3-venv`.
fn venv_module_missing(output: &str) -> bool {
    output.contains("ensurepip is not available")
        || output.contains("No module named venv")
        || output.contains("No module named 'venv'")
        || output.contains("No module named ensurepip")
        || output.contains("No module named 'ensurepip'")
}

/// `pip install` and the flags every install uses.
const PIP_INSTALL: &[&str] = &[
    "-m",
    "pip",
    "install",
    "--disable-pip-version-check",
    "--no-input",
    "--progress-bar",
    "off",
];

/// Runs a pip command, streaming its output as progress.
fn pip(
    cmd: &mut Command,
    python: &Path,
    venv: &Path,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(), EnvError> {
    // pip's log lines should reach the user as they happen, not when a buffer fills.
    cmd.env("PYTHONUNBUFFERED", "1");
    let (status, last) = run_streaming(cmd, &mut |line| {
        log::debug!("pip: {line}");
        progress(Progress::Line(line));
    })
    .map_err(|source| EnvError::Spawn {
        program: format!("{} -m pip install", python.display()),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(EnvError::PipFailed {
            venv: venv.to_path_buf(),
            status: status.to_string(),
            tail: last,
        })
    }
}

fn verify_dspy(
    plan: &Plan<'_>,
    python: &Path,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(), EnvError> {
    progress(Progress::Step("checking that dspy imports"));
    if let Err(tail) = interpreter::dspy_version(python) {
        // Without a marker the next `dspex setup` installs again instead of re-running this
        // check forever, which is what fixes a damaged install.
        let marker = plan.dir.join(MARKER);
        ignore_missing(&marker, fs::remove_file(&marker))?;
        return Err(EnvError::DspyImport {
            python: python.to_path_buf(),
            tail,
            hint: format!(
                "the environment {} was installed from {} but dspy does not import; make sure \
                 the requirements provide dspy, then run `dspex setup` to install it again",
                plan.dir.display(),
                plan.requirements.describe()
            ),
        });
    }
    write_marker(plan, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_missing_ensurepip_counts_as_missing_venv_module() {
        let debian = "The virtual environment was not created successfully because ensurepip \
                      is not available.  On Debian/Ubuntu systems, you need to install the \
                      python3-venv package";
        assert!(venv_module_missing(debian));
        assert!(venv_module_missing(
            "/usr/bin/python3: No module named venv"
        ));
        assert!(!venv_module_missing("Error: [Errno 13] Permission denied"));
    }

    #[test]
    fn marker_round_trips_through_json() {
        let marker = Marker {
            requirements_hash: "0123456789abcdef".into(),
            dspy_import_checked: true,
            dspex_version: "0.1.0".into(),
        };
        let text = serde_json::to_string(&marker).unwrap();
        let back: Marker = serde_json::from_str(&text).unwrap();
        assert_eq!(back.requirements_hash, "0123456789abcdef");
        assert!(back.dspy_import_checked);
    }
}
