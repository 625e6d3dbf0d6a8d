//! Wire protocol between the host and a worker: a 4-byte big-endian length, then that many
//! bytes of UTF-8 JSON. See DESIGN.md "Wire protocol".
//!
//! The message types live here together with [`FrameCodec`], the one codec both sides use:
//! the host decodes [`Response`]s and encodes [`Request`]s, the in-memory fake worker in
//! `testing` module does the reverse. Keeping both directions on one codec means the fake
//! exercises exactly the framing a real worker sees.
//!
//! Decoding never panics: every malformed input maps to a typed [`FrameError`], so the
//! Worker can report a protocol error and replace the process instead of crashing.

use bytes::{Buf, BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::marker::PhantomData;
use tokio_util::codec::{Decoder, Encoder};

/// Size of the big-endian length prefix in front of every frame.
pub const HEADER_LEN: usize = 4;

/// The default largest frame body, 64 MiB (`python.max_frame_bytes`).
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

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
    /// A request stamped with the current time (RFC 3339, UTC, millisecond precision).
    ///
    /// # Examples
    ///
    /// ```
    /// use dspex_actors::protocol::Request;
    /// let req = Request::new(7, "ping", serde_json::json!({"initialization": true}));
    /// assert_eq!(req.id, 7);
    /// assert!(req.timestamp.ends_with('Z'));
    /// ```
    pub fn new(id: u64, command: impl Into<String>, args: Value) -> Self {
        Request {
            id,
            command: command.into(),
            args,
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        }
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
    /// Any other fields of the error object (e.g. `retry_after` of a rate refusal), for the
    /// layer that knows what they mean.
    #[serde(flatten, default, skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
}

impl WireError {
    /// An error of `error_type` with `message` and nothing else.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        WireError {
            error_type: error_type.into(),
            message: message.into(),
            traceback: None,
            details: Map::new(),
        }
    }
}

/// A request as the host encodes it, borrowing its command and arguments so that the
/// request the host keeps (for a retry) is never copied or taken apart.
///
/// `session_id`, when given, is added to an object `args` that does not have one, the way
/// the bridge expects to find the session of a request.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingRequest<'a> {
    pub id: u64,
    pub command: &'a str,
    pub args: &'a Value,
    pub session_id: Option<&'a str>,
}

impl Serialize for OutgoingRequest<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("Request", 4)?;
        out.serialize_field("id", &self.id)?;
        out.serialize_field("command", self.command)?;
        out.serialize_field(
            "args",
            &ArgsWithSession {
                args: self.args,
                session_id: self.session_id,
            },
        )?;
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        out.serialize_field("timestamp", &now.to_string())?;
        out.end()
    }
}

struct ArgsWithSession<'a> {
    args: &'a Value,
    session_id: Option<&'a str>,
}

impl Serialize for ArgsWithSession<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match (self.args, self.session_id) {
            (Value::Object(map), Some(session)) if !map.contains_key("session_id") => {
                let mut out = serializer.serialize_map(Some(map.len() + 1))?;
                for (key, value) in map {
                    out.serialize_entry(key, value)?;
                }
                out.serialize_entry("session_id", session)?;
                out.end()
            }
            (Value::Null, Some(session)) => {
                let mut out = serializer.serialize_map(Some(1))?;
                out.serialize_entry("session_id", session)?;
                out.end()
            }
            (args, _) => args.serialize(serializer),
        }
    }
}

/// Encodes one whole frame (header and body) for `item`.
///
/// # Errors
///
/// [`FrameError::TooLarge`] when the body is over `max_frame` bytes (or the 4-byte limit),
/// [`FrameError::Json`] when `item` cannot be serialised.
pub fn encode_frame<T: Serialize>(item: &T, max_frame: usize) -> Result<bytes::Bytes, FrameError> {
    let mut buf = BytesMut::new();
    FrameCodec::<(), T>::new(max_frame).encode_ref(item, &mut buf)?;
    Ok(buf.freeze())
}

/// Worker → host.
///
/// On the wire a success is `{"id", "success": true, "result", "timestamp"}` and a failure
/// `{"id", "success": false, "error": {"type", "message", "traceback"?}}`. Decoding is
/// lenient where older bridges differ: a missing `result` is `null`, a non-numeric
/// `timestamp` is ignored, and `"error": "<text>"` becomes a [`WireError`] of type `Error`.
/// Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Success {
        id: u64,
        result: Value,
        /// Seconds since the Unix epoch when the worker answered, if it said.
        timestamp: Option<f64>,
    },
    Failure {
        id: u64,
        error: WireError,
    },
    /// Not an answer: something the worker reports while request `id` runs (progress, for
    /// instance). On the wire `{"id", "event"}` with no `success`.
    Event {
        id: u64,
        event: Value,
    },
}

impl Response {
    /// The id of the request this answers (or reports on).
    pub fn id(&self) -> u64 {
        match self {
            Response::Success { id, .. }
            | Response::Failure { id, .. }
            | Response::Event { id, .. } => *id,
        }
    }

    /// Whether the worker reported success.
    pub fn is_success(&self) -> bool {
        matches!(self, Response::Success { .. })
    }
}

/// Borrowed views used to serialise [`Response`] without cloning the result.
#[derive(Serialize)]
struct SuccessOut<'a> {
    id: u64,
    success: bool,
    result: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<f64>,
}

#[derive(Serialize)]
struct FailureOut<'a> {
    id: u64,
    success: bool,
    error: &'a WireError,
}

#[derive(Serialize)]
struct EventOut<'a> {
    id: u64,
    event: &'a Value,
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Response::Success {
                id,
                result,
                timestamp,
            } => SuccessOut {
                id: *id,
                success: true,
                result,
                timestamp: *timestamp,
            }
            .serialize(serializer),
            Response::Failure { id, error } => FailureOut {
                id: *id,
                success: false,
                error,
            }
            .serialize(serializer),
            Response::Event { id, event } => EventOut { id: *id, event }.serialize(serializer),
        }
    }
}

/// The structured error form, with `type` optional because a few bridges only send a
/// message; `message` is what a user needs, so it stays required.
#[derive(Deserialize)]
struct WireErrorIn {
    #[serde(rename = "type", default)]
    error_type: Option<String>,
    message: String,
    #[serde(default)]
    traceback: Option<String>,
    #[serde(flatten)]
    details: Map<String, Value>,
}

impl<'de> Deserialize<'de> for Response {
    /// Reads the response as a JSON object first (a derived struct would also accept a
    /// JSON array), then applies the leniency rules in one readable place.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;

        let mut map = serde_json::Map::<String, Value>::deserialize(deserializer)?;
        let id = map
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| D::Error::custom("response has no unsigned integer `id`"))?;
        if !map.contains_key("success") {
            if let Some(event) = map.remove("event") {
                return Ok(Response::Event { id, event });
            }
        }
        let success = map
            .get("success")
            .and_then(Value::as_bool)
            .ok_or_else(|| D::Error::custom("response has no boolean `success`"))?;
        if success {
            return Ok(Response::Success {
                id,
                result: map.remove("result").unwrap_or(Value::Null),
                timestamp: map.get("timestamp").and_then(Value::as_f64),
            });
        }
        let error = match map.remove("error") {
            Some(Value::String(message)) => WireError::new("Error", message),
            Some(obj @ Value::Object(_)) => {
                let e = WireErrorIn::deserialize(obj)
                    .map_err(|e| D::Error::custom(format!("bad `error` object: {e}")))?;
                WireError {
                    error_type: e.error_type.unwrap_or_else(|| "Error".to_owned()),
                    message: e.message,
                    traceback: e.traceback,
                    details: e.details,
                }
            }
            None | Some(Value::Null) => {
                return Err(D::Error::custom("failed response has no `error`"))
            }
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "`error` must be an object or a string, got {other}"
                )))
            }
        };
        Ok(Response::Failure { id, error })
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

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e.to_string())
    }
}

/// Length-prefixed JSON codec; `In` is what is decoded, `Out` what is encoded.
/// The host uses `FrameCodec<Response, Request>`, a fake worker the reverse.
///
/// Frames whose body is longer than `max_frame` are refused in both directions; on
/// decode this is decided from the header alone, so an oversized frame is never buffered.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use dspex_actors::protocol::{FrameCodec, Request};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut host = FrameCodec::<Request, Request>::new(1024);
/// let mut buf = BytesMut::new();
/// let req = Request::new(1, "ping", serde_json::json!({}));
/// host.encode(req.clone(), &mut buf).unwrap();
/// assert_eq!(host.decode(&mut buf).unwrap(), Some(req));
/// ```
pub struct FrameCodec<In, Out> {
    max_frame: usize,
    _marker: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    /// A codec refusing frame bodies longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameCodec {
            max_frame,
            _marker: PhantomData,
        }
    }

    /// The largest body this codec accepts, in bytes.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The body limit, also bounded by what the 4-byte header can express.
    fn limit(&self) -> usize {
        self.max_frame.min(u32::MAX as usize)
    }
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl<In, Out> Clone for FrameCodec<In, Out> {
    fn clone(&self) -> Self {
        FrameCodec::new(self.max_frame)
    }
}

impl<In, Out> std::fmt::Debug for FrameCodec<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCodec")
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

/// Parses one frame body. UTF-8 is checked first so that the error names the real
/// problem. serde reports the first problem it meets, which for a document of the wrong
/// kind (`[` where an object is expected) is a type error even when the JSON is also
/// broken further on; so a type error is re-checked for syntax (on the error path only)
/// before it is called a shape error.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    use serde_json::error::Category;

    let text = std::str::from_utf8(body).map_err(|e| FrameError::Utf8(e.to_string()))?;
    serde_json::from_str(text).map_err(|e| match e.classify() {
        Category::Syntax | Category::Eof => FrameError::Json(e.to_string()),
        Category::Io => FrameError::Io(e.to_string()),
        Category::Data => match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Err(syntax) => FrameError::Json(syntax.to_string()),
            Ok(_) => FrameError::Shape(e.to_string()),
        },
    })
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        let Some(header) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > self.limit() {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        let frame_len = HEADER_LEN + len;
        if src.len() < frame_len {
            // One allocation for the rest of the frame instead of repeated growth.
            src.reserve(frame_len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let body = src.split_to(len);
        parse_body(&body).map(Some)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<In>, FrameError> {
        if let Some(item) = self.decode(buf)? {
            return Ok(Some(item));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let expected = match buf.get(..HEADER_LEN) {
            Some(h) => HEADER_LEN + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize,
            None => HEADER_LEN,
        };
        let got = buf.len();
        buf.clear();
        Err(FrameError::Truncated { expected, got })
    }
}

impl<In, Out: Serialize> FrameCodec<In, Out> {
    /// Serialises straight into `dst` behind a placeholder header, then patches the
    /// header: no intermediate buffer, and `dst` is left untouched on error.
    fn encode_ref(&self, item: &Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        let start = dst.len();
        dst.put_u32(0);
        if let Err(e) = serde_json::to_writer((&mut *dst).writer(), item) {
            dst.truncate(start);
            return Err(FrameError::Json(e.to_string()));
        }
        let len = dst.len() - start - HEADER_LEN;
        if len > self.limit() {
            dst.truncate(start);
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        dst[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_ref(&item, dst)
    }
}

impl<'a, In, Out: Serialize> Encoder<&'a Out> for FrameCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: &'a Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_ref(item, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode_response(text: &str) -> Result<Response, FrameError> {
        parse_body(text.as_bytes())
    }

    #[test]
    fn request_timestamp_is_rfc3339_utc() {
        let req = Request::new(1, "ping", json!({}));
        assert!(
            humantime::parse_rfc3339(&req.timestamp).is_ok(),
            "{}",
            req.timestamp
        );
    }

    #[test]
    fn success_without_result_decodes_as_null() {
        let r = decode_response(r#"{"id": 3, "success": true}"#).unwrap();
        assert_eq!(
            r,
            Response::Success {
                id: 3,
                result: Value::Null,
                timestamp: None
            }
        );
    }

    #[test]
    fn string_error_from_older_bridges_becomes_error_type_error() {
        let r = decode_response(r#"{"id": 4, "success": false, "error": "boom"}"#).unwrap();
        assert_eq!(
            r,
            Response::Failure {
                id: 4,
                error: WireError::new("Error", "boom")
            }
        );
    }

    #[test]
    fn structured_error_keeps_type_and_traceback() {
        let r = decode_response(
            r#"{"id": 5, "success": false, "error": {"type": "ValueError", "message": "m", "traceback": "tb"}}"#,
        )
        .unwrap();
        let Response::Failure { error, .. } = r else {
            panic!("expected failure")
        };
        assert_eq!(error.error_type, "ValueError");
        assert_eq!(error.traceback.as_deref(), Some("tb"));
    }

    #[test]
    fn response_without_id_or_success_is_a_shape_error() {
        for text in [
            r#"{"success": true}"#,
            r#"{"id": 1}"#,
            r#"{"id": 1, "success": false}"#,
            r#"{"id": 1, "success": false, "error": 3}"#,
            r#"{"id": -1, "success": true}"#,
            r#"[1, true]"#,
            r#"{"id": 1.5, "success": true}"#,
        ] {
            assert!(
                matches!(decode_response(text), Err(FrameError::Shape(_))),
                "{text}: {:?}",
                decode_response(text)
            );
        }
    }

    #[test]
    fn extra_error_fields_are_kept_as_details() {
        let r = decode_response(
            r#"{"id": 6, "success": false, "error": {"type": "RateLimited", "message": "m", "retry_after": 2.5}}"#,
        )
        .unwrap();
        let Response::Failure { error, .. } = r else {
            panic!("expected failure")
        };
        assert_eq!(error.details.get("retry_after"), Some(&json!(2.5)));
        assert_eq!(
            serde_json::to_value(&error).unwrap(),
            json!({"type": "RateLimited", "message": "m", "retry_after": 2.5})
        );
    }

    #[test]
    fn an_event_frame_is_not_an_answer() {
        let r = decode_response(r#"{"id": 7, "event": {"kind": "progress", "n": 1}}"#).unwrap();
        assert_eq!(
            r,
            Response::Event {
                id: 7,
                event: json!({"kind": "progress", "n": 1})
            }
        );
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id": 7, "event": {"kind": "progress", "n": 1}})
        );
    }

    #[test]
    fn outgoing_request_adds_the_session_without_copying_or_overriding() {
        let args = json!({"x": 1});
        let body = |session, args: &Value| {
            let out = OutgoingRequest {
                id: 3,
                command: "c",
                args,
                session_id: session,
            };
            let v = serde_json::to_value(out).unwrap();
            assert_eq!(
                (v["id"].clone(), v["command"].clone()),
                (json!(3), json!("c"))
            );
            assert!(humantime::parse_rfc3339(v["timestamp"].as_str().unwrap()).is_ok());
            v["args"].clone()
        };
        assert_eq!(body(None, &args), json!({"x": 1}));
        assert_eq!(body(Some("s"), &args), json!({"x": 1, "session_id": "s"}));
        assert_eq!(
            body(Some("s"), &json!({"session_id": "mine"})),
            json!({"session_id": "mine"})
        );
        assert_eq!(body(Some("s"), &Value::Null), json!({"session_id": "s"}));
        assert_eq!(body(Some("s"), &json!([1])), json!([1]));
        assert_eq!(args, json!({"x": 1}), "the caller's args are untouched");
    }

    #[test]
    fn encode_frame_refuses_a_body_over_the_limit() {
        let args = json!({"blob": "x".repeat(100)});
        let out = OutgoingRequest {
            id: 1,
            command: "c",
            args: &args,
            session_id: None,
        };
        assert!(matches!(
            encode_frame(&out, 64),
            Err(FrameError::TooLarge { max: 64, .. })
        ));
        let frame = encode_frame(&out, 4096).unwrap();
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len + HEADER_LEN, frame.len());
    }

    #[test]
    fn non_numeric_timestamp_is_ignored() {
        let r = decode_response(r#"{"id": 1, "success": true, "result": 1, "timestamp": "x"}"#)
            .unwrap();
        assert_eq!(
            r,
            Response::Success {
                id: 1,
                result: json!(1),
                timestamp: None
            }
        );
    }

    #[test]
    fn failure_serialises_in_wire_form() {
        let r = Response::Failure {
            id: 9,
            error: WireError::new("T", "m"),
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id": 9, "success": false, "error": {"type": "T", "message": "m"}})
        );
    }

    #[test]
    fn encoding_over_the_max_is_refused_and_leaves_the_buffer_alone() {
        let mut codec = FrameCodec::<Request, Request>::new(16);
        let mut buf = BytesMut::from(&b"xy"[..]);
        let err = codec
            .encode(Request::new(1, "a-long-command-name", json!({})), &mut buf)
            .unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { max: 16, .. }),
            "{err:?}"
        );
        assert_eq!(&buf[..], b"xy");
    }

    #[test]
    fn oversized_header_is_refused_before_the_body_arrives() {
        let mut codec = FrameCodec::<Response, Request>::new(10);
        let mut buf = BytesMut::from(&11u32.to_be_bytes()[..]);
        assert_eq!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        );
    }
}
