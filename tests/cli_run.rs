//! `dspex run` through the real binary, real Python workers and DSPy's `dummy` LM.
//!
//! Every test runs the binary in its own temporary directory (so no `./dspex.toml` is
//! picked up) with the shared managed venv; the first test to need it builds it under a
//! file lock.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use predicates::prelude::*;
use serde_json::{json, Value};

const QA: &str = "question -> answer";

/// The `dspex` binary run in `dir`, inheriting no config file and no config variables
/// (`DSPEX_HOME` and `DSPEX_BOOTSTRAP_PYTHON` still pass: they locate the shared venv).
fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(cargo_bin("dspex"));
    cmd.current_dir(dir).env_remove("DSPEX_CONFIG");
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("DSPEX_") && name.contains("__") {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd
}

fn dspex(dir: &Path) -> assert_cmd::Command {
    assert_cmd::Command::from_std(command(dir))
}

/// A JSONL file of `rows` questions with ids `q0`, `q1`, ...
fn questions(dir: &Path, rows: usize) -> PathBuf {
    let path = dir.join("questions.jsonl");
    let mut text = String::new();
    for i in 0..rows {
        text.push_str(
            &json!({"id": format!("q{i}"), "question": format!("What is {i}?")}).to_string(),
        );
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn parse_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn read_lines(path: &Path) -> Vec<Value> {
    parse_lines(&std::fs::read_to_string(path).unwrap())
}

#[test]
fn run_1000_rows_over_4_workers_answers_every_row_in_order_with_ids() {
    let dir = tempfile::tempdir().unwrap();
    let input = questions(dir.path(), 1000);
    let output = dir.path().join("out.jsonl");
    dspex(dir.path())
        .args(["run", "--signature", QA, "--workers", "4", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .assert()
        .code(0)
        .stderr(predicate::str::contains("1000 rows ok, 0 failed"));
    let rows = read_lines(&output);
    assert_eq!(rows.len(), 1000);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["index"], i, "{row}");
        assert_eq!(row["id"], format!("q{i}"), "{row}");
        let answer = row["outputs"]["answer"].as_str().unwrap_or_default();
        assert!(
            answer.contains(&format!("What is {i}")),
            "row {i} got another row's answer: {row}"
        );
    }
}

#[test]
fn malformed_line_and_missing_field_fail_only_those_rows() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"id\": \"a\", \"question\": \"first\"}\n",
            "{\"id\": \"b\", \"question\": \n",
            "{\"id\": \"c\", \"label\": \"no question here\"}\n",
            "{\"id\": \"d\", \"question\": \"last\"}\n",
        ),
    )
    .unwrap();
    let out = dspex(dir.path())
        .args(["run", "--signature", QA, "--workers", "1", "--input"])
        .arg(&input)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("2 rows ok, 2 failed"))
        .get_output()
        .stdout
        .clone();
    let rows = parse_lines(&String::from_utf8(out).unwrap());
    assert_eq!(rows.len(), 4);
    assert!(rows[0]["outputs"]["answer"].is_string(), "{}", rows[0]);
    assert_eq!(rows[1]["error"]["kind"], "input", "{}", rows[1]);
    assert!(rows[1]["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("line 2:"));
    assert_eq!(rows[2]["error"]["kind"], "validation", "{}", rows[2]);
    assert_eq!(rows[2]["id"], "c", "a rejected row keeps its id");
    assert!(rows[2]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`question`"));
    assert!(rows[3]["outputs"]["answer"].is_string(), "{}", rows[3]);
    assert_eq!(rows[3]["index"], 3);
}

#[test]
fn blank_lines_are_skipped_and_take_no_index() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "\n{\"question\": \"one\"}\n   \n\n{\"question\": \"two\"}\n\n",
    )
    .unwrap();
    let out = dspex(dir.path())
        .args(["run", "-s", QA, "-w", "1", "-i"])
        .arg(&input)
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let rows = parse_lines(&String::from_utf8(out).unwrap());
    let indices: Vec<&Value> = rows.iter().map(|r| &r["index"]).collect();
    assert_eq!(indices, [&json!(0), &json!(1)]);
    assert_eq!(
        rows[0]["id"],
        Value::Null,
        "a row without id gets a null id"
    );
}

#[test]
fn richer_example_dataset_runs_with_chain_of_thought_and_typed_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let reviews = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/reviews.jsonl");
    let signature =
        "review -> sentiment: Literal[\"positive\", \"negative\", \"neutral\"], confidence: float";
    let out = dspex(dir.path())
        .args([
            "run",
            "-s",
            signature,
            "-m",
            "chain_of_thought",
            "-w",
            "1",
            "-i",
        ])
        .arg(&reviews)
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let rows = parse_lines(&String::from_utf8(out).unwrap());
    let expected = std::fs::read_to_string(&reviews).unwrap().lines().count();
    assert_eq!(rows.len(), expected);
    for row in &rows {
        let outputs = &row["outputs"];
        let sentiment = outputs["sentiment"].as_str().unwrap();
        assert!(
            ["positive", "negative", "neutral"].contains(&sentiment),
            "{row}"
        );
        assert!(outputs["confidence"].is_f64(), "{row}");
        assert!(
            outputs["reasoning"].is_string(),
            "chain_of_thought reasons: {row}"
        );
    }
}

/// Runs `dspex run` with `args` and checks it exits 2 naming `problem`, without output.
fn assert_usage_error(args: &[&str], problem: &str) {
    let dir = tempfile::tempdir().unwrap();
    questions(dir.path(), 3);
    std::fs::write(dir.path().join("bad.toml"), "[pool]\nsise = 2\n").unwrap();
    let output = dir.path().join("out.jsonl");
    dspex(dir.path())
        .arg("run")
        .args(args)
        .arg("--output")
        .arg(&output)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(problem));
    assert!(!output.exists(), "the output file was created");
}

#[test]
fn bad_signature_exits_2_naming_it_without_creating_output() {
    assert_usage_error(
        &["-s", "question ->", "-i", "questions.jsonl"],
        "--signature: invalid signature",
    );
}

#[test]
fn unknown_config_key_exits_2_naming_it_without_creating_output() {
    assert_usage_error(
        &["-s", QA, "-i", "questions.jsonl", "--config", "bad.toml"],
        "unknown key `pool.sise`",
    );
}

#[test]
fn unknown_module_kind_exits_2_naming_it_without_creating_output() {
    assert_usage_error(
        &["-s", QA, "-m", "react", "-i", "questions.jsonl"],
        "unknown module kind `react`",
    );
}

#[test]
fn unreadable_input_file_exits_2_naming_it_without_creating_output() {
    assert_usage_error(
        &["-s", QA, "-i", "missing.jsonl"],
        "cannot read input file `missing.jsonl`",
    );
}

/// Reads lines from a child's stdout on a thread, so a test can wait with a deadline.
fn line_reader(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn stdin_to_stdout_streams_rows_while_input_is_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = command(dir.path())
        .args(["run", "-s", QA, "-w", "1", "--input", "-", "--output", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let lines = line_reader(&mut child);
    // The first answer must arrive while stdin is still open: output streams.
    writeln!(stdin, "{}", json!({"id": 1, "question": "first"})).unwrap();
    stdin.flush().unwrap();
    let first = lines
        .recv_timeout(Duration::from_secs(180))
        .expect("an answer before the input ended");
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(
        (first["index"].clone(), first["id"].clone()),
        (json!(0), json!(1))
    );
    for i in 2..=5 {
        writeln!(stdin, "{}", json!({"id": i, "question": format!("q{i}")})).unwrap();
    }
    drop(stdin);
    let rest: Vec<Value> = (2..=5)
        .map(|_| {
            let line = lines.recv_timeout(Duration::from_secs(60)).unwrap();
            serde_json::from_str(&line).unwrap()
        })
        .collect();
    let ids: Vec<&Value> = rest.iter().map(|r| &r["id"]).collect();
    assert_eq!(ids, [&json!(2), &json!(3), &json!(4), &json!(5)]);
    assert!(child.wait().unwrap().success());
}

/// The pids whose parent is `parent`, from `/proc/*/stat`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state, ppid, ...
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

/// Whether `pid` exists and is not a zombie.
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Starts a long run, signals it once its output is growing, and checks the aftermath.
fn signal_mid_run(signal: libc::c_int, expected_code: i32) {
    let dir = tempfile::tempdir().unwrap();
    let rows = 20_000;
    let input = questions(dir.path(), rows);
    let output = dir.path().join("out.jsonl");
    let mut child = command(dir.path())
        .args(["run", "-s", QA, "--workers", "1", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until the output has started growing (the workers are up and serving).
    let deadline = Instant::now() + Duration::from_secs(180);
    while line_count(&output) < 20 {
        assert!(
            Instant::now() < deadline,
            "the output never started growing"
        );
        assert!(child.try_wait().unwrap().is_none(), "dspex exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let workers = children_of(pid);
    assert!(!workers.is_empty(), "no worker process found under dspex");
    // SAFETY: signalling a child process this test started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = tx.send(output);
    });
    let done = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("dspex exits after the signal")
        .unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(expected_code), "{stderr}");
    assert!(stderr.contains("stopped by"), "{stderr}");
    let written = read_lines(&output);
    assert!(
        written.len() >= 20 && written.len() < rows,
        "{} rows",
        written.len()
    );
    for (i, row) in written.iter().enumerate() {
        assert_eq!(row["index"], i, "not a prefix of the input: {row}");
        assert_eq!(row["id"], format!("q{i}"), "{row}");
        assert!(
            row["outputs"].is_object() || row["error"]["kind"] == "shutting_down",
            "{row}"
        );
    }
    for worker in workers {
        assert!(!pid_alive(worker), "worker {worker} outlived dspex");
    }
}

#[test]
fn sigterm_mid_run_writes_a_valid_prefix_exits_143_and_leaves_no_worker() {
    signal_mid_run(libc::SIGTERM, 143);
}

#[test]
fn sigint_mid_run_writes_a_valid_prefix_exits_130_and_leaves_no_worker() {
    signal_mid_run(libc::SIGINT, 130);
}
