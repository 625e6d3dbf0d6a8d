//! The `fds` transport: requests on the child's fd 3, responses on its fd 4, while the
//! child prints freely on stdout; argv and environment are exactly what the spec says.

use crate::prelude::*;
use dspex_actors::protocol::{Request, Response};
use dspex_actors::{spawn_process as spawn, StopStep, TransportKind};
use serde_json::json;

#[tokio::test]
async fn fds_transport_round_trips_requests_despite_stdout_prints() {
    let mut spec = python_spec(ECHO_WORKER, TransportKind::Fds);
    spec.env = vec![("DSPEX_TEST_VAR".into(), "42".into())];
    let mut conn = spawn(&spec, "w-fds").unwrap();
    let mut io = framed(&mut conn);

    for id in 1..=3u64 {
        let resp = io.call(Request::new(id, "echo", json!({"n": id}))).await;
        let Some(Ok(Response::Success {
            id: got, result, ..
        })) = resp
        else {
            panic!("expected a success, got {resp:?}")
        };
        assert_eq!(got, id);
        assert_eq!(result["command"], "echo");
        assert_eq!(result["args"], json!({"n": id}));
        assert_eq!(
            result["argv"],
            json!(["--mode", "pool-worker", "--worker-id", "w-fds"])
        );
        let env = result["env"].as_object().unwrap();
        assert_eq!(env["DSPEX_TEST_VAR"], "42");
        assert_eq!(env["DSPEX_TRANSPORT"], "fds");
        // Nothing inherited from the host (Python itself may add LC_CTYPE, PEP 538).
        let extra: Vec<&String> = env
            .keys()
            .filter(|k| !["DSPEX_TEST_VAR", "DSPEX_TRANSPORT", "LC_CTYPE"].contains(&k.as_str()))
            .collect();
        assert!(extra.is_empty(), "inherited variables leaked: {extra:?}");
    }

    // Closing the request pipe is the worker's signal to exit.
    drop(io.tx);
    let child = conn.process.as_mut().unwrap();
    let stopped = child.terminate_detailed(PATIENCE, PATIENCE).await;
    assert_eq!(stopped.step, StopStep::Exited);
    assert_eq!(stopped.status.code(), Some(0));
}
