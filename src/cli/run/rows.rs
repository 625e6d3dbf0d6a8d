//! One input line in, one output line out.
//!
//! A row is checked entirely in Rust before anything is sent: a line that is not a JSON
//! object fails as `input`, a row whose inputs do not fit the program fails as
//! `validation` (the [`Runner`] validates, once). Only the program's inputs are taken
//! from the row, so rows can carry ids, labels or anything else alongside them.
//!
//! A row's `id` is echoed as it was written: JSON numbers become `f64` once they leave
//! the 64-bit integers, so an id such as `123456789012345678901234` (or `1.10`) is kept as
//! its raw text rather than as a parsed value.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::cli::source::{RowInput, RowOutput, Runner};

/// A row's `id` exactly as the input wrote it (`null` when it has none).
pub type Id = Box<RawValue>;

/// The id of a row without one.
pub fn null_id() -> Id {
    RawValue::from_string("null".into()).expect("null is JSON")
}

/// A row ready to run.
#[derive(Debug, Clone)]
pub struct Row {
    /// The row's `id`, echoed in its output line.
    pub id: Id,
    pub input: RowInput,
}

/// Why a row failed: a stable error kind and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowError {
    pub kind: String,
    pub message: String,
}

impl RowError {
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        RowError {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

impl From<&dspex::Error> for RowError {
    fn from(e: &dspex::Error) -> Self {
        RowError::new(e.kind(), e.to_string())
    }
}

/// A row that failed before it could run keeps its id when the line had one.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub id: Id,
    pub error: RowError,
}

/// Parses input line `line_no` (1-based, for messages) for `runner`.
pub fn parse(line: &[u8], line_no: u64, runner: &Runner) -> Result<Row, Rejected> {
    let (id, object) = parse_object(line, line_no)?;
    match runner.row(object) {
        Ok(input) => Ok(Row { id, input }),
        Err(error) => Err(Rejected {
            id,
            error: RowError::new(error.kind, format!("line {line_no}: {}", error.message)),
        }),
    }
}

/// The JSON object on a line, and its `id`.
pub fn parse_object(line: &[u8], line_no: u64) -> Result<(Id, Map<String, Value>), Rejected> {
    let object = object_of(line, line_no).map_err(|error| Rejected {
        id: null_id(),
        error,
    })?;
    let id = id_of(line, object.get("id"));
    Ok((id, object))
}

/// The JSON object on line `line_no`, or why the line is not one (kind `input`).
pub fn object_of(line: &[u8], line_no: u64) -> Result<Map<String, Value>, RowError> {
    let input_error =
        |message: String| RowError::new("input", format!("line {line_no}: {message}"));
    match serde_json::from_slice(line) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(input_error(format!(
            "expected a JSON object, got {}",
            kind_of(&other)
        ))),
        Err(e) => Err(input_error(format!(
            "not valid JSON ({e}); each line must be one JSON object"
        ))),
    }
}

/// The raw text of the `id` when parsing would change it (a number that is not a 64-bit
/// integer), else the parsed value written back (the common case, without a second parse).
fn id_of(line: &[u8], id: Option<&Value>) -> Id {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: &'a RawValue,
    }
    let exact = |v: &Value| serde_json::value::to_raw_value(v).unwrap_or_else(|_| null_id());
    match id {
        None => null_id(),
        Some(Value::Number(n)) if !n.is_u64() && !n.is_i64() => {
            match serde_json::from_slice::<IdOnly<'_>>(line) {
                Ok(raw) => raw.id.to_owned(),
                Err(_) => exact(&Value::Number(n.clone())),
            }
        }
        Some(value) => exact(value),
    }
}

/// An error line for a row that never got parsed (a line too long to read).
pub fn too_long(index: u64, line_no: u64, limit: u64) -> String {
    render(
        index,
        &null_id(),
        &Err(RowError::new(
            "input",
            format!(
                "line {line_no}: longer than run.max_line_bytes ({limit} bytes); the line was \
                 skipped without being read into memory"
            ),
        )),
    )
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Serialize)]
struct OutputLine<'a> {
    index: u64,
    id: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<dspex::TokenUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RowError>,
}

/// The output line (without the newline) for row `index`: its outputs and, when it made
/// LM calls, their usage summed over models.
pub fn render(index: u64, id: &RawValue, result: &Result<RowOutput, RowError>) -> String {
    let line = match result {
        Ok(output) => OutputLine {
            index,
            id,
            outputs: Some(&output.outputs),
            usage: (!output.usage.is_empty()).then(|| output.usage.total()),
            error: None,
        },
        Err(error) => OutputLine {
            index,
            id,
            outputs: None,
            usage: None,
            error: Some(error),
        },
    };
    // Serialising plain JSON values into a String cannot fail.
    serde_json::to_string(&line).expect("JSON values serialise")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn raw(value: Value) -> Id {
        serde_json::value::to_raw_value(&value).unwrap()
    }

    #[test]
    fn a_row_keeps_its_id_or_gets_null() {
        let (id, object) = parse_object(br#"{"id": "q1", "question": "why?"}"#, 1).unwrap();
        assert_eq!(id.get(), r#""q1""#);
        assert_eq!(object["question"], "why?");
        let (id, _) = parse_object(br#"{"question": "q"}"#, 1).unwrap();
        assert_eq!(id.get(), "null");
    }

    #[test]
    fn numeric_ids_are_echoed_exactly_as_written() {
        for (line, expected) in [
            (&br#"{"id": 9007199254740993}"#[..], "9007199254740993"),
            (br#"{"id": 18446744073709551615}"#, "18446744073709551615"),
            (
                br#"{"id": 123456789012345678901234567890}"#,
                "123456789012345678901234567890",
            ),
            (br#"{"id": -92233720368547758080}"#, "-92233720368547758080"),
            (br#"{"id":1.10, "q": 1}"#, "1.10"),
        ] {
            let (id, _) = parse_object(line, 1).unwrap_or_else(|r| panic!("{:?}", r.error));
            assert_eq!(id.get(), expected);
            let rendered = render(0, &id, &Err(RowError::new("x", "y")));
            assert!(
                rendered.contains(&format!("\"id\":{expected},")),
                "{rendered}"
            );
        }
    }

    #[test]
    fn malformed_json_is_an_input_error_naming_the_line() {
        let rejected = parse_object(br#"{"question": "#, 7).unwrap_err();
        assert_eq!(rejected.error.kind, "input");
        assert!(
            rejected.error.message.starts_with("line 7: not valid JSON"),
            "{}",
            rejected.error.message
        );
        assert_eq!(rejected.id.get(), "null");
    }

    #[test]
    fn a_non_object_is_an_input_error() {
        let rejected = parse_object(b"[1, 2]", 3).unwrap_err();
        assert_eq!(rejected.error.kind, "input");
        assert!(rejected.error.message.contains("got an array"));
    }

    #[test]
    fn invalid_utf8_is_an_input_error() {
        let rejected = parse_object(b"{\"question\": \"\xff\"}", 2).unwrap_err();
        assert_eq!(rejected.error.kind, "input");
    }

    #[test]
    fn output_lines_have_index_id_then_outputs_and_usage_or_error() {
        let output = RowOutput {
            outputs: json!({"answer": "42"}),
            usage: dspex::Usage::default(),
        };
        assert_eq!(
            render(3, &raw(json!("a")), &Ok(output)),
            r#"{"index":3,"id":"a","outputs":{"answer":"42"}}"#
        );
        let usage = dspex::Usage::from_wire(Some(&json!({"m": {
            "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "cost": null, "calls": 1
        }})));
        let output = RowOutput {
            outputs: json!({"answer": "42"}),
            usage,
        };
        assert_eq!(
            render(4, &null_id(), &Ok(output)),
            r#"{"index":4,"id":null,"outputs":{"answer":"42"},"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"cost":null,"calls":1}}"#
        );
        assert_eq!(
            render(0, &null_id(), &Err(RowError::new("input", "line 1: bad"))),
            r#"{"index":0,"id":null,"error":{"kind":"input","message":"line 1: bad"}}"#
        );
    }
}
