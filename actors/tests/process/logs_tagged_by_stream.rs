//! In `fds` mode the child's stdout and stderr are both log streams, and each line says
//! which one it came from.

use crate::prelude::*;
use dspex_actors::spawn_process as spawn;
use dspex_actors::LogStream;
use futures::StreamExt;

#[tokio::test]
async fn stdout_and_stderr_lines_arrive_tagged_by_stream() {
    let mut conn = spawn(&sh_spec("echo out-line; echo err-line >&2"), "w-logs").unwrap();
    let logs = take_logs(&mut conn);
    let mut lines: Vec<(LogStream, String)> = tokio::time::timeout(PATIENCE, logs.collect())
        .await
        .unwrap();
    lines.sort_by_key(|(stream, _)| stream.as_str());
    assert_eq!(
        lines,
        [
            (LogStream::Stderr, "err-line".to_owned()),
            (LogStream::Stdout, "out-line".to_owned()),
        ]
    );
    let status = conn.process.as_mut().unwrap().wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
}
