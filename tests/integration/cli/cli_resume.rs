//! Resumable and sharded runs through the real binary, real workers and the `dummy` LM:
//! `dspex run --resume`, `--shard K/N` and `dspex merge`.
//!
//! The dummy LM appends one line per call to `DSPEX_DUMMY_TRACE` (set for the workers
//! through `python.env`), which is how these tests count the rows a run really ran.

use super::prelude::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use assert_cmd::cargo::cargo_bin;
use serde_json::{json, Value};

/// A config file whose workers trace every dummy LM call to `trace`.
fn traced(dir: &Path, name: &str, trace: &Path) -> PathBuf {
    let config = dir.join(name);
    std::fs::write(
        &config,
        format!(
            "[pool]\nsize = 1\nstartup_concurrency = 1\n[python]\nenv = {{ DSPEX_DUMMY_TRACE = {:?} }}\n",
            trace.display().to_string()
        ),
    )
    .unwrap();
    config
}

/// Runs `dspex run -s QA` with `args`; panics unless it exits with `code`.
fn run(dir: &Path, args: &[&str], code: i32) -> String {
    let out = command(dir)
        .args(["run", "-s", QA])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    stderr
}

fn sidecar(output: &Path) -> Value {
    let mut name = output.as_os_str().to_owned();
    name.push(".dspex.json");
    serde_json::from_str(&std::fs::read_to_string(PathBuf::from(name)).unwrap()).unwrap()
}

#[test]
fn three_shards_merged_equal_a_single_run_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_questions(&d.join("in.jsonl"), 100);
    run(d, &["-w", "1", "-i", "in.jsonl", "-o", "single.jsonl"], 0);
    for k in 0..3 {
        let shard = format!("{k}/3");
        let out = format!("part-{k}.jsonl");
        run(
            d,
            &["-w", "1", "-i", "in.jsonl", "-o", &out, "--shard", &shard],
            0,
        );
        let lines: Vec<Value> = std::fs::read_to_string(d.join(&out))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(lines.iter().all(|l| l["index"].as_u64().unwrap() % 3 == k));
        let record = sidecar(&d.join(&out));
        assert_eq!(record["shard"], json!({"index": k, "count": 3}));
        assert_eq!(record["rows"], 100);
        assert_eq!(record["complete"], true);
    }
    // Shards in any order.
    let out = command(d)
        .args([
            "merge",
            "merged.jsonl",
            "part-2.jsonl",
            "part-0.jsonl",
            "part-1.jsonl",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("merged 100 rows from 3 shards"), "{stderr}");
    assert_eq!(
        std::fs::read(d.join("merged.jsonl")).unwrap(),
        std::fs::read(d.join("single.jsonl")).unwrap()
    );
    assert_eq!(sidecar(&d.join("merged.jsonl"))["shard"], Value::Null);
    assert_eq!(sidecar(&d.join("merged.jsonl"))["complete"], true);
}

#[test]
fn merge_reports_missing_rows_and_resume_completes_the_merged_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_questions(&d.join("in.jsonl"), 30);
    run(d, &["-w", "1", "-i", "in.jsonl", "-o", "single.jsonl"], 0);
    run(
        d,
        &[
            "-w", "1", "-i", "in.jsonl", "-o", "a.jsonl", "--shard", "0/2",
        ],
        0,
    );
    // Shard 1/2 never ran.
    let out = command(d)
        .args(["merge", "merged.jsonl", "a.jsonl"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("15 rows missing (index 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, ...)"),
        "{stderr}"
    );
    assert_eq!(line_count(&d.join("merged.jsonl")), 15);
    // The merged output has a record of its own: a resume runs the missing rows.
    let stderr = run(
        d,
        &[
            "-w",
            "1",
            "-i",
            "in.jsonl",
            "-o",
            "merged.jsonl",
            "--resume",
        ],
        0,
    );
    assert!(stderr.contains("15 rows kept from before"), "{stderr}");
    assert_eq!(
        std::fs::read(d.join("merged.jsonl")).unwrap(),
        std::fs::read(d.join("single.jsonl")).unwrap()
    );
}

#[test]
fn kill_9_mid_run_then_resume_gives_the_same_bytes_and_reruns_only_missing_rows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rows = 3000;
    write_questions(&d.join("in.jsonl"), rows);
    let first_trace = d.join("first.trace");
    let resume_trace = d.join("resume.trace");
    let first = traced(d, "first.toml", &first_trace);
    let resume = traced(d, "resume.toml", &resume_trace);
    let output = d.join("out.jsonl");

    let mut child = command(d)
        .args([
            "run",
            "-s",
            QA,
            "-i",
            "in.jsonl",
            "-o",
            "out.jsonl",
            "--config",
        ])
        .arg(&first)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_lines(&mut child, &output, 200);
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&output).unwrap();
    let kept = text.matches('\n').count();
    assert!(kept >= 200 && kept < rows, "{kept} rows before the kill");
    // A crash can also tear the last line; the resume must drop it.
    std::fs::write(&output, format!("{text}{{\"index\":{kept},\"id\":\"q")).unwrap();

    let stderr = run(
        d,
        &[
            "-i",
            "in.jsonl",
            "-o",
            "out.jsonl",
            "--resume",
            "--config",
            resume.to_str().unwrap(),
        ],
        0,
    );
    assert!(
        stderr.contains(&format!("{kept} rows kept from before")),
        "{stderr}"
    );
    let rerun = line_count(&resume_trace);
    assert_eq!(
        rerun,
        rows - kept,
        "the resume ran rows the output already had"
    );

    run(d, &["-w", "1", "-i", "in.jsonl", "-o", "whole.jsonl"], 0);
    assert_eq!(
        std::fs::read(&output).unwrap(),
        std::fs::read(d.join("whole.jsonl")).unwrap(),
        "a resumed output differs from an uninterrupted one"
    );
    assert_eq!(sidecar(&output)["complete"], true);
    assert!(!d.join("out.jsonl.dspex-resume.tmp").exists());

    // Complete: nothing runs, not even Python.
    let stderr = run(
        d,
        &[
            "-i",
            "in.jsonl",
            "-o",
            "out.jsonl",
            "--resume",
            "--config",
            resume.to_str().unwrap(),
        ],
        0,
    );
    assert!(stderr.contains("nothing to resume"), "{stderr}");
    assert_eq!(line_count(&resume_trace), rerun);
}

#[test]
fn resume_keeps_failed_rows_unless_asked_to_retry_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_questions(&d.join("in.jsonl"), 6);
    run(d, &["-w", "1", "-i", "in.jsonl", "-o", "out.jsonl"], 0);
    let good = std::fs::read_to_string(d.join("out.jsonl")).unwrap();
    // Row 2 failed, row 4 was stopped by a signal, row 5 is missing.
    let lines: Vec<&str> = good.lines().collect();
    let failed = r#"{"index":2,"id":"q2","error":{"kind":"lm","message":"503"}}"#;
    let stopped = r#"{"index":4,"id":"q4","error":{"kind":"shutting_down","message":"stopped"}}"#;
    let damaged = [lines[0], lines[1], failed, lines[3], stopped].join("\n") + "\n";
    std::fs::write(d.join("out.jsonl"), &damaged).unwrap();
    let mut record = sidecar(&d.join("out.jsonl"));
    record["complete"] = json!(false);
    std::fs::write(d.join("out.jsonl.dspex.json"), record.to_string()).unwrap();

    let stderr = run(
        d,
        &["-w", "1", "-i", "in.jsonl", "-o", "out.jsonl", "--resume"],
        1,
    );
    assert!(stderr.contains("4 rows kept from before"), "{stderr}");
    let resumed = std::fs::read_to_string(d.join("out.jsonl")).unwrap();
    let resumed: Vec<&str> = resumed.lines().collect();
    assert_eq!(resumed[2], failed, "a failed row is kept");
    assert_eq!(resumed[4], lines[4], "a stopped row runs again");
    assert_eq!(resumed[5], lines[5]);

    run(
        d,
        &[
            "-w",
            "1",
            "-i",
            "in.jsonl",
            "-o",
            "out.jsonl",
            "--resume",
            "--retry-failed",
        ],
        0,
    );
    assert_eq!(std::fs::read_to_string(d.join("out.jsonl")).unwrap(), good);
}

#[test]
fn resume_against_another_input_or_program_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_questions(&d.join("in.jsonl"), 5);
    write_questions(&d.join("other.jsonl"), 6);
    run(d, &["-w", "1", "-i", "in.jsonl", "-o", "out.jsonl"], 0);
    let before = std::fs::read(d.join("out.jsonl")).unwrap();

    let stderr = run(
        d,
        &[
            "-w",
            "1",
            "-i",
            "other.jsonl",
            "-o",
            "out.jsonl",
            "--resume",
        ],
        2,
    );
    assert!(
        stderr.contains("cannot resume `out.jsonl`: it belongs to another input"),
        "{stderr}"
    );
    let out = command(d)
        .args([
            "run",
            "-s",
            "question -> answer, confidence: float",
            "-w",
            "1",
        ])
        .args(["-i", "in.jsonl", "-o", "out.jsonl", "--resume"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("it belongs to another program"), "{stderr}");
    let stderr = run(
        d,
        &[
            "-w",
            "1",
            "-i",
            "in.jsonl",
            "-o",
            "out.jsonl",
            "--resume",
            "--shard",
            "0/2",
        ],
        2,
    );
    assert!(stderr.contains("it belongs to another shard"), "{stderr}");
    assert_eq!(std::fs::read(d.join("out.jsonl")).unwrap(), before);

    // Without a record there is nothing to check the output against.
    std::fs::remove_file(d.join("out.jsonl.dspex.json")).unwrap();
    let stderr = run(
        d,
        &["-w", "1", "-i", "in.jsonl", "-o", "out.jsonl", "--resume"],
        2,
    );
    assert!(stderr.contains("has no run record"), "{stderr}");
    let stderr = run(d, &["-w", "1", "-i", "-", "-o", "out.jsonl", "--resume"], 2);
    assert!(stderr.contains("--resume needs --input FILE"), "{stderr}");
    assert_eq!(std::fs::read(d.join("out.jsonl")).unwrap(), before);
}

#[test]
fn merge_refuses_shards_of_different_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_questions(&d.join("in.jsonl"), 4);
    write_questions(&d.join("other.jsonl"), 5);
    run(
        d,
        &[
            "-w", "1", "-i", "in.jsonl", "-o", "a.jsonl", "--shard", "0/2",
        ],
        0,
    );
    run(
        d,
        &[
            "-w",
            "1",
            "-i",
            "other.jsonl",
            "-o",
            "b.jsonl",
            "--shard",
            "1/2",
        ],
        0,
    );
    let out = command(d)
        .args(["merge", "m.jsonl", "a.jsonl", "b.jsonl"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("written from different inputs"), "{stderr}");
    assert!(!d.join("m.jsonl").exists());
    let out = command(d)
        .args(["merge", "a.jsonl", "a.jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is also a shard"));
}

#[test]
fn the_slurm_example_runs_one_shard_per_task_and_merges_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_questions(&d.join("in.jsonl"), 40);
    run(d, &["-w", "1", "-i", "in.jsonl", "-o", "single.jsonl"], 0);
    let slurm = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/deploy/slurm");
    let bin_dir = cargo_bin("dspex").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run_dir = d.join("run");
    // What Slurm does: the same script once per array task, then the merge.
    for k in 0..4 {
        let status = Command::new("bash")
            .arg(slurm.join("shard.sbatch"))
            .arg(d.join("in.jsonl"))
            .arg(&run_dir)
            .current_dir(d)
            .env("PATH", &path)
            .env("SLURM_ARRAY_TASK_ID", k.to_string())
            .env("SLURM_ARRAY_TASK_COUNT", "4")
            .env("SLURM_CPUS_PER_TASK", "1")
            .env("LM_MODEL", "dummy")
            .env_remove("DSPEX_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    let merged = Command::new("bash")
        .arg(slurm.join("merge.sbatch"))
        .arg(&run_dir)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        merged.status.success(),
        "{}",
        String::from_utf8_lossy(&merged.stderr)
    );
    assert_eq!(
        std::fs::read(run_dir.join("out.jsonl")).unwrap(),
        std::fs::read(d.join("single.jsonl")).unwrap()
    );
}
