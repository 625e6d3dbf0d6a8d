//! One input line in, one output line out.
//!
//! A row is checked entirely in Rust before anything is sent: a line that is not a JSON
//! object fails as `input`, a row whose inputs do not fit the program fails as
//! `validation` (the [`Runner`] validates, once). Only the program's inputs are taken
//! from the row, so rows can carry ids, labels or anything else alongside them.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::cli::source::{RowInput, RowOutput, Runner};

/// A row ready to run.
#[derive(Debug, Clone)]
pub struct Row {
    /// The row's `id`, echoed in its output line; `null` when it has none.
    pub id: Value,
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
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub id: Value,
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
pub fn parse_object(line: &[u8], line_no: u64) -> Result<(Value, Map<String, Value>), Rejected> {
    let input_error = |message: String| Rejected {
        id: Value::Null,
        error: RowError::new("input", format!("line {line_no}: {message}")),
    };
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        input_error(format!(
            "not valid JSON ({e}); each line must be one JSON object"
        ))
    })?;
    let Value::Object(object) = value else {
        return Err(input_error(format!(
            "expected a JSON object, got {}",
            kind_of(&value)
        )));
    };
    let id = object.get("id").cloned().unwrap_or(Value::Null);
    Ok((id, object))
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
    id: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<dspex::TokenUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RowError>,
}

/// The output line (without the newline) for row `index`: its outputs and, when it made
/// LM calls, their usage summed over models.
pub fn render(index: u64, id: &Value, result: &Result<RowOutput, RowError>) -> String {
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

    #[test]
    fn a_row_keeps_its_id_or_gets_null() {
        let (id, object) = parse_object(br#"{"id": "q1", "question": "why?"}"#, 1).unwrap();
        assert_eq!(id, json!("q1"));
        assert_eq!(object["question"], "why?");
        let (id, _) = parse_object(br#"{"question": "q"}"#, 1).unwrap();
        assert_eq!(id, Value::Null);
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
        assert_eq!(rejected.id, Value::Null);
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
            render(3, &json!("a"), &Ok(output)),
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
            render(4, &json!(null), &Ok(output)),
            r#"{"index":4,"id":null,"outputs":{"answer":"42"},"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"cost":null,"calls":1}}"#
        );
        assert_eq!(
            render(0, &Value::Null, &Err(RowError::new("input", "line 1: bad"))),
            r#"{"index":0,"id":null,"error":{"kind":"input","message":"line 1: bad"}}"#
        );
    }
}
