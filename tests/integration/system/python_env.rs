//! The managed Python environment against real interpreters, real venvs and real files.
//!
//! Every test owns a temporary cache and installs an empty (or deliberately broken)
//! requirements file with `require_dspy: false`, so it needs `python3` with the venv module
//! but no network; the real dspy venv is exercised by the layer-3 tests.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::Duration;

use dspex::python_env::{
    ensure, requirements_hash, unpack_bridge, EnvError, Progress, PythonEnv, PythonExecutable,
    PythonSetup,
};
use tempfile::TempDir;

use crate::common::site_packages;

/// Everything `ensure` reported, by kind.
#[derive(Debug, Default)]
struct Recorded {
    steps: Vec<String>,
    lines: Vec<String>,
    done: Vec<String>,
}

impl Recorded {
    fn record(&mut self, progress: Progress<'_>) {
        match progress {
            Progress::Step(s) => self.steps.push(s.to_owned()),
            Progress::Line(l) => self.lines.push(l.to_owned()),
            Progress::Done(d) => self.done.push(d.to_owned()),
        }
    }

    fn sink(&mut self) -> impl FnMut(Progress<'_>) + '_ {
        |progress| self.record(progress)
    }

    fn count_steps(&self, needle: &str) -> usize {
        self.steps.iter().filter(|s| s.contains(needle)).count()
    }

    fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.lines.is_empty() && self.done.is_empty()
    }
}

const CREATING: &str = "creating a virtual environment";

/// A temporary cache plus a requirements file with `requirements` in it.
struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    fn new(requirements: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("requirements.txt"), requirements).expect("requirements");
        Self { dir }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn requirements(&self) -> PathBuf {
        self.dir.path().join("requirements.txt")
    }

    fn auto(&self) -> PythonSetup {
        PythonSetup {
            executable: PythonExecutable::Auto,
            venv: None,
            requirements: Some(self.requirements()),
            require_dspy: false,
            cache_dir: Some(self.cache()),
        }
    }

    fn ensure(&self, setup: &PythonSetup) -> (Result<PythonEnv, EnvError>, Recorded) {
        let mut recorded = Recorded::default();
        let result = ensure(setup, &mut recorded.sink());
        (result, recorded)
    }
}

/// `sys.prefix` as reported by `python`, proving the interpreter runs inside its venv.
fn sys_prefix(python: &Path) -> PathBuf {
    let output = Command::new(python)
        .args(["-c", "import sys; print(sys.prefix)"])
        .output()
        .expect("run venv python");
    assert!(output.status.success(), "{output:?}");
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a.canonicalize().unwrap() == b.canonicalize().unwrap()
}

#[test]
fn auto_creates_the_venv_once_and_reuses_it() {
    let sandbox = Sandbox::new("");
    let setup = sandbox.auto();

    let (first, recorded) = sandbox.ensure(&setup);
    let first = first.expect("first ensure");
    let hash = requirements_hash("");
    assert_eq!(first.requirements_hash, hash);
    let venv = sandbox.cache().join("venvs").join(&hash);
    assert_eq!(first.venv.as_deref(), Some(venv.as_path()));
    assert!(same_dir(&sys_prefix(&first.python), &venv));
    assert!(venv.join("dspex-ready.json").is_file());
    assert_eq!(recorded.count_steps(CREATING), 1, "{recorded:?}");
    assert_eq!(recorded.done.len(), 1, "{recorded:?}");
    let created = fs::metadata(venv.join("pyvenv.cfg"))
        .unwrap()
        .modified()
        .unwrap();

    let (second, recorded) = sandbox.ensure(&setup);
    assert_eq!(second.expect("second ensure"), first);
    assert!(recorded.is_empty(), "reuse reported work: {recorded:?}");
    let after = fs::metadata(venv.join("pyvenv.cfg"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(created, after, "the venv was re-created");
}

#[test]
fn concurrent_first_use_builds_one_venv() {
    let sandbox = Arc::new(Sandbox::new(""));
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let sandbox = Arc::clone(&sandbox);
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                sandbox.ensure(&sandbox.auto())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    let creations: usize = results.iter().map(|(_, r)| r.count_steps(CREATING)).sum();
    assert_eq!(creations, 1, "{results:?}");
    let envs: Vec<PythonEnv> = results
        .into_iter()
        .map(|(result, _)| result.expect("every caller succeeds"))
        .collect();
    assert!(envs.iter().all(|env| *env == envs[0]));
    let venvs: Vec<_> = fs::read_dir(sandbox.cache().join("venvs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(venvs.len(), 1, "{venvs:?}");
    assert!(same_dir(&sys_prefix(&envs[0].python), &venvs[0]));
}

#[test]
fn creation_waits_for_the_lock_held_by_another_process() {
    let sandbox = Sandbox::new("");
    let venvs = sandbox.cache().join("venvs");
    let hash = requirements_hash("");
    fs::create_dir_all(&venvs).unwrap();
    // Another process (as a second CLI would) holds the creation lock until told to let go.
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import fcntl, sys\n\
             f = open(sys.argv[1], 'a')\n\
             fcntl.flock(f, fcntl.LOCK_EX)\n\
             print('locked', flush=True)\n\
             sys.stdin.read()\n",
        ])
        .arg(venvs.join(format!("{hash}.lock")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start lock holder");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");

    let (waiting_tx, waiting_rx) = mpsc::channel();
    let setup = sandbox.auto();
    let caller = thread::spawn(move || {
        let mut recorded = Recorded::default();
        let result = ensure(&setup, &mut |progress| {
            if let Progress::Step(step) = progress {
                if step.contains("waiting for another dspex process") {
                    let _ = waiting_tx.send(());
                }
            }
            recorded.record(progress);
        });
        (result, recorded)
    });
    waiting_rx
        .recv_timeout(Duration::from_secs(300))
        .expect("ensure reports that it waits for the lock");
    assert!(
        !venvs.join(&hash).exists(),
        "the venv was touched while another process held the lock"
    );
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());

    let (result, recorded) = caller.join().unwrap();
    let env = result.expect("created after the lock was released");
    assert_eq!(recorded.count_steps(CREATING), 1, "{recorded:?}");
    assert!(same_dir(&sys_prefix(&env.python), &venvs.join(&hash)));
}

#[test]
fn venv_without_ready_marker_is_rebuilt() {
    let sandbox = Sandbox::new("");
    // What a process killed during `pip install` leaves: a venv-looking directory, no marker.
    let venv = sandbox.cache().join("venvs").join(requirements_hash(""));
    fs::create_dir_all(venv.join("bin")).unwrap();
    fs::write(venv.join("bin").join("python"), "not an interpreter").unwrap();
    fs::write(venv.join("half-installed"), "").unwrap();

    let (env, recorded) = sandbox.ensure(&sandbox.auto());
    let env = env.expect("rebuilt");

    assert_eq!(
        recorded.count_steps("removing the incomplete environment"),
        1
    );
    assert_eq!(recorded.count_steps(CREATING), 1, "{recorded:?}");
    assert!(!venv.join("half-installed").exists());
    assert!(venv.join("dspex-ready.json").is_file());
    assert!(same_dir(&sys_prefix(&env.python), &venv));
}

#[test]
fn user_named_venv_is_created_there_and_reused() {
    let sandbox = Sandbox::new("");
    let venv = sandbox.dir.path().join("my-venv");
    let setup = PythonSetup {
        venv: Some(venv.clone()),
        ..sandbox.auto()
    };

    let (first, recorded) = sandbox.ensure(&setup);
    let first = first.expect("created");
    assert_eq!(first.venv.as_deref(), Some(venv.as_path()));
    assert_eq!(first.python, venv.join("bin").join("python"));
    assert!(same_dir(&sys_prefix(&first.python), &venv));
    assert_eq!(recorded.count_steps(CREATING), 1);
    assert!(!sandbox
        .cache()
        .join("venvs")
        .join(requirements_hash(""))
        .exists());

    let (second, recorded) = sandbox.ensure(&setup);
    assert_eq!(second.expect("reused"), first);
    assert!(recorded.is_empty(), "{recorded:?}");
}

#[test]
fn failed_pip_install_reports_its_output_and_leaves_no_marker() {
    let sandbox = Sandbox::new("this is not a valid requirement !!\n");

    let (result, recorded) = sandbox.ensure(&sandbox.auto());

    let err = result.expect_err("pip must fail");
    assert!(matches!(err, EnvError::PipFailed { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("Invalid requirement"), "{message}");
    assert!(message.contains("check your network access"), "{message}");
    assert!(message.contains("dspex setup"), "{message}");
    assert!(
        recorded
            .lines
            .iter()
            .any(|l| l.contains("Invalid requirement")),
        "pip's output was not streamed: {recorded:?}"
    );
    let venv = sandbox
        .cache()
        .join("venvs")
        .join(requirements_hash("this is not a valid requirement !!\n"));
    assert!(!venv.join("dspex-ready.json").exists());
}

#[test]
fn python_without_dspy_fails_with_an_install_hint() {
    let sandbox = Sandbox::new("");
    let (env, _) = sandbox.ensure(&sandbox.auto());
    let env = env.expect("dspy-less venv");

    // Auto: the venv is installed, only the dspy check fails, so nothing is rebuilt.
    let (auto, recorded) = sandbox.ensure(&PythonSetup {
        require_dspy: true,
        ..sandbox.auto()
    });
    let err = auto.expect_err("no dspy in the managed venv");
    assert!(matches!(err, EnvError::DspyImport { .. }), "{err:?}");
    assert!(err
        .to_string()
        .contains("make sure the requirements provide dspy"));
    assert_eq!(recorded.count_steps(CREATING), 0, "{recorded:?}");
    let venv = env.venv.clone().expect("managed venv");
    assert!(
        !venv.join("dspex-ready.json").exists(),
        "a venv without dspy stays marked ready, so `dspex setup` could not repair it"
    );

    // Path: the configured interpreter is named, with the command that fixes it.
    let setup = PythonSetup {
        executable: PythonExecutable::Path(env.python.clone()),
        require_dspy: true,
        ..sandbox.auto()
    };
    let err = sandbox.ensure(&setup).0.expect_err("no dspy");
    let message = err.to_string();
    let python = env.python.display();
    assert!(
        message.starts_with(&format!("`{python}` cannot import dspy: ")),
        "{message}"
    );
    assert!(message.contains("No module named 'dspy'"), "{message}");
    assert!(
        message.contains(&format!(
            "install it with `{python} -m pip install -r {}` or set python.executable = \"auto\"",
            sandbox.requirements().display()
        )),
        "{message}"
    );

    // Without require_dspy the same interpreter is accepted as is.
    let (accepted, recorded) = sandbox.ensure(&PythonSetup {
        require_dspy: false,
        ..setup
    });
    let accepted = accepted.expect("runs without dspy");
    assert_eq!(accepted.python, env.python);
    assert_eq!(accepted.venv, env.venv);
    assert!(recorded.is_empty());
}

#[test]
fn path_to_missing_interpreter_names_the_path() {
    let sandbox = Sandbox::new("");
    let missing = sandbox.dir.path().join("no-such-python");
    let setup = PythonSetup {
        executable: PythonExecutable::Path(missing.clone()),
        ..sandbox.auto()
    };

    let err = sandbox.ensure(&setup).0.expect_err("missing interpreter");

    assert!(
        matches!(err, EnvError::InterpreterNotFound { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(message.contains("python.executable"), "{message}");
}

#[test]
fn cache_that_cannot_be_created_is_reported_with_its_path() {
    let sandbox = Sandbox::new("");
    // A regular file where the cache directory should be: no directory can be made under it.
    let blocker = sandbox.dir.path().join("blocker");
    fs::write(&blocker, "").unwrap();
    let cache = blocker.join("cache");
    let setup = PythonSetup {
        cache_dir: Some(cache.clone()),
        ..sandbox.auto()
    };

    let err = sandbox.ensure(&setup).0.expect_err("unusable cache");

    assert!(matches!(err, EnvError::CacheNotWritable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&cache.display().to_string()), "{message}");
    assert!(message.contains("DSPEX_HOME"), "{message}");
}

#[test]
fn unreadable_requirements_file_names_the_file() {
    let sandbox = Sandbox::new("");
    let missing = sandbox.dir.path().join("nope.txt");
    let setup = PythonSetup {
        requirements: Some(missing.clone()),
        ..sandbox.auto()
    };

    let err = sandbox
        .ensure(&setup)
        .0
        .expect_err("unreadable requirements");

    assert!(matches!(err, EnvError::Requirements { .. }), "{err:?}");
    assert!(err.to_string().contains(&missing.display().to_string()));
}

/// Every file under `dir`, relative, skipping byte-code caches.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().unwrap() != "__pycache__" {
                    walk(root, &path, out);
                }
            } else if path.extension() != Some(OsStr::new("pyc")) {
                let contents = fs::read(&path).unwrap();
                out.push((path.strip_prefix(root).unwrap().to_path_buf(), contents));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn unpack_bridge_is_idempotent_and_content_addressed() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();

    let first = unpack_bridge(a.path()).expect("unpack");
    let again = unpack_bridge(a.path()).expect("unpack again");
    let elsewhere = unpack_bridge(b.path()).expect("unpack into another cache");

    assert_eq!(first, again);
    assert_eq!(first.parent(), Some(a.path().join("bridge").as_path()));
    let name = first.file_name().unwrap().to_str().unwrap();
    assert_eq!(name.len(), 16);
    assert!(name.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(elsewhere.file_name(), first.file_name());
    // The unpacked package is the checkout's, file for file (a mismatch here after editing
    // the bridge means the binary embeds stale sources).
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/dspex_bridge");
    let unpacked = tree(&first.join("dspex_bridge"));
    let expected = tree(&sources);
    let names = |t: &[(PathBuf, Vec<u8>)]| t.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(names(&unpacked), names(&expected));
    for ((path, got), (_, want)) in unpacked.iter().zip(&expected) {
        assert!(got == want, "{} differs from the checkout", path.display());
    }
}

#[test]
fn concurrent_unpack_agrees_and_leaves_no_staging_dirs() {
    let cache = tempfile::tempdir().unwrap();
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let cache = cache.path().to_path_buf();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                unpack_bridge(&cache)
            })
        })
        .collect();
    let paths: Vec<PathBuf> = handles
        .into_iter()
        .map(|h| h.join().unwrap().expect("unpack"))
        .collect();

    assert!(paths.iter().all(|p| *p == paths[0]));
    let entries: Vec<_> = fs::read_dir(cache.path().join("bridge"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries, vec![paths[0].clone()]);
}

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn cache_directories_are_created_private() {
    let sandbox = Sandbox::new("");
    let (env, _) = sandbox.ensure(&sandbox.auto());
    let env = env.expect("ensure");
    let cache = sandbox.cache();
    for dir in [
        cache.clone(),
        cache.join("bridge"),
        env.bridge_path.clone(),
        cache.join("venvs"),
        env.venv.clone().unwrap(),
    ] {
        assert_eq!(mode(&dir), 0o700, "{} is not private", dir.display());
    }
}

#[test]
fn a_cache_others_can_write_to_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new("");
    let cache = sandbox.cache();
    fs::create_dir_all(&cache).unwrap();
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o777)).unwrap();

    let err = sandbox
        .ensure(&sandbox.auto())
        .0
        .expect_err("world-writable cache");

    assert!(matches!(err, EnvError::UntrustedCache { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&cache.display().to_string()), "{message}");
    assert!(
        message.contains("other users can write to it (mode 0777)"),
        "{message}"
    );
    assert!(message.contains("chmod go-w"), "{message}");
    assert!(!cache.join("venvs").exists(), "nothing was built in it");

    // A private cache that belongs to someone else is refused too (only root can make one).
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o700)).unwrap();
    if unsafe { libc::geteuid() } == 0 {
        let path = std::ffi::CString::new(cache.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::chown(path.as_ptr(), 65534, 65534) }, 0);
        let err = sandbox
            .ensure(&sandbox.auto())
            .0
            .expect_err("foreign cache");
        assert!(
            err.to_string()
                .contains("belongs to another user (uid 65534"),
            "{err}"
        );
    }
}

#[test]
fn a_tampered_bridge_is_replaced_by_a_fresh_copy() {
    let cache = tempfile::tempdir().unwrap();
    let bridge = unpack_bridge(cache.path()).expect("unpack");
    let worker = bridge.join("dspex_bridge/worker.py");
    fs::write(&worker, "raise SystemExit('tampered')\n").unwrap();
    fs::write(bridge.join("dspy.py"), "print('planted')\n").unwrap();

    let again = unpack_bridge(cache.path()).expect("unpack over the tampered copy");

    assert_eq!(again, bridge);
    assert!(
        !bridge.join("dspy.py").exists(),
        "the planted module is gone"
    );
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/dspex_bridge");
    assert_eq!(
        fs::read(&worker).unwrap(),
        fs::read(sources.join("worker.py")).unwrap()
    );
    let entries: Vec<_> = fs::read_dir(cache.path().join("bridge"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries, vec![bridge], "no staging or discarded copies left");
}

#[test]
fn verify_finds_a_deleted_package_file_and_rebuilds_the_venv() {
    use dspex::python_env::{check_venv_files, prepare, Action, Existing};
    let sandbox = Sandbox::new("");
    let (env, _) = sandbox.ensure(&sandbox.auto());
    let env = env.expect("ensure");
    check_venv_files(&env).expect("a fresh venv is intact");
    let mut recorded = Recorded::default();
    let (_, action) = prepare(&sandbox.auto(), Existing::Verify, &mut recorded.sink()).unwrap();
    assert!(
        matches!(action, Action::Verified { files, .. } if files > 100),
        "{action:?}"
    );

    // A file pip installed (inside the `pip` package, present in any venv).
    let damaged = site_packages(env.venv.as_ref().unwrap()).join("pip/__init__.py");
    fs::remove_file(&damaged).unwrap();
    // The marker still says ready, so a plain start reuses it; the quick check finds it.
    let err = check_venv_files(&env).expect_err("a file is missing");
    let message = err.to_string();
    assert!(matches!(err, EnvError::VenvDamaged { .. }), "{err:?}");
    assert!(message.contains("pip/__init__.py is missing"), "{message}");
    assert!(message.contains("run `dspex setup`"), "{message}");

    let mut recorded = Recorded::default();
    let (repaired, action) =
        prepare(&sandbox.auto(), Existing::Verify, &mut recorded.sink()).expect("repaired");
    // pip cannot reinstall itself, so the cache's venv is rebuilt from scratch.
    assert_eq!(action, Action::Built);
    assert_eq!(recorded.count_steps("to rebuild it"), 1, "{recorded:?}");
    assert!(damaged.is_file());
    check_venv_files(&repaired).expect("intact after the repair");
}

#[test]
fn rebuild_recreates_an_intact_venv() {
    use dspex::python_env::{prepare, Action, Existing};
    let sandbox = Sandbox::new("");
    let env = sandbox.ensure(&sandbox.auto()).0.expect("ensure");
    let venv = env.venv.clone().unwrap();
    fs::write(venv.join("left-over"), "").unwrap();

    let mut recorded = Recorded::default();
    let (rebuilt, action) =
        prepare(&sandbox.auto(), Existing::Rebuild, &mut recorded.sink()).expect("rebuilt");

    assert_eq!(action, Action::Built);
    assert_eq!(rebuilt, env);
    assert!(
        !venv.join("left-over").exists(),
        "the old venv was not removed"
    );
    assert!(venv.join("dspex-ready.json").is_file());
    assert!(same_dir(&sys_prefix(&rebuilt.python), &venv));
}
