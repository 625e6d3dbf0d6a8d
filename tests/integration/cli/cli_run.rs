//! `dspex run` through the real binary, real Python workers and DSPy's `dummy` LM.
//!
//! Every test runs the binary in its own temporary directory (so no `./dspex.toml` is
//! picked up) with the shared managed venv; the first test to need it builds it under a
//! file lock.

use super::prelude::*;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use predicates::prelude::*;
use serde_json::{json, Value};

#[test]
fn run_1000_rows_over_4_workers_answers_every_row_in_order_with_ids() {
    let dir = tempfile::tempdir().unwrap();
    let input = questions_file(dir.path(), 1000);
    let output = dir.path().join("out.jsonl");
    dspex(dir.path())
        .args(["run", "--signature", QA, "--workers", "4", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .assert()
        .code(0)
        .stderr(predicate::str::contains("1000 rows ok, 0 failed"));
    let rows = json_lines_in(&output);
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
    let rows = json_lines(&String::from_utf8(out).unwrap());
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
    let rows = json_lines(&String::from_utf8(out).unwrap());
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
    let rows = json_lines(&String::from_utf8(out).unwrap());
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
    questions_file(dir.path(), 3);
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

/// Starts a long run, signals it once its output is growing, and checks the aftermath.
fn signal_mid_run(signal: libc::c_int, expected_code: i32) {
    let dir = tempfile::tempdir().unwrap();
    let rows = 20_000;
    let input = questions_file(dir.path(), rows);
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
    wait_for_lines(&mut child, &output, 20);
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
    let written = json_lines_in(&output);
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

// Regression tests for the hardening of `dspex run` (issue 9), each named after what it
// pins. They fail on the main branch this work started from.

/// Runs `dspex run -s QA -w 1` with `args` in `dir`; returns the output.
fn run_in(dir: &Path, args: &[&str]) -> std::process::Output {
    command(dir)
        .args(["run", "-s", QA, "-w", "1"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn an_output_that_is_a_hard_link_to_the_input_is_refused_and_the_input_survives() {
    let dir = tempfile::tempdir().unwrap();
    let input = questions_file(dir.path(), 5);
    let before = std::fs::read(&input).unwrap();
    std::fs::hard_link(&input, dir.path().join("hard.jsonl")).unwrap();
    let out = run_in(dir.path(), &["-i", "questions.jsonl", "-o", "hard.jsonl"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is the input file"), "{stderr}");
    assert_eq!(
        std::fs::read(&input).unwrap(),
        before,
        "the input was changed"
    );
}

#[test]
fn standard_input_redirected_from_the_output_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = questions_file(dir.path(), 5);
    let before = std::fs::read(&input).unwrap();
    // `dspex run -i - -o questions.jsonl < questions.jsonl`
    let out = command(dir.path())
        .args(["run", "-s", QA, "-i", "-", "-o", "questions.jsonl"])
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is the input file"), "{stderr}");
    assert_eq!(
        std::fs::read(&input).unwrap(),
        before,
        "the input was truncated"
    );
    // `dspex run -i questions.jsonl >> questions.jsonl` would read its own answers.
    let out = command(dir.path())
        .args(["run", "-s", QA, "-i", "questions.jsonl"])
        .stdin(Stdio::null())
        .stdout(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&input)
                .unwrap(),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("standard output is the input file"));
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn a_line_longer_than_run_max_line_bytes_fails_only_that_row() {
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(5000);
    std::fs::write(
        dir.path().join("in.jsonl"),
        format!(
            "{}\n{}\n{}\n",
            json!({"id": "a", "question": "short"}),
            json!({"id": "b", "question": long}),
            json!({"id": "c", "question": "after"})
        ),
    )
    .unwrap();
    let out = command(dir.path())
        .args(["run", "-s", QA, "-w", "1", "-i", "in.jsonl"])
        .env("DSPEX_RUN__MAX_LINE_BYTES", "4KiB")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let rows = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(rows.len(), 3);
    assert!(rows[0]["outputs"]["answer"].is_string(), "{}", rows[0]);
    assert_eq!(rows[1]["index"], 1);
    assert_eq!(rows[1]["error"]["kind"], "input", "{}", rows[1]);
    let message = rows[1]["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("line 2: longer than run.max_line_bytes (4096 bytes)"),
        "{message}"
    );
    assert_eq!(rows[2]["id"], "c");
    assert!(rows[2]["outputs"]["answer"].is_string(), "{}", rows[2]);
}

/// A process's resident memory and bytes read so far, from `/proc`.
fn rss_and_read(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let read: u64 = io
        .lines()
        .find_map(|l| l.strip_prefix("rchar:"))?
        .trim()
        .parse()
        .ok()?;
    Some((rss_kib * 1024, read))
}

#[test]
fn dev_zero_as_input_fails_one_row_and_is_read_in_constant_memory() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.jsonl");
    let mut child = command(dir.path())
        .args([
            "run",
            "-s",
            QA,
            "-w",
            "1",
            "-i",
            "/dev/zero",
            "-o",
            "out.jsonl",
        ])
        .env("DSPEX_RUN__MAX_LINE_BYTES", "1MiB")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // The row fails as soon as the line passes the limit; the reading goes on.
    wait_for_lines(&mut child, &output, 1);
    let deadline = Instant::now() + Duration::from_secs(180);
    let (_, read_before) = rss_and_read(pid).unwrap();
    let mut peak = 0;
    let mut read_after = read_before;
    while read_after < read_before + (512 << 20) {
        assert!(Instant::now() < deadline, "dspex stopped reading the input");
        let (rss, read) = rss_and_read(pid).unwrap();
        peak = peak.max(rss);
        read_after = read;
        std::thread::sleep(Duration::from_millis(20));
    }
    // 512 MiB of one endless line went through; the main branch held all of it.
    assert!(peak < 200 << 20, "dspex grew to {} MiB", peak >> 20);
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    let rows = json_lines_in(&output);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["error"]["kind"], "input");
    assert!(rows[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("longer than run.max_line_bytes"));
}

/// A pipe whose reading end is already closed: every write to it fails (EPIPE).
fn closed_pipe() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe {
        libc::close(fds[0]);
        std::os::fd::OwnedFd::from_raw_fd(fds[1])
    }
}

#[test]
fn a_closed_stderr_does_not_stop_the_run() {
    // `dspex run -o out.jsonl 2>&1 | head -1`: stderr's reader is gone.
    let dir = tempfile::tempdir().unwrap();
    questions_file(dir.path(), 300);
    let out = command(dir.path())
        .args([
            "run",
            "-s",
            QA,
            "-w",
            "1",
            "-i",
            "questions.jsonl",
            "-o",
            "out.jsonl",
        ])
        // Warnings go to stderr too.
        .env("RUST_LOG", "debug")
        .env("DSPEX_POOL_SIZE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(closed_pipe()))
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(0));
    let rows = json_lines_in(&dir.path().join("out.jsonl"));
    assert_eq!(rows.len(), 300);
    assert!(rows.iter().all(|r| r["outputs"].is_object()));
}

#[test]
fn a_full_disk_keeps_whole_rows_and_says_how_many_were_written() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    questions_file(dir.path(), 400);
    let limit: libc::rlim_t = 20_000;
    let mut cmd = command(dir.path());
    cmd.args([
        "run",
        "-s",
        QA,
        "-w",
        "1",
        "-i",
        "questions.jsonl",
        "-o",
        "out.jsonl",
    ])
    .stdin(Stdio::null());
    // A file size limit makes writes past it fail like a full disk (EFBIG), in the
    // middle of a line; ignoring SIGXFSZ keeps the limit from killing dspex.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let text = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert!(!text.is_empty() && text.len() as u64 <= limit as u64);
    assert!(
        text.ends_with('\n'),
        "a partial row was left: {:?}",
        &text[text.len() - 40..]
    );
    let rows = json_lines(&text);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["index"], i);
    }
    assert!(
        stderr.contains(&format!("{} rows were written completely", rows.len())),
        "{stderr}"
    );
    assert!(stderr.contains("--resume"), "{stderr}");
}

#[test]
fn dev_full_as_output_reports_no_space_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    questions_file(dir.path(), 10);
    let out = run_in(dir.path(), &["-i", "questions.jsonl", "-o", "/dev/full"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(
        stderr.contains("0 rows were written completely"),
        "{stderr}"
    );
}

/// `dspex` as a user who is not root when the tests run as root (root may write to
/// anything), so permissions mean what they say.
fn unprivileged(dir: &Path) -> Command {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let mut cmd = command(dir);
    if unsafe { libc::geteuid() } == 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        cmd.uid(65534).gid(65534).env("HOME", dir);
    }
    cmd
}

#[test]
fn an_unwritable_output_is_found_before_python_starts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    questions_file(dir.path(), 3);
    let read_only = dir.path().join("read-only.jsonl");
    std::fs::write(&read_only, "keep me\n").unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o444)).unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(
        dir.path().join("questions.jsonl"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    for (output, problem) in [
        ("read-only.jsonl", "Permission denied"),
        ("locked/out.jsonl", "directory `locked` is not writable"),
    ] {
        // A Python that cannot start: had dspex tried it first, this would be the error.
        let out = unprivileged(dir.path())
            .args(["run", "-s", QA, "-i", "questions.jsonl", "-o", output])
            .env("DSPEX_PYTHON__EXECUTABLE", "/nonexistent/python3")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("cannot write output file `{output}`")),
            "{stderr}"
        );
        assert!(stderr.contains(problem), "{stderr}");
        assert!(
            !stderr.contains("nonexistent"),
            "Python was tried first: {stderr}"
        );
    }
    assert_eq!(std::fs::read_to_string(&read_only).unwrap(), "keep me\n");
}

#[test]
fn integer_ids_beyond_2_pow_53_and_64_bits_are_echoed_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let ids = [
        "9007199254740993",
        "18446744073709551615",
        "123456789012345678901234567890",
        "-9223372036854775809",
        "1.10",
    ];
    let text: String = ids
        .iter()
        .map(|id| format!("{{\"id\": {id}, \"question\": \"q{id}\"}}\n"))
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), text).unwrap();
    let out = run_in(dir.path(), &["-i", "in.jsonl"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    for (line, id) in stdout.lines().zip(ids) {
        assert!(line.contains(&format!("\"id\":{id},")), "{id}: {line}");
    }
    assert_eq!(stdout.lines().count(), ids.len());
}

#[test]
fn max_queue_zero_does_not_fail_rows() {
    let dir = tempfile::tempdir().unwrap();
    questions_file(dir.path(), 200);
    let out = command(dir.path())
        .args(["run", "-s", QA, "-w", "1", "-i", "questions.jsonl"])
        .env("DSPEX_POOL__MAX_QUEUE", "0")
        .env("DSPEX_POOL__WORKER_CONCURRENCY", "2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let rows = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(rows.len(), 200);
    assert!(rows.iter().all(|r| r["outputs"].is_object()), "{stderr}");
}

#[test]
fn usage_is_in_each_line_and_totalled_in_the_summary_with_cpu_on_request() {
    let dir = tempfile::tempdir().unwrap();
    questions_file(dir.path(), 20);
    let out = run_in(dir.path(), &["-i", "questions.jsonl", "--report-cpu"]);
    assert_eq!(out.status.code(), Some(0));
    let rows = json_lines(&String::from_utf8(out.stdout).unwrap());
    let mut total = 0;
    for row in &rows {
        let usage = &row["usage"];
        assert_eq!(usage["calls"], 1, "{row}");
        total += usage["total_tokens"].as_u64().unwrap();
    }
    assert!(total > 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("; {total} tokens (")) && stderr.contains("in 20 LM calls"),
        "{stderr}"
    );
    assert!(stderr.contains("ms/row"), "--report-cpu: {stderr}");
}

#[test]
fn config_mistakes_are_errors_or_warnings_naming_the_key_before_python_starts() {
    let dir = tempfile::tempdir().unwrap();
    questions_file(dir.path(), 1);
    // One underscore: not a setting, said so, with the key meant.
    let out = command(dir.path())
        .args(["run", "-s", QA, "-i", "missing.jsonl"])
        .env("DSPEX_POOL_SIZE", "3")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DSPEX_POOL_SIZE is not a dspex setting")
            && stderr.contains("did you mean DSPEX_POOL__SIZE?"),
        "{stderr}"
    );
    for (toml, expected) in [
        (
            "[system]\nname = \"a\\u0000b\"\n",
            "`system.name` must not contain control characters",
        ),
        ("[pool]\nsize = 5000\n", "`pool.size` must be at most 1024"),
    ] {
        std::fs::write(dir.path().join("c.toml"), toml).unwrap();
        // No --workers: it would override pool.size.
        let out = command(dir.path())
            .args([
                "run",
                "-s",
                QA,
                "-i",
                "questions.jsonl",
                "--config",
                "c.toml",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    // Far more workers than cores: a warning, and the run goes on.
    let cores = std::thread::available_parallelism().unwrap().get();
    let out = command(dir.path())
        .args(["run", "-s", QA, "-i", "missing.jsonl"])
        .env("DSPEX_POOL__SIZE", (4 * cores + 1).to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("more than 4 workers per CPU core"),
        "{stderr}"
    );
    assert!(stderr.contains("cannot read input file"), "{stderr}");
}

#[test]
fn modules_planted_in_the_working_directory_are_never_imported_by_workers() {
    // A `dspy.py` and a `dspex_bridge/` package where dspex runs would, if imported, write
    // a marker file; the workers import only from the venv, the bridge and python.path.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("planted-code-ran");
    let plant = format!(
        "open({:?}, 'a').write(__name__ + '\\n')\n",
        marker.display().to_string()
    );
    std::fs::write(dir.path().join("dspy.py"), &plant).unwrap();
    std::fs::create_dir(dir.path().join("dspex_bridge")).unwrap();
    std::fs::write(dir.path().join("dspex_bridge/__init__.py"), &plant).unwrap();
    std::fs::write(dir.path().join("dspex_bridge/__main__.py"), &plant).unwrap();
    let input = questions_file(dir.path(), 4);
    let output = dir.path().join("out.jsonl");
    dspex(dir.path())
        .args(["run", "-s", QA, "-w", "2", "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .assert()
        .code(0);
    assert!(
        !marker.exists(),
        "planted code ran: {:?}",
        std::fs::read_to_string(&marker)
    );
    let lines = json_lines_in(&output);
    assert_eq!(lines.len(), 4);
    assert!(
        lines.iter().all(|l| l["outputs"]["answer"].is_string()),
        "{lines:?}"
    );
}
