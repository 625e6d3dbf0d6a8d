//! The first step of the stop ladder: a child that exits by itself once its request pipe
//! is closed is neither signalled nor waited on longer than needed.

use crate::prelude::*;
use dspex_actors::{spawn_process as spawn, StopStep};

#[tokio::test]
async fn child_exiting_on_request_eof_stops_at_the_first_step() {
    let mut conn = spawn(&sh_spec("cat <&3 >/dev/null; exit 3"), "w-eof").unwrap();
    // Closing the host's end of fd 3: the child sees EOF.
    let io = framed(&mut conn);
    drop(io.tx);
    let stopped = conn
        .process
        .as_mut()
        .unwrap()
        .terminate_detailed(PATIENCE, PATIENCE)
        .await;
    assert_eq!(stopped.step, StopStep::Exited);
    assert_eq!(stopped.status.code(), Some(3));
}
