//! Real LMs, offline: real worker processes, real DSPy and its real LM clients against the
//! test LM server on 127.0.0.1 (fixed delay, 429 above a concurrency limit, scripted 500s,
//! counters). Every assertion is on what the server saw or what came back, never on time.

use std::path::Path;
use std::time::Duration;

use crate::common::alike_failure_notes;
use crate::common::lm_server::LmServer;
use assert_cmd::cargo::cargo_bin;
use dspex::config::Config;
use dspex::{ModuleKind, System};
use serde_json::{json, Map, Value};

/// A config for a real (`openai/...`) model at `server`, with these extra TOML lines.
fn config_text(server: &LmServer, extra: &str) -> String {
    format!(
        r#"
[pool]
size = 2
startup_concurrency = 2
{extra}

[lm]
model = "openai/test-model"
api_base = "{}"
cache = "off"
num_retries = 2
"#,
        server.api_base()
    )
}

fn config(server: &LmServer, extra: &str) -> Config {
    Config::from_toml_str(&config_text(server, extra)).unwrap()
}

fn questions(n: usize) -> Vec<Map<String, Value>> {
    (0..n)
        .map(|i| {
            json!({"question": format!("question number {i}")})
                .as_object()
                .cloned()
                .unwrap()
        })
        .collect()
}

async fn qa(system: &System, session: Option<&str>) -> dspex::Program {
    let session = system.open_session(session).await.unwrap();
    session
        .create_program(
            "qa",
            &"question -> answer".parse().unwrap(),
            ModuleKind::Predict,
        )
        .await
        .unwrap();
    session.program("qa").await.unwrap().for_batch()
}

#[tokio::test]
async fn one_worker_keeps_as_many_calls_in_flight_as_it_has_slots() {
    let server = LmServer::start(&[]);
    let mut config = config(&server, "");
    config.pool.size = 1;
    config.pool.startup_concurrency = 1;
    config.pool.worker_concurrency = 16;
    let system = System::start(config).await.unwrap();
    let program = qa(&system, None).await;
    server.control(json!({"hold": true}));
    let rows: Vec<_> = questions(20)
        .into_iter()
        .map(|q| {
            let program = program.clone();
            tokio::spawn(async move { program.execute(q).await })
        })
        .collect();
    assert!(
        server.client().wait_in_flight_async(16).await,
        "16 calls in flight at the server"
    );
    server.control(json!({"hold": false}));
    for row in rows {
        row.await.unwrap().unwrap();
    }
    let stats = server.stats();
    assert_eq!(stats["peak_concurrency"], 16, "{stats}");
    assert_eq!(stats["ok"], 20);
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// Runs `dspex run` in `dir` with `config` over `rows` questions; returns the output lines,
/// the exit code and stderr.
fn cli_run(dir: &Path, config: &str, rows: usize, extra: &[&str]) -> (Vec<Value>, i32, String) {
    let config_path = dir.join("dspex-test.toml");
    std::fs::write(&config_path, config).unwrap();
    let input = dir.join("in.jsonl");
    let text: String = (0..rows)
        .map(|i| {
            format!(
                "{}\n",
                json!({"id": i, "question": format!("question number {i}")})
            )
        })
        .collect();
    std::fs::write(&input, text).unwrap();
    let output = dir.join("out.jsonl");
    let out = std::process::Command::new(cargo_bin("dspex"))
        .current_dir(dir)
        .env_remove("DSPEX_CONFIG")
        .args(["run", "-s", "question -> answer", "--config"])
        .arg(&config_path)
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .args(extra)
        .output()
        .unwrap();
    let lines = std::fs::read_to_string(&output)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        lines,
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn failed(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l.get("error").is_some()).collect()
}

#[test]
fn a_run_against_an_endpoint_that_refuses_above_4_calls_loses_no_row() {
    let server = LmServer::start(&["--delay", "0.05", "--max-concurrency", "4"]);
    let dir = tempfile::tempdir().unwrap();
    let (lines, code, stderr) = cli_run(dir.path(), &config_text(&server, ""), 200, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines.len(), 200);
    assert!(failed(&lines).is_empty(), "{:?}", failed(&lines));
    let stats = server.stats();
    // The pool starts at its capacity (2 workers x 8 slots), learns the limit from the
    // first refusals, and then probes above it only now and then: one refusal per climb
    // back to the limit. Accepted calls never exceed 4 (the server refuses them).
    assert_eq!(stats["ok"], 200, "{stats}");
    let refused = stats["status_429"].as_u64().unwrap();
    assert!(
        refused >= 12,
        "the first burst of 16 met the limit of 4: {stats}"
    );
    assert!(
        refused <= 60,
        "after backing off the pool stays near the limit, refusals stay rare: {stats}"
    );
}

#[test]
fn a_run_whose_rows_all_fail_alike_says_so_once_and_still_writes_every_row() {
    let server = LmServer::start(&["--delay", "0.01"]);
    server.control(json!({"default": "500"}));
    let dir = tempfile::tempdir().unwrap();
    let (lines, code, stderr) = cli_run(dir.path(), &config_text(&server, ""), 25, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(lines.len(), 25);
    assert!(
        lines.iter().all(|l| l["error"]["kind"] == "lm"),
        "{lines:?}"
    );
    // Each row made its call and num_retries = 2 retries: the run went on to the end.
    assert_eq!(server.stats()["calls"], 75, "{}", server.stats());
    let told = alike_failure_notes(&stderr);
    assert_eq!(told.len(), 1, "{stderr}");
    assert!(
        told[0].contains("the last 10 rows all failed the same way (lm: "),
        "{stderr}"
    );
    assert!(told[0].contains("--resume --retry-failed"), "{stderr}");
}

#[test]
fn a_disk_cache_makes_a_second_identical_run_call_nothing() {
    let server = LmServer::start(&["--delay", "0.01"]);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let config = config_text(&server, "").replace(
        "cache = \"off\"",
        &format!("cache = \"disk\"\ncache_dir = \"{}\"", cache.display()),
    );
    let (first, code, stderr) = cli_run(dir.path(), &config, 20, &[]);
    assert_eq!(code, 0, "{stderr}");
    let calls = server.stats()["calls"].as_u64().unwrap();
    assert_eq!(calls, 20);
    let (second, code, stderr) = cli_run(dir.path(), &config, 20, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(server.stats()["calls"], 20, "no call made the second time");
    let outputs = |lines: &[Value]| {
        lines
            .iter()
            .map(|l| l["outputs"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(outputs(&first), outputs(&second));
}

#[tokio::test]
async fn transient_500s_are_retried_and_persistent_failures_get_their_kind() {
    let server = LmServer::start(&["--delay", "0.01"]);
    let mut config = config(&server, "");
    config.pool.size = 1;
    config.pool.startup_concurrency = 1;
    config.pool.worker_concurrency = 1;
    let system = System::start(config).await.unwrap();
    let program = qa(&system, None).await;
    let ask = |i: usize| {
        let program = program.clone();
        async move { program.execute(questions(i + 1).pop().unwrap()).await }
    };

    server.control(json!({"script": ["500", "500", "ok"]}));
    let ok = ask(0).await.unwrap();
    assert!(
        ok["answer"].as_str().unwrap().contains("question number 0"),
        "{ok:?}"
    );
    assert_eq!(
        server.stats()["calls"],
        3,
        "two 500s, then the call that worked"
    );

    server.control(json!({"default": "500"}));
    let err = ask(1).await.unwrap_err();
    assert_eq!(err.kind(), "lm", "{err}");
    assert_eq!(
        server.stats()["calls"],
        6,
        "one call and num_retries = 2 retries"
    );

    server.control(json!({"default": "429", "retry_after": 0.05}));
    let err = ask(2).await.unwrap_err();
    assert_eq!(err.kind(), "rate_limited", "{err}");
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn every_request_of_a_worker_killed_with_8_in_flight_comes_back_with_its_own_answer() {
    let server = LmServer::start(&["--delay", "0.01"]);
    let mut config = config(&server, "");
    config.pool.affinity = dspex::config::Affinity::Strict;
    let system = System::start(config).await.unwrap();
    // The reference: the same 8 questions answered without trouble.
    let program = qa(&system, Some("pinned")).await;
    let mut expected = Vec::new();
    for q in questions(8) {
        expected.push(program.execute(q).await.unwrap());
    }
    // All 8 on one worker (strict affinity), held at the server, then that worker dies.
    server.control(json!({"hold": true}));
    let rows: Vec<_> = questions(8)
        .into_iter()
        .map(|q| {
            let program = program.clone();
            tokio::spawn(async move { program.execute(q).await })
        })
        .collect();
    assert!(server.client().wait_in_flight_async(8).await);
    let status = system.status().await.unwrap().pool.unwrap();
    let holder = status.workers.iter().find(|w| w.in_flight == 8).unwrap();
    crate::common::kill(holder.pid.unwrap(), libc::SIGKILL);
    server.control(json!({"hold": false}));
    for (row, expected) in rows.into_iter().zip(expected) {
        assert_eq!(row.await.unwrap().unwrap(), expected);
    }
    assert_eq!(
        system.status().await.unwrap().pool.unwrap().totals.retried,
        8
    );
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[test]
fn output_lines_carry_usage_and_the_summary_totals_it() {
    let server = LmServer::start(&["--delay", "0.01"]);
    let dir = tempfile::tempdir().unwrap();
    let (lines, code, stderr) = cli_run(dir.path(), &config_text(&server, ""), 10, &[]);
    assert_eq!(code, 0, "{stderr}");
    let mut total = 0;
    for line in &lines {
        let usage = &line["usage"];
        assert_eq!(usage["calls"], 1, "{line}");
        let (p, c, t) = (
            usage["prompt_tokens"].as_u64().unwrap(),
            usage["completion_tokens"].as_u64().unwrap(),
            usage["total_tokens"].as_u64().unwrap(),
        );
        assert!(p > 0 && c > 0 && t == p + c, "{line}");
        total += t;
    }
    assert!(
        stderr.contains(&format!("{total} tokens")),
        "the summary totals the tokens ({total}): {stderr}"
    );
}
