//! The test LM server (`tests/fixtures/lm_server.py`, an OpenAI-compatible endpoint with
//! delays, 429s above a concurrency limit, scripted failures and counters), started on
//! 127.0.0.1 for one test and stopped with it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub struct LmServer {
    child: Child,
    pub port: u16,
}

/// Talks to a running server; `Copy`, so blocking calls can move to
/// `tokio::task::spawn_blocking` while the test's requests are in flight.
#[derive(Debug, Clone, Copy)]
pub struct LmClient {
    pub port: u16,
}

impl LmServer {
    /// Starts the server with these extra flags (e.g. `["--delay", "0.05"]`).
    pub fn start(flags: &[&str]) -> LmServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lm_server.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the test LM server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the LM server said {line:?} instead of its port"));
        LmServer { child, port }
    }

    /// The base URL to give `lm.api_base`.
    pub fn api_base(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    pub fn client(&self) -> LmClient {
        LmClient { port: self.port }
    }

    pub fn control(&self, changes: Value) {
        self.client().control(changes)
    }

    pub fn stats(&self) -> Value {
        self.client().stats()
    }
}

impl LmClient {
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{method} {path}: {head}"
        );
        serde_json::from_str(body).unwrap_or(Value::Null)
    }

    /// Changes the server's behaviour (`delay`, `max_concurrency`, `script`, `default`,
    /// `retry_after`, `hold`).
    pub fn control(&self, changes: Value) {
        self.request("POST", "/control", Some(&changes));
    }

    pub fn stats(&self) -> Value {
        self.request("GET", "/stats", None)
    }

    /// Blocks until `n` calls are in flight at the server (or its own 60 s timeout);
    /// returns whether they were.
    pub fn wait_in_flight(&self, n: usize) -> bool {
        self.request("GET", &format!("/wait?in_flight={n}"), None)["reached"]
            .as_bool()
            .unwrap_or(false)
    }

    /// [`wait_in_flight`](Self::wait_in_flight) off the async runtime's thread.
    pub async fn wait_in_flight_async(self, n: usize) -> bool {
        tokio::task::spawn_blocking(move || self.wait_in_flight(n))
            .await
            .unwrap()
    }
}

impl Drop for LmServer {
    fn drop(&mut self) {
        // Closing stdin is its cue to go; kill in case it hangs.
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
