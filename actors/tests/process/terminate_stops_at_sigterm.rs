//! The middle step of the stop ladder: a child that exits on SIGTERM is not SIGKILLed.

use crate::prelude::*;
use dspex_actors::{spawn_process as spawn, StopStep};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

#[tokio::test]
async fn child_exiting_on_sigterm_stops_at_that_step() {
    let mut conn = spawn(&sh_spec("exec sleep 1000"), "w-polite").unwrap();
    let child = conn.process.as_mut().unwrap();
    let pid = child.pid();
    let stopped = child.terminate_detailed(Duration::ZERO, PATIENCE).await;
    assert_eq!(stopped.step, StopStep::Terminated);
    assert_eq!(stopped.status.signal(), Some(libc::SIGTERM));
    assert!(reaped(pid), "pid {pid} still exists after terminate");
}
