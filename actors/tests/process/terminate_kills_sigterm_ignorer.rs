//! The last step of the stop ladder: a child that ignores SIGTERM is SIGKILLed after the
//! kill timeout, and reaped.

use crate::prelude::*;
use dspex_actors::LogStream;
use dspex_actors::{spawn_process as spawn, StopStep};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

#[tokio::test]
async fn child_ignoring_sigterm_is_killed_and_reaped() {
    let script = "trap '' TERM; echo ready; exec sleep 1000";
    let mut conn = spawn(&sh_spec(script), "w-stubborn").unwrap();
    let mut logs = take_logs(&mut conn);
    // Only after this line is SIGTERM known to be ignored.
    wait_for_line(&mut logs, |s, l| s == LogStream::Stdout && l == "ready").await;

    let child = conn.process.as_mut().unwrap();
    let pid = child.pid();
    let stopped = child
        .terminate_detailed(Duration::from_millis(50), Duration::from_millis(200))
        .await;
    assert_eq!(stopped.step, StopStep::Killed);
    assert_eq!(stopped.status.signal(), Some(libc::SIGKILL));
    assert!(reaped(pid), "pid {pid} still exists after terminate");
}
