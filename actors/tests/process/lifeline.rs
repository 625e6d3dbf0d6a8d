//! The lifeline: with `LaunchSpec::lifeline`, the child finds on fd 5 the read end of a
//! pipe only the host holds, so anything watching it reads end of file exactly when the
//! host's handle is gone (dropped, or the host died), and not before.

use std::time::Duration;

use crate::prelude::*;
use dspex_actors::{spawn_process as spawn, LogStream, TransportKind};

/// Forks a watcher that leaves the process group (so the group kill that comes with
/// dropping the handle does not reach it), blocks reading the lifeline and writes a
/// marker file at end of file.
const WATCHER: &str = r#"
import os, sys, time
fd = int(os.environ["DSPEX_LIFELINE_FD"])
if os.fork() == 0:
    os.setsid()
    while os.read(fd, 1):
        pass
    with open(os.environ["MARKER"], "w") as f:
        f.write("eof")
    os._exit(0)
print("fd", fd, flush=True)
time.sleep(1000)
"#;

#[tokio::test]
async fn the_lifeline_reads_eof_only_when_the_hosts_handle_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("eof");
    let mut spec = python_spec(WATCHER, TransportKind::Fds);
    spec.lifeline = true;
    spec.env = vec![("MARKER".into(), marker.to_string_lossy().into_owned())];
    let mut conn = spawn(&spec, "w-lifeline").unwrap();
    let mut logs = take_logs(&mut conn);
    let line = wait_for_line(&mut logs, |s, _| s == LogStream::Stdout).await;
    assert_eq!(line, "fd 5");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !marker.exists(),
        "end of file while the host held the lifeline"
    );
    drop(conn);
    let deadline = std::time::Instant::now() + PATIENCE;
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the watcher never saw end of file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn without_the_flag_there_is_no_lifeline() {
    let code = r#"
import os
try:
    os.fstat(5)
    print("open", flush=True)
except OSError:
    print("closed", flush=True)
print("var", os.environ.get("DSPEX_LIFELINE_FD"), flush=True)
"#;
    let mut conn = spawn(&python_spec(code, TransportKind::Fds), "w-no-lifeline").unwrap();
    let mut logs = take_logs(&mut conn);
    assert_eq!(
        wait_for_line(&mut logs, |s, _| s == LogStream::Stdout).await,
        "closed"
    );
    assert_eq!(
        wait_for_line(&mut logs, |s, _| s == LogStream::Stdout).await,
        "var None"
    );
}
