//! `terminate` kills the whole process group at the end, even when the leader exited by
//! itself, so a worker's own children do not linger.

use crate::prelude::*;
use dspex_actors::LogStream;
use dspex_actors::{spawn_process as spawn, StopStep};

#[tokio::test]
async fn grandchild_in_the_group_is_gone_after_terminate() {
    // The leader starts a long sleep in the background, reports its pid and exits.
    let script = "sleep 1000 >/dev/null 2>&1 & echo $!";
    let mut conn = spawn(&sh_spec(script), "w-parent").unwrap();
    let mut logs = take_logs(&mut conn);
    let line = wait_for_line(&mut logs, |s, _| s == LogStream::Stdout).await;
    let grandchild = PidWatch::open(line.trim().parse().unwrap());

    let stopped = conn
        .process
        .as_mut()
        .unwrap()
        .terminate_detailed(PATIENCE, PATIENCE)
        .await;
    assert_eq!(stopped.step, StopStep::Exited);
    assert!(
        grandchild.exited_within(PATIENCE),
        "grandchild {} survived terminate",
        grandchild.pid
    );
}
