//! Short-lived Python processes: probing an interpreter, finding the bootstrap Python that
//! creates the managed venv, checking that dspy imports, and streaming a long command's output.
//!
//! Each check runs with a deadline because a misconfigured interpreter path can point at
//! anything, and `dspex run` must fail with a message rather than hang before it starts.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::EnvError;

/// Oldest Python dspex supports (DSPy's own floor).
const MIN_VERSION: (u32, u32) = (3, 9);
/// A version probe only starts the interpreter; a minute covers cold caches and pyenv shims.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// The first `import dspy` byte-compiles hundreds of modules, which can take a while on a
/// slow disk; this bounds only a hung interpreter.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(300);
/// How many trailing output lines an error message quotes.
pub(super) const TAIL_LINES: usize = 12;

const VERSION_SCRIPT: &str = "import sys; print('%d.%d.%d' % sys.version_info[:3])";

/// A Python version as reported by `sys.version_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct PyVersion {
    major: u32,
    minor: u32,
    patch: u32,
}

impl PyVersion {
    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next()??;
        let patch = parts.next()??;
        Some(Self {
            major,
            minor,
            patch,
        })
    }

    fn is_supported(self) -> bool {
        (self.major, self.minor) >= MIN_VERSION
    }
}

impl fmt::Display for PyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why a probed interpreter cannot be used.
#[derive(Debug)]
enum ProbeError {
    /// Nothing to execute under that name or path.
    NotFound,
    /// It started but did not report a version.
    Failed(String),
    /// It works but is older than [`MIN_VERSION`].
    TooOld(PyVersion),
}

/// Runs `python` to learn its version.
fn probe(python: &OsStr) -> Result<PyVersion, ProbeError> {
    let mut cmd = Command::new(python);
    cmd.args(["-c", VERSION_SCRIPT]);
    let output = match run_with_timeout(&mut cmd, PROBE_TIMEOUT) {
        Ok(Some(output)) => output,
        Ok(None) => {
            return Err(ProbeError::Failed(format!(
                "it did not finish within {}s",
                PROBE_TIMEOUT.as_secs()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ProbeError::NotFound),
        Err(e) => return Err(ProbeError::Failed(e.to_string())),
    };
    if !output.status.success() {
        let stderr = tail(&output.stderr, TAIL_LINES);
        let detail = if stderr.is_empty() {
            format!("it exited with {}", output.status)
        } else {
            format!("it exited with {}: {stderr}", output.status)
        };
        return Err(ProbeError::Failed(detail));
    }
    let version = PyVersion::parse(&output.stdout).ok_or_else(|| {
        ProbeError::Failed(format!(
            "it printed {:?} instead of a Python version",
            output.stdout.trim()
        ))
    })?;
    if version.is_supported() {
        Ok(version)
    } else {
        Err(ProbeError::TooOld(version))
    }
}

/// Checks that a configured interpreter exists, runs, and is new enough.
pub(super) fn check_interpreter(path: &Path) -> Result<PyVersion, EnvError> {
    probe(path.as_os_str()).map_err(|e| match e {
        ProbeError::NotFound => EnvError::InterpreterNotFound {
            path: path.to_path_buf(),
        },
        ProbeError::Failed(detail) => EnvError::InterpreterFailed {
            path: path.to_path_buf(),
            detail,
        },
        ProbeError::TooOld(version) => EnvError::PythonTooOld {
            path: path.to_path_buf(),
            version: version.to_string(),
        },
    })
}

/// Picks the interpreter that creates the managed venv.
///
/// An explicit choice (`DSPEX_BOOTSTRAP_PYTHON`) is used or rejected as is, never silently
/// replaced; otherwise `python3`, then `python`, from `PATH`.
pub(super) fn find_bootstrap(explicit: Option<OsString>) -> Result<(PathBuf, PyVersion), EnvError> {
    let (candidates, explicit) = match explicit {
        Some(python) => (vec![python], true),
        None => (
            vec![OsString::from("python3"), OsString::from("python")],
            false,
        ),
    };
    let mut tried = Vec::new();
    for candidate in candidates {
        let shown = if explicit {
            format!("DSPEX_BOOTSTRAP_PYTHON=`{}`", candidate.to_string_lossy())
        } else {
            format!("`{}`", candidate.to_string_lossy())
        };
        match probe(&candidate) {
            Ok(version) => {
                log::debug!("bootstrap python {shown} is Python {version}");
                return Ok((PathBuf::from(candidate), version));
            }
            Err(ProbeError::NotFound) => tried.push(format!("{shown} not found")),
            Err(ProbeError::Failed(detail)) => tried.push(format!("{shown} failed: {detail}")),
            Err(ProbeError::TooOld(version)) => tried.push(format!("{shown} is Python {version}")),
        }
    }
    Err(EnvError::NoBootstrapPython {
        tried: tried.join("; "),
    })
}

/// Imports dspy in `python` and returns `dspy.__version__`; `Err(detail)` says why the
/// import failed. This is dspex's one `import dspy` check (the venv build, a configured
/// interpreter, `setup` and `doctor` all use it).
pub(super) fn dspy_version(python: &Path) -> Result<String, String> {
    let mut cmd = Command::new(python);
    let (name, value) = crate::launch::LITELLM_OFFLINE;
    cmd.args(["-c", "import dspy; print(dspy.__version__)"])
        .env(name, value);
    match run_with_timeout(&mut cmd, IMPORT_TIMEOUT) {
        Ok(Some(output)) if output.status.success() => Ok(output.stdout.trim().to_owned()),
        Ok(Some(output)) => {
            let stderr = tail(&output.stderr, TAIL_LINES);
            Err(if stderr.is_empty() {
                format!("the import exited with {}", output.status)
            } else {
                stderr
            })
        }
        Ok(None) => Err(format!(
            "the import did not finish within {}s",
            IMPORT_TIMEOUT.as_secs()
        )),
        Err(e) => Err(format!("the interpreter could not be started: {e}")),
    }
}

/// A finished process's status and its complete output.
pub(super) struct Output {
    pub(super) status: ExitStatus,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

/// Runs `cmd` to completion with its output captured; `Ok(None)` when it had to be killed
/// because it outlived `timeout`.
pub(super) fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> io::Result<Option<Output>> {
    let (mut child, stdout, stderr) = spawn_piped(cmd)?;
    thread::scope(|scope| {
        // Both pipes are drained concurrently so a chatty child never blocks on a full pipe.
        let out = scope.spawn(move || read_all(stdout));
        let err = scope.spawn(move || read_all(stderr));
        let status = wait_until(&mut child, Instant::now() + timeout);
        if status.is_err() {
            // Without this the readers would wait for a child nobody reaps.
            let _ = child.kill();
            let _ = child.wait();
        }
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        Ok(status?.map(|status| Output {
            status,
            stdout,
            stderr,
        }))
    })
}

/// Starts `cmd` with no standard input and its output on pipes, handed back apart from it.
fn spawn_piped(cmd: &mut Command) -> io::Result<(Child, ChildStdout, ChildStderr)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    Ok((child, stdout, stderr))
}

fn read_all(mut pipe: impl Read) -> String {
    let mut bytes = Vec::new();
    // A read error only truncates what an error message can quote.
    let _ = pipe.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Waits for `child` until `deadline`; past it the child is killed and reaped (`Ok(None)`).
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    // std has no timed wait; polling with a growing interval keeps quick probes quick.
    let mut interval = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        thread::sleep(interval.min(deadline - now));
        interval = (interval * 2).min(Duration::from_millis(50));
    }
}

/// Runs `cmd` to completion, handing every line it prints (stdout and stderr, interleaved as
/// they arrive) to `on_line`. Returns the exit status and the last [`TAIL_LINES`] lines.
pub(super) fn run_streaming(
    cmd: &mut Command,
    on_line: &mut dyn FnMut(&str),
) -> io::Result<(ExitStatus, String)> {
    let (mut child, stdout, stderr) = spawn_piped(cmd)?;
    let (tx, rx) = mpsc::channel::<String>();
    let mut last = VecDeque::with_capacity(TAIL_LINES);
    thread::scope(|scope| {
        let tx_err = tx.clone();
        scope.spawn(move || forward_lines(stdout, &tx));
        scope.spawn(move || forward_lines(stderr, &tx_err));
        // `on_line` is not Send, so the lines come back to this thread to be handed out.
        for line in rx {
            on_line(&line);
            if last.len() == TAIL_LINES {
                last.pop_front();
            }
            last.push_back(line);
        }
    });
    let status = child.wait()?;
    Ok((status, Vec::from(last).join("\n")))
}

fn forward_lines(pipe: impl Read, tx: &mpsc::Sender<String>) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        // Progress output redraws a line with '\r'; only its final state is worth showing.
        let line = text
            .split('\r')
            .map(str::trim_end)
            .rfind(|segment| !segment.is_empty())
            .unwrap_or("");
        if line.is_empty() {
            continue;
        }
        if tx.send(line.to_owned()).is_err() {
            return;
        }
    }
}

/// The last `n` non-blank lines of `text`, trimmed.
pub(super) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parse_reads_three_components() {
        assert_eq!(
            PyVersion::parse("3.11.7\n"),
            Some(PyVersion {
                major: 3,
                minor: 11,
                patch: 7
            })
        );
        assert_eq!(PyVersion::parse("3.11"), None);
        assert_eq!(PyVersion::parse("Python 3.11.7"), None);
    }

    #[test]
    fn version_support_starts_at_3_9() {
        assert!(PyVersion::parse("3.9.0").unwrap().is_supported());
        assert!(PyVersion::parse("4.0.0").unwrap().is_supported());
        assert!(!PyVersion::parse("3.8.18").unwrap().is_supported());
        assert!(!PyVersion::parse("2.7.18").unwrap().is_supported());
    }

    #[test]
    fn tail_keeps_last_non_blank_lines() {
        assert_eq!(tail("a\n\nb\n  \nc\n", 2), "b\nc");
        assert_eq!(tail("only\n", 5), "only");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn explicit_bootstrap_that_does_not_exist_is_reported_not_replaced() {
        let err = find_bootstrap(Some(OsString::from("/nonexistent/dspex/python3"))).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, EnvError::NoBootstrapPython { .. }));
        assert!(
            message.contains("DSPEX_BOOTSTRAP_PYTHON=`/nonexistent/dspex/python3` not found"),
            "{message}"
        );
        assert!(message.contains("apt-get install python3"), "{message}");
    }

    #[test]
    fn run_with_timeout_kills_a_process_past_its_deadline() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exec sleep 30"]);
        let result = run_with_timeout(&mut cmd, Duration::from_millis(50)).unwrap();
        assert!(result.is_none());
    }

    #[test]
    fn run_streaming_forwards_every_line_of_both_streams() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo one; echo two >&2; printf 'x\\rthree\\n'; exit 3",
        ]);
        let mut seen = Vec::new();
        let (status, last) = run_streaming(&mut cmd, &mut |l| seen.push(l.to_owned())).unwrap();
        assert_eq!(status.code(), Some(3));
        seen.sort();
        assert_eq!(seen, ["one", "three", "two"]);
        assert_eq!(last.lines().count(), 3);
    }
}
