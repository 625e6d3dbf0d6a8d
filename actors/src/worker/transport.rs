//! The host's ends of a worker's transport. STUB: owned by the protocol/transport helper.

use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};

pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;
pub type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// Which child stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// What a launcher hands to the Worker actor.
pub struct Connection {
    /// Requests are written here (fd 3 of the child, or its stdin).
    pub writer: BoxWrite,
    /// Responses are read from here (fd 4 of the child, or its stdout).
    pub reader: BoxRead,
    /// Streams that carry only log output (stdout/stderr in `fds` mode, stderr in `stdio`).
    pub logs: Vec<(LogStream, BoxRead)>,
    /// The real process, if there is one.
    pub process: Option<super::process::ChildProcess>,
}
