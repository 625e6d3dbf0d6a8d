//! What every CLI test needs: the `dspex` binary run in a directory of the test's own
//! with nothing of the caller's configuration, and a look at its worker processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use serde_json::{json, Value};

pub use crate::common::{json_lines, json_lines_in, pid_alive};

/// The signature most CLI tests run.
pub const QA: &str = "question -> answer";

/// The `dspex` binary run in `dir`, inheriting no config file and no config variables
/// (`DSPEX_HOME` and `DSPEX_BOOTSTRAP_PYTHON` still pass: they locate the shared venv),
/// with no standard input.
pub fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(cargo_bin("dspex"));
    cmd.current_dir(dir)
        .env_remove("DSPEX_CONFIG")
        .stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("DSPEX_") && name.contains("__") {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd
}

/// [`command`] for `assert_cmd`'s assertions.
pub fn dspex(dir: &Path) -> assert_cmd::Command {
    assert_cmd::Command::from_std(command(dir))
}

/// The pids whose parent is `parent`, from `/proc/*/stat`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command (which may hold spaces): state, ppid, ...
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

/// The JSON lines a finished command wrote to its standard output.
pub fn stdout_lines(output: &Output) -> Vec<Value> {
    json_lines(&String::from_utf8_lossy(&output.stdout))
}

/// Writes `rows` questions with ids `q0`, `q1`, ... as JSONL to `path`.
pub fn write_questions(path: &Path, rows: usize) {
    let text: String = (0..rows)
        .map(|i| {
            json!({"id": format!("q{i}"), "question": format!("What is {i}?")}).to_string() + "\n"
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

/// [`write_questions`] to `questions.jsonl` in `dir`; returns its path.
pub fn questions_file(dir: &Path, rows: usize) -> PathBuf {
    let path = dir.join("questions.jsonl");
    write_questions(&path, rows);
    path
}

/// How many lines `path` holds (0 while it does not exist yet).
pub fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

/// Waits until `path` holds at least `lines` lines; panics if `child` exits first or the
/// lines take more than three minutes (a cold venv included).
pub fn wait_for_lines(child: &mut Child, path: &Path, lines: usize) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while line_count(path) < lines {
        assert!(
            Instant::now() < deadline,
            "{} never reached {lines} lines",
            path.display()
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "dspex exited ({status}) before {} had {lines} lines",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
