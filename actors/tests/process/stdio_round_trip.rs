//! The `stdio` transport: frames on the child's stdin/stdout, stderr is the only log.

use crate::prelude::*;
use dspex_actors::protocol::{Request, Response};
use dspex_actors::LogStream;
use dspex_actors::{spawn_process as spawn, TransportKind};
use serde_json::json;

#[tokio::test]
async fn stdio_transport_round_trips_and_keeps_stderr_as_logs() {
    let spec = python_spec(ECHO_WORKER, TransportKind::Stdio);
    let mut conn = spawn(&spec, "w-stdio").unwrap();
    let streams: Vec<LogStream> = conn.logs.iter().map(|(s, _)| *s).collect();
    assert_eq!(streams, [LogStream::Stderr]);
    let mut logs = take_logs(&mut conn);
    let mut io = framed(&mut conn);

    let resp = io.call(Request::new(7, "echo", json!({"x": "y"}))).await;
    let Some(Ok(Response::Success { id, result, .. })) = resp else {
        panic!("expected a success, got {resp:?}")
    };
    assert_eq!(id, 7);
    assert_eq!(result["args"], json!({"x": "y"}));
    assert_eq!(result["env"]["DSPEX_TRANSPORT"], "stdio");
    let line = wait_for_line(&mut logs, |stream, _| stream == LogStream::Stderr).await;
    assert_eq!(line, "stderr for 7");

    drop(io.tx);
    let status = conn
        .process
        .as_mut()
        .unwrap()
        .terminate(PATIENCE, PATIENCE)
        .await;
    assert_eq!(status.code(), Some(0));
}
