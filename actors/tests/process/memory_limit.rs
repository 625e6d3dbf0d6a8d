//! `LaunchSpec::memory_limit` becomes the child's address-space limit: an allocation past
//! it fails inside the child, and a child that dies of it is recognised as having died of
//! memory.

use crate::prelude::*;
use dspex_actors::{spawn_process as spawn, LogStream, TransportKind};

const GIB: u64 = 1 << 30;

#[tokio::test]
async fn the_child_runs_under_the_address_space_limit() {
    let code = r#"
import resource
print(resource.getrlimit(resource.RLIMIT_AS)[0], flush=True)
"#;
    let mut spec = python_spec(code, TransportKind::Fds);
    spec.memory_limit = Some(2 * GIB);
    let mut conn = spawn(&spec, "w-limited").unwrap();
    let mut logs = take_logs(&mut conn);
    let line = wait_for_line(&mut logs, |s, _| s == LogStream::Stdout).await;
    assert_eq!(line, (2 * GIB).to_string());
}

#[tokio::test]
async fn an_allocation_past_the_limit_fails_in_the_child_and_its_death_is_put_down_to_memory() {
    // Allocates 4 GiB under a 1 GiB limit, lets the MemoryError end the process.
    let code = r#"
blob = bytearray(4 * 1024 ** 3)
"#;
    let mut spec = python_spec(code, TransportKind::Fds);
    spec.memory_limit = Some(GIB);
    let mut conn = spawn(&spec, "w-oom").unwrap();
    let mut logs = take_logs(&mut conn);
    let line = wait_for_line(&mut logs, |s, l| {
        s == LogStream::Stderr && l.contains("Error")
    })
    .await;
    assert!(line.contains("MemoryError"), "{line}");
    let child = conn.process.as_mut().unwrap();
    let status = child.terminate(PATIENCE, PATIENCE).await;
    assert!(!status.success());
    assert!(child.died_of_memory(status, &line));
    let mut unlimited = spawn(&python_spec("pass", TransportKind::Fds), "w-ok").unwrap();
    let fine = unlimited.process.as_mut().unwrap();
    let status = fine.terminate(PATIENCE, PATIENCE).await;
    assert!(
        !fine.died_of_memory(status, "MemoryError"),
        "a clean exit without a limit is not a memory death"
    );
}
