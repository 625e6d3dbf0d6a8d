//! `dspex call`, `setup`, `doctor`, `status` and `--help` through the real binary and
//! real Python workers (the shared managed venv).

use super::prelude::*;
use crate::common::site_packages;
use std::path::{Path, PathBuf};
use std::process::Command;

use predicates::prelude::*;
use serde_json::{json, Value};

fn stdout_json(output: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A config file with one worker and a user handler module next to it.
fn handler_config(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("handlers")).unwrap();
    std::fs::write(
        dir.join("handlers/cli_test_handlers.py"),
        r#"
from dspex_bridge import command


@command
def word_count(args):
    return {"words": len(args["text"].split())}


@command("fail_on_purpose")
def fail(args):
    raise ValueError("the handler refused " + repr(args.get("why")))


@command
def worker_settings(args):
    import json, os, resource
    return {
        "address_space": resource.getrlimit(resource.RLIMIT_AS)[0],
        "lm": json.loads(os.environ["DSPEX_LM"]),
    }
"#,
    )
    .unwrap();
    let config = dir.join("handlers.toml");
    std::fs::write(
        &config,
        "[pool]\nsize = 1\nstartup_concurrency = 1\n\
         [python]\npath = [\"handlers\"]\nhandlers = [\"cli_test_handlers\"]\n",
    )
    .unwrap();
    config
}

#[test]
fn call_runs_a_built_in_command_and_prints_its_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dspex(dir.path())
        .args(["call", "echo", "--args", r#"{"hello": ["world", 1]}"#])
        .env("DSPEX_POOL__SIZE", "1")
        .assert()
        .code(0)
        .get_output()
        .clone();
    assert_eq!(stdout_json(&out), json!({"echo": {"hello": ["world", 1]}}));
}

#[test]
fn call_runs_a_user_command_from_python_handlers() {
    let dir = tempfile::tempdir().unwrap();
    let config = handler_config(dir.path());
    let out = dspex(dir.path())
        .args([
            "call",
            "word_count",
            "--args",
            r#"{"text": "one two three"}"#,
            "--config",
        ])
        .arg(&config)
        .assert()
        .code(0)
        .get_output()
        .clone();
    assert_eq!(stdout_json(&out), json!({"words": 3}));
}

#[test]
fn call_reports_a_python_error_with_its_type_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = handler_config(dir.path());
    dspex(dir.path())
        .args([
            "call",
            "fail_on_purpose",
            "--args",
            r#"{"why": "test"}"#,
            "--config",
        ])
        .arg(&config)
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::contains(
            "python error ValueError: the handler refused 'test'",
        ));
}

#[test]
fn call_reads_its_args_from_a_file_with_an_at_sign() {
    let dir = tempfile::tempdir().unwrap();
    let config = handler_config(dir.path());
    // Too long and too quoted for a command line: the reason for @FILE.
    let text = "one two \"three\" ".repeat(2000);
    std::fs::write(
        dir.path().join("args.json"),
        serde_json::to_string_pretty(&json!({ "text": text })).unwrap(),
    )
    .unwrap();
    let out = dspex(dir.path())
        .args(["call", "word_count", "--args", "@args.json", "--config"])
        .arg(&config)
        .assert()
        .code(0)
        .get_output()
        .clone();
    assert_eq!(stdout_json(&out), json!({"words": 6000}));
    dspex(dir.path())
        .args(["call", "echo", "--args", "@missing.json"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "cannot read --args from `missing.json`",
        ));
}

#[test]
fn workers_get_the_memory_limit_and_every_lm_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = handler_config(dir.path());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replace("[pool]\n", "[pool]\nworker_memory_limit = \"3GiB\"\n");
    text.push_str(
        "[lm]\napi_base = \"http://127.0.0.1:9/v1\"\ntimeout = \"7s\"\nnum_retries = 5\n\
         extra = { top_p = 0.5 }\ncache = \"disk\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let out = dspex(dir.path())
        .args(["call", "worker_settings", "--config"])
        .arg(&config)
        .assert()
        .code(0)
        .get_output()
        .clone();
    let settings = stdout_json(&out);
    assert_eq!(settings["address_space"], 3u64 << 30);
    let lm = &settings["lm"];
    assert_eq!(lm["api_base"], "http://127.0.0.1:9/v1");
    assert_eq!(lm["timeout"], 7.0);
    assert_eq!(lm["num_retries"], 5);
    assert_eq!(lm["extra"], json!({"top_p": 0.5}));
    assert_eq!(lm["cache"], "disk");
    let cache_dir = dspex::python_env::cache_dir().unwrap().join("lm-cache");
    assert_eq!(lm["cache_dir"], cache_dir.display().to_string());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cache_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the LM cache is private");
}

#[test]
fn call_with_args_that_are_not_an_object_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    dspex(dir.path())
        .args(["call", "echo", "--args", "[1, 2]"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--args must be a JSON object"));
}

#[test]
fn doctor_passes_every_check_here() {
    let dir = tempfile::tempdir().unwrap();
    let out = dspex(dir.path())
        .arg("doctor")
        .env("DSPEX_POOL__SIZE", "1")
        .assert()
        .code(0)
        .get_output()
        .clone();
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = text
        .lines()
        .map(|line| {
            assert!(line.starts_with("ok "), "not ok: {line}");
            line.split_whitespace().nth(1).unwrap()
        })
        .collect();
    assert_eq!(
        names,
        ["config", "python", "venv", "dspy", "worker", "program", "lm"]
    );
}

#[test]
fn doctor_fails_with_a_fix_when_the_interpreter_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broken.toml");
    std::fs::write(
        &config,
        "[python]\nexecutable = \"/nonexistent/bin/python3\"\n",
    )
    .unwrap();
    let out = dspex(dir.path())
        .args(["doctor", "--config"])
        .arg(&config)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let text = String::from_utf8_lossy(&out.stdout);
    let python = text
        .lines()
        .find(|line| line.starts_with("FAIL  python"))
        .unwrap_or_else(|| panic!("no failed python check in:\n{text}"));
    assert!(python.contains("/nonexistent/bin/python3"), "{python}");
    assert!(python.contains("does not exist"), "{python}");
    assert!(python.contains("fix: set python.executable"), "{python}");
    assert!(
        text.lines().any(|l| l.starts_with("skip  worker")),
        "checks that need Python are skipped:\n{text}"
    );
}

#[test]
fn status_json_reports_pool_size_ready_workers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dspex(dir.path())
        .args(["status", "--json"])
        .env("DSPEX_POOL__SIZE", "2")
        .assert()
        .code(0)
        .get_output()
        .clone();
    let status = stdout_json(&out);
    assert_eq!(status["health"], "healthy", "{status}");
    assert_eq!(status["pool"]["size"], 2);
    assert_eq!(status["pool"]["ready"], 2);
    let workers = status["pool"]["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for worker in workers {
        assert_eq!(worker["health"], "ready", "{worker}");
        assert!(worker["pid"].as_u64().unwrap() > 0, "{worker}");
        assert!(worker["rss_bytes"].as_u64().unwrap() > 0, "{worker}");
    }
}

#[test]
fn status_prints_a_table_of_workers() {
    let dir = tempfile::tempdir().unwrap();
    dspex(dir.path())
        .arg("status")
        .env("DSPEX_POOL__SIZE", "1")
        .assert()
        .code(0)
        .stdout(
            predicate::str::contains(": healthy")
                .and(predicate::str::contains("1 of 1 workers ready"))
                .and(predicate::str::contains("0 of 8 slots in flight"))
                .and(predicate::str::contains("8 of 8 LM calls allowed at once"))
                .and(predicate::str::is_match(r"\.w1 +\d+ +ready +0/8 ").unwrap())
                .and(predicate::str::contains("sessions: 0 active")),
        );
}

#[test]
fn setup_is_idempotent_and_prints_where_the_venv_is() {
    let dir = tempfile::tempdir().unwrap();
    let first = dspex(dir.path())
        .arg("setup")
        .assert()
        .code(0)
        .get_output()
        .clone();
    let second = dspex(dir.path())
        .arg("setup")
        .assert()
        .code(0)
        .stderr(
            predicate::str::contains("python environment verified (").and(
                predicate::str::is_match(r"\(\d+ files of \d+ packages intact\); dspy").unwrap(),
            ),
        )
        .get_output()
        .clone();
    assert_eq!(
        first.stdout, second.stdout,
        "the same environment both times"
    );
    let text = String::from_utf8_lossy(&second.stdout);
    let venv = text
        .lines()
        .find_map(|l| l.strip_prefix("venv: "))
        .unwrap_or_else(|| panic!("no venv line in {text}"));
    assert!(Path::new(venv).join("pyvenv.cfg").is_file(), "{venv}");
}

#[test]
fn every_subcommand_help_shows_an_example() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["run", "merge", "call", "setup", "doctor", "status"] {
        dspex(dir.path())
            .args([sub, "--help"])
            .assert()
            .code(0)
            .stdout(
                predicate::str::contains("Examples:")
                    .and(predicate::str::contains(format!("dspex {sub}"))),
            );
    }
}

/// A copy of the shared managed venv in a fresh `DSPEX_HOME`, so a test can damage it.
fn copy_of_the_shared_venv() -> (tempfile::TempDir, PathBuf) {
    use dspex::python_env::{ensure, PythonSetup};
    let shared = ensure(&PythonSetup::default(), &mut |_| {}).expect("the shared venv");
    let shared = shared.venv.expect("a managed venv");
    let home = tempfile::tempdir().unwrap();
    let venvs = home.path().join("venvs");
    std::fs::create_dir(&venvs).unwrap();
    let copy = venvs.join(shared.file_name().unwrap());
    let status = Command::new("cp")
        .arg("-a")
        .arg(&shared)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    (home, copy)
}

#[test]
fn a_damaged_venv_fails_a_run_pointing_at_setup_which_repairs_it() {
    let (home, venv) = copy_of_the_shared_venv();
    let site = site_packages(&venv);
    let version = std::fs::read_dir(&site)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find_map(|n| {
            n.strip_prefix("dspy-")
                .and_then(|v| v.strip_suffix(".dist-info"))
                .map(str::to_owned)
        })
        .expect("dspy's dist-info");
    let damaged = site.join("dspy/predict/predict.py");
    std::fs::remove_file(&damaged).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "{\"question\": \"q\"}\n").unwrap();

    let out = dspex(dir.path())
        .env("DSPEX_HOME", home.path())
        .args([
            "run",
            "-s",
            "question -> answer",
            "-w",
            "1",
            "-i",
            "in.jsonl",
        ])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is damaged"), "{stderr}");
    assert!(
        stderr.contains("dspy/predict/predict.py is missing"),
        "{stderr}"
    );
    assert!(
        stderr.contains("run `dspex setup` to repair it"),
        "{stderr}"
    );
    assert!(!stderr.contains("python.handlers"), "{stderr}");

    dspex(dir.path())
        .env("DSPEX_HOME", home.path())
        .arg("setup")
        .assert()
        .code(0)
        .stderr(predicate::str::contains(format!(
            "python environment repaired (reinstalled dspy=={version})"
        )));
    assert!(damaged.is_file(), "setup put the file back");
    dspex(dir.path())
        .env("DSPEX_HOME", home.path())
        .args([
            "run",
            "-s",
            "question -> answer",
            "-w",
            "1",
            "-i",
            "in.jsonl",
        ])
        .assert()
        .code(0);
}

#[test]
fn a_reader_that_went_away_ends_call_and_status_quietly_with_141() {
    use std::os::fd::FromRawFd;
    let dir = tempfile::tempdir().unwrap();
    for args in [&["call", "ping"][..], &["status", "--json"]] {
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // `dspex status | head -0`: the reading end is gone before anything is written.
        unsafe { libc::close(fds[0]) };
        let stdout = unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[1]) };
        let out = command(dir.path())
            .args(args)
            .env("DSPEX_POOL__SIZE", "1")
            .stdout(std::process::Stdio::from(stdout))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
