//! Helpers shared by the integration tests (process-wrap style `prelude`).
pub mod lm_server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dspex::config::{Config, PythonExecutable};
use dspex::System;
use serde_json::Value;

/// `<venv>/lib/pythonX.Y/site-packages`.
pub fn site_packages(venv: &Path) -> PathBuf {
    let python = std::fs::read_dir(venv.join("lib"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("python")
        })
        .unwrap();
    python.join("site-packages")
}

/// Parses JSONL text, naming the line that is not JSON.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// The JSON lines of the file at `path`; none while it does not exist (a trace file is
/// created by the first call it records).
pub fn json_lines_in(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).map_or_else(|_| Vec::new(), |text| json_lines(&text))
}

/// The test configuration with workers run by the host's `python3` and only the generic
/// half of the bridge (no DSPy import needed): fast to start, no venv.
pub fn generic_config(size: usize) -> Config {
    let mut config = Config::test();
    config.python.executable = PythonExecutable::Path(PathBuf::from("python3"));
    config.pool.size = size;
    config.pool.startup_concurrency = size;
    config
}

/// The ids of the system's active sessions.
pub async fn session_ids(system: &System) -> Vec<String> {
    let sessions = system.sessions().await.expect("sessions are listed");
    sessions.into_iter().map(|s| s.id).collect()
}

/// Start an isolated system of `size` generic workers and wait until all are ready.
pub async fn start_generic(size: usize) -> System {
    start_generic_with(generic_config(size)).await
}

pub async fn start_generic_with(config: Config) -> System {
    init_logs();
    let size = config.pool.size;
    System::builder(config)
        .require_dspy(false)
        .wait_ready(size)
        .start()
        .await
        .expect("generic system starts")
}

/// The lines of a run's or eval's stderr that say rows keep failing alike.
pub fn alike_failure_notes(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("rows all failed the same way"))
        .collect()
}

/// Whether a process exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// Poll `cond` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pids of a system's workers.
pub async fn worker_pids(system: &System) -> Vec<u32> {
    let status = system.status().await.expect("status");
    status
        .pool
        .expect("pool status")
        .workers
        .iter()
        .filter_map(|w| w.pid)
        .collect()
}

/// Route `log` output to the test harness (visible with `--nocapture` and `RUST_LOG`).
pub fn init_logs() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// The directory of the test handler module (`dspex_test_handlers`).
pub fn handlers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/handlers")
}

/// A generic config whose workers also load `tests/fixtures/handlers/dspex_test_handlers.py`.
pub fn handlers_config(size: usize) -> Config {
    let mut config = generic_config(size);
    config.python.path = vec![handlers_dir()];
    config.python.handlers = vec!["dspex_test_handlers".into()];
    config
}

/// The pid of the worker process that runs a `whoami`.
pub async fn whoami(system: &System, session: Option<&str>) -> u32 {
    let mut call = dspex::Call::new("whoami", serde_json::json!({}));
    if let Some(s) = session {
        call = call.session(s);
    }
    system.execute(call).await.expect("whoami")["pid"]
        .as_u64()
        .unwrap() as u32
}

/// Send a signal to a process.
pub fn kill(pid: u32, signal: i32) {
    unsafe {
        libc::kill(pid as i32, signal);
    }
}
