//! Wire protocol between the host and a worker: a 4-byte big-endian length, then that many
//! bytes of UTF-8 JSON. See DESIGN.md "Wire protocol".
//!
//! STUB: interface fixed, implementation owned by the protocol/transport helper.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Host → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub command: String,
    #[serde(default)]
    pub args: Value,
    /// RFC 3339, UTC.
    pub timestamp: String,
}

impl Request {
    /// A request stamped with the current time.
    pub fn new(id: u64, command: impl Into<String>, args: Value) -> Self {
        todo!("{id} {} {args}", command.into())
    }
}

/// The structured error a worker reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    #[serde(rename = "type")]
    pub error_type: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
}

/// Worker → host.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Success { id: u64, result: Value, timestamp: Option<f64> },
    Failure { id: u64, error: WireError },
}

impl Response {
    pub fn id(&self) -> u64 {
        match self {
            Response::Success { id, .. } | Response::Failure { id, .. } => *id,
        }
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    #[error("i/o error: {0}")]
    Io(String),
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes (python.max_frame_bytes)")]
    TooLarge { len: usize, max: usize },
    #[error("stream ended inside a frame: expected {expected} bytes, got {got}")]
    Truncated { expected: usize, got: usize },
    #[error("frame is not valid UTF-8: {0}")]
    Utf8(String),
    #[error("frame is not valid JSON: {0}")]
    Json(String),
    #[error("frame has the wrong shape: {0}")]
    Shape(String),
}

/// Length-prefixed JSON codec; `In` is what is decoded, `Out` what is encoded.
/// The host uses `FrameCodec<Response, Request>`, a fake worker the reverse.
pub struct FrameCodec<In, Out> {
    max_frame: usize,
    _marker: std::marker::PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    pub fn new(max_frame: usize) -> Self {
        FrameCodec { max_frame, _marker: std::marker::PhantomData }
    }
}
