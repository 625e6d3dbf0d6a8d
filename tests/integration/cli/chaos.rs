//! Chaos: `dspex run` over 5 000 rows on 4 workers while a thread SIGKILLs a random
//! worker every 200 ms and SIGSTOPs one. Every row must come back ok with its own
//! input's output, the run must exit 0, and no worker process may be left.
//!
//! The rows go through a user command (no DSPy import), so a replacement worker starts
//! in a fraction of a second and the pool keeps up with the killing; what is under test
//! is the pool: retries of every request a dead worker held, a stopped worker found by
//! its health ping and replaced, and nothing lost or answered twice.

use super::prelude::*;
use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use serde_json::{json, Value};

const ROWS: usize = 5000;

/// A small deterministic generator (no dependency needed for picking a victim).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % bound.max(1)
    }
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let handlers = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/handlers");
    let path = dir.join("chaos.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[pool]
size = 4
startup_concurrency = 4
health_check_interval = "500ms"
request_timeout = "30s"
retry_on_crash = 10

[shutdown]
graceful_timeout = "2s"
kill_timeout = "500ms"

[python]
handlers = ["dspex_test_handlers"]
path = ["{}"]
"#,
            handlers.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn every_row_survives_workers_killed_every_200ms_and_one_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.jsonl");
    let mut text = String::new();
    for i in 0..ROWS {
        text.push_str(&json!({"id": i, "text": format!("row number {i}")}).to_string());
        text.push('\n');
    }
    std::fs::write(&input, text).unwrap();
    let output = dir.path().join("out.jsonl");
    let config = write_config(dir.path());

    let mut run = Command::new(cargo_bin("dspex"))
        .current_dir(dir.path())
        .env_remove("DSPEX_CONFIG")
        .args(["run", "--command", "echo_row", "--config"])
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let host = run.id();

    let done = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(HashSet::<u32>::new()));
    let chaos = {
        let (done, seen) = (Arc::clone(&done), Arc::clone(&seen));
        std::thread::spawn(move || {
            let mut rng = Lcg(0x5eed);
            let mut stopped = None;
            let (mut kills, started) = (0u32, Instant::now());
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                let workers: Vec<u32> = children_of(host)
                    .into_iter()
                    .filter(|pid| Some(*pid) != stopped && pid_alive(*pid))
                    .collect();
                seen.lock().unwrap().extend(&workers);
                if workers.is_empty() {
                    continue;
                }
                let victim = workers[rng.next(workers.len())];
                if stopped.is_none() && started.elapsed() > Duration::from_millis(600) {
                    // SAFETY: signalling a pid of our own test's process tree.
                    unsafe { libc::kill(victim as i32, libc::SIGSTOP) };
                    stopped = Some(victim);
                    continue;
                }
                // SAFETY: as above.
                unsafe { libc::kill(victim as i32, libc::SIGKILL) };
                kills += 1;
            }
            kills
        })
    };
    let status = run.wait().unwrap();
    done.store(true, Ordering::SeqCst);
    let kills = chaos.join().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "dspex run failed ({status}):\n{stderr}");
    eprintln!("chaos: {kills} workers killed, one stopped");
    assert!(kills >= 5, "the chaos thread killed only {kills} workers");

    let lines: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), ROWS);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], json!(i), "{line}");
        assert_eq!(line["id"], json!(i), "{line}");
        assert!(line.get("error").is_none(), "row {i} failed: {line}");
        assert_eq!(
            line["outputs"]["text"],
            json!(format!("row number {i}")),
            "row {i} got another row's output: {line}"
        );
    }
    let pids_served: HashSet<i64> = lines
        .iter()
        .filter_map(|l| l["outputs"]["pid"].as_i64())
        .collect();
    assert!(
        pids_served.len() > 4,
        "workers were replaced: {pids_served:?}"
    );
    // No worker outlives the run, not even the stopped one.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left: Vec<u32> = seen.lock().unwrap().iter().copied().collect();
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|pid| pid_alive(*pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(left.is_empty(), "worker processes left behind: {left:?}");
}
