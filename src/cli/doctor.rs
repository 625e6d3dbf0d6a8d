//! `dspex doctor`: find out why dspex does not work here, and how to fix it.
//!
//! Each check depends on the ones before it (no config, no interpreter; no interpreter,
//! no venv; ...), so a failure skips the checks it makes meaningless instead of piling
//! up follow-on errors, and the first `FAIL` line is the thing to fix.

use std::fmt;
use std::io::Write;

use clap::Args;
use dspex::config::{Config, PythonExecutable};
use dspex::python_env::{self, EnvError, PythonEnv};
use dspex::{ModuleKind, Signature, System};
use serde_json::json;

use super::{python, CliError, ConfigArgs, Outcome};

pub const HELP: &str = "\
Examples:
  dspex doctor
  dspex doctor --config prod.toml
  DSPEX_PYTHON__EXECUTABLE=/usr/bin/python3 dspex doctor

Checks, in order: the configuration, the Python interpreter and its version, the venv
(created on first use when python.executable = \"auto\"; its installed files are all
there), that dspy imports, a handshake
with one real worker, a DSPy program built (and, with the dummy LM, run) by that worker,
and the LM's API key. One line per check: ok, FAIL with how to fix it, or skip when an
earlier failure makes it pointless. Exit status 0 only when every check passes.";

/// Flags of `dspex doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

/// How one check went.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Ok(String),
    Fail { problem: String, fix: String },
    Skip(String),
}

/// A check's name and verdict: one output line.
struct Check {
    name: &'static str,
    verdict: Verdict,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Verdict::Ok(detail) => write!(f, "ok    {:<8} {detail}", self.name),
            Verdict::Fail { problem, fix } => {
                write!(f, "FAIL  {:<8} {problem} -- fix: {fix}", self.name)
            }
            Verdict::Skip(why) => write!(f, "skip  {:<8} {why}", self.name),
        }
    }
}

fn fail(problem: impl Into<String>, fix: impl Into<String>) -> Verdict {
    Verdict::Fail {
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Prints checks as they finish, so a slow one (a venv build) shows where it is.
#[derive(Default)]
struct Report {
    failed: bool,
}

impl Report {
    fn record(&mut self, name: &'static str, verdict: Verdict) -> bool {
        let passed = matches!(verdict, Verdict::Ok(_));
        self.failed |= matches!(verdict, Verdict::Fail { .. });
        // A reader that went away must not turn a diagnosis into a panic.
        let _ = writeln!(std::io::stdout(), "{}", Check { name, verdict });
        passed
    }

    fn skip(&mut self, names: &[&'static str], why: &str) {
        for name in names {
            self.record(name, Verdict::Skip(why.to_owned()));
        }
    }
}

pub async fn doctor(args: DoctorArgs) -> Result<Outcome, CliError> {
    let mut report = Report::default();
    let later = ["python", "venv", "dspy", "worker", "program", "lm"];
    let config = match args.config.load(&[]) {
        Ok(config) => {
            let source = match args.config.file() {
                Some(file) => format!("`{}` over the defaults", file.display()),
                None => "the built-in defaults".to_owned(),
            };
            report.record(
                "config",
                Verdict::Ok(format!(
                    "{source} (pool.size {}, lm.model {:?})",
                    config.pool.size, config.lm.model
                )),
            );
            config
        }
        Err(e) => {
            report.record(
                "config",
                fail(
                    e.to_string(),
                    "correct that key in the config file or environment variable it names",
                ),
            );
            report.skip(&later, "needs a valid configuration");
            return Ok(Outcome::Failed);
        }
    };

    if !report.record("python", check_interpreter(&config).await) {
        report.skip(&later[1..5], "needs a working Python");
    } else {
        run_python_checks(&config, &mut report).await;
    }
    report.record("lm", check_lm(&config));
    Ok(if report.failed {
        Outcome::Failed
    } else {
        Outcome::Success
    })
}

/// venv, dspy, worker and program, each depending on the one before.
async fn run_python_checks(config: &Config, report: &mut Report) {
    let env = match python::prepare(config, false).await {
        Ok(env) => env,
        Err(e) => {
            report.record(
                "venv",
                fail(
                    e.to_string(),
                    "run `dspex setup` to see the full output, or set python.executable to an \
                     interpreter that has the requirements installed",
                ),
            );
            report.skip(&["dspy", "worker", "program"], "needs the venv");
            return;
        }
    };
    let venv = match &env.venv {
        Some(dir) => format!(
            "{} (bridge in {})",
            dir.display(),
            env.bridge_path.display()
        ),
        None => format!(
            "none; {} is used as is (bridge in {})",
            env.python.display(),
            env.bridge_path.display()
        ),
    };
    let checked = env.clone();
    if let Err(e) = blocking(move || python_env::check_venv_files(&checked)).await {
        report.record(
            "venv",
            fail(
                e,
                "run `dspex setup` (or `dspex setup --force` to rebuild it)",
            ),
        );
        report.skip(&["dspy", "worker", "program"], "needs an intact venv");
        return;
    }
    report.record("venv", Verdict::Ok(venv));
    let python = env.python.clone();
    let dspy_ok = match blocking(move || python_env::dspy_version(&python)).await {
        Ok(version) => report.record("dspy", Verdict::Ok(format!("dspy {version} imports"))),
        Err(e) => report.record(
            "dspy",
            fail(
                e.to_string(),
                "run `dspex setup`, or install the bridge requirements into that interpreter",
            ),
        ),
    };
    check_worker(config, env, dspy_ok, report).await;
}

/// Runs a blocking `python_env` check off the async thread.
async fn blocking<T: Send + 'static>(
    check: impl FnOnce() -> Result<T, EnvError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(check).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the check stopped unexpectedly: {e}")),
    }
}

/// The interpreter that runs the workers (or, for "auto", creates their venv). The probe
/// is `python_env`'s, so doctor and a run agree on what counts as a usable Python.
async fn check_interpreter(config: &Config) -> Verdict {
    match &config.python.executable {
        PythonExecutable::Path(path) => {
            let python = path.clone();
            match blocking(move || python_env::python_version(&python)).await {
                Ok(version) => Verdict::Ok(format!(
                    "{} is Python {version} (python.executable)",
                    path.display()
                )),
                Err(problem) => fail(
                    problem,
                    "set python.executable to an existing Python 3.9+ interpreter (e.g. \
                     \"python3\" or \"/usr/bin/python3\"), or to \"auto\" for a venv managed \
                     by dspex",
                ),
            }
        }
        PythonExecutable::Auto => match blocking(python_env::bootstrap_python).await {
            Ok((python, version)) => Verdict::Ok(format!(
                "{} is Python {version} (creates the managed venv)",
                python.display()
            )),
            Err(problem) => fail(
                problem,
                "install Python 3.9+ with the venv module (e.g. apt-get install python3 \
                 python3-venv), or set DSPEX_BOOTSTRAP_PYTHON to one",
            ),
        },
    }
}

/// A handshake with one real worker, then a DSPy program built on it.
async fn check_worker(config: &Config, env: PythonEnv, dspy_ok: bool, report: &mut Report) {
    let mut one = config.clone();
    one.pool.size = 1;
    one.pool.startup_concurrency = 1;
    let started = System::builder(one)
        .python_env(env)
        .require_dspy(false)
        .wait_ready(1)
        .start()
        .await;
    let system = match started {
        Ok(system) => system,
        Err(e) => {
            report.record(
                "worker",
                fail(
                    e.to_string(),
                    "check python.handlers / python.path, and run with RUST_LOG=debug to see \
                     the worker's own output",
                ),
            );
            report.skip(&["program"], "needs a worker");
            return;
        }
    };
    match system.call("ping", json!({})).await {
        Ok(pong) => report.record(
            "worker",
            Verdict::Ok(format!(
                "worker answered the handshake (pid {}, Python {})",
                pong["pid"],
                pong["python_version"].as_str().unwrap_or("?")
            )),
        ),
        Err(e) => report.record(
            "worker",
            fail(
                e.to_string(),
                "run with RUST_LOG=debug to see the worker's own output",
            ),
        ),
    };
    if dspy_ok {
        report.record(
            "program",
            check_program(&system, config.lm.is_dummy()).await,
        );
    } else {
        report.skip(&["program"], "needs dspy");
    }
    let _ = system.shutdown(config.shutdown.graceful_timeout).await;
}

async fn check_program(system: &System, run_it: bool) -> Verdict {
    let fix = "run with RUST_LOG=debug to see the worker's output; reinstall with `dspex setup`";
    let attempt = async {
        let signature: Signature = "question -> answer".parse()?;
        let session = system.open_session(None).await?;
        session
            .create_program("doctor", &signature, ModuleKind::Predict)
            .await?;
        if run_it {
            let inputs = json!({"question": "Is dspex working?"});
            let inputs = inputs.as_object().cloned().unwrap_or_default();
            session.execute("doctor", inputs).await?;
        }
        Ok::<(), dspex::Error>(())
    };
    match attempt.await {
        Ok(()) if run_it => {
            Verdict::Ok("a Predict program was built and run with the dummy LM".into())
        }
        Ok(()) => Verdict::Ok(
            "a Predict program was built (not run: that would call the configured LM)".into(),
        ),
        Err(e) => fail(e.to_string(), fix),
    }
}

/// The LM's API key is where `lm.api_key_env` says.
fn check_lm(config: &Config) -> Verdict {
    let lm = &config.lm;
    if lm.is_dummy() {
        return Verdict::Ok("dummy (offline, deterministic)".into());
    }
    match &lm.api_key_env {
        None => Verdict::Ok(format!(
            "{} without an API key (lm.api_key_env is empty)",
            lm.model
        )),
        Some(var) if std::env::var_os(var).is_some_and(|v| !v.is_empty()) => {
            Verdict::Ok(format!("{} with its key from ${var}", lm.model))
        }
        Some(var) => fail(
            format!("lm.api_key_env names ${var}, which is not set"),
            format!("export {var}=<your key>, or change lm.api_key_env"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_prints_its_fix_on_the_same_line() {
        let line = Check {
            name: "python",
            verdict: fail("interpreter `/x` does not exist", "set python.executable"),
        }
        .to_string();
        assert_eq!(
            line,
            "FAIL  python   interpreter `/x` does not exist -- fix: set python.executable"
        );
        assert!(!line.contains('\n'));
    }

    #[tokio::test]
    async fn a_missing_interpreter_path_fails_with_a_fix() {
        let mut config = Config::default();
        config.python.executable = PythonExecutable::Path("/no/such/python3".into());
        match check_interpreter(&config).await {
            Verdict::Fail { problem, fix } => {
                assert!(problem.contains("does not exist"), "{problem}");
                assert!(fix.contains("python.executable"), "{fix}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_api_key_fails_and_says_what_to_export() {
        let mut config = Config::default();
        config.lm.model = "openai/gpt-4o-mini".into();
        config.lm.api_key_env = Some("DSPEX_DOCTOR_TEST_SURELY_UNSET_KEY".into());
        match check_lm(&config) {
            Verdict::Fail { fix, .. } => {
                assert!(fix.starts_with("export DSPEX_DOCTOR_TEST_SURELY_UNSET_KEY="))
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(matches!(check_lm(&Config::default()), Verdict::Ok(_)));
    }
}
