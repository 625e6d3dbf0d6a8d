//! Dropping a connection without stopping it still takes down the worker and everything
//! in its process group.

use crate::prelude::*;
use dspex_actors::spawn_process as spawn;
use dspex_actors::LogStream;

#[tokio::test]
async fn dropping_the_connection_kills_leader_and_grandchild() {
    let script = "sleep 1000 >/dev/null 2>&1 & echo $!; wait";
    let mut conn = spawn(&sh_spec(script), "w-dropped").unwrap();
    let mut logs = take_logs(&mut conn);
    let line = wait_for_line(&mut logs, |s, _| s == LogStream::Stdout).await;
    let grandchild = PidWatch::open(line.trim().parse().unwrap());
    let leader = PidWatch::open(conn.process.as_ref().unwrap().pid() as i32);

    drop(conn);
    assert!(leader.exited_within(PATIENCE), "leader survived the drop");
    assert!(
        grandchild.exited_within(PATIENCE),
        "grandchild survived the drop"
    );
}
