//! One input line in, one output line out.
//!
//! A row is checked entirely in Rust before anything is sent: a line that is not a JSON
//! object fails as `input`, a row whose inputs do not fit the signature fails as
//! `validation`. Only the signature's declared inputs are taken from the row, so rows can
//! carry ids, labels or anything else alongside them.

use dspex::signature::Signature;
use serde::Serialize;
use serde_json::{Map, Value};

/// A row ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The row's `id`, echoed in its output line; `null` when it has none.
    pub id: Value,
    /// The signature's inputs, taken from the row.
    pub inputs: Map<String, Value>,
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

/// Parses input line `line_no` (1-based, for messages) against `signature`.
pub fn parse(line: &[u8], line_no: u64, signature: &Signature) -> Result<Row, Rejected> {
    let input_error = |message: String| Rejected {
        id: Value::Null,
        error: RowError::new("input", format!("line {line_no}: {message}")),
    };
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        input_error(format!(
            "not valid JSON ({e}); each line must be one JSON object"
        ))
    })?;
    let Value::Object(mut object) = value else {
        return Err(input_error(format!(
            "expected a JSON object with the inputs {}, got {}",
            input_names(signature),
            kind_of(&value)
        )));
    };
    let id = object.get("id").cloned().unwrap_or(Value::Null);
    let mut inputs = Map::new();
    for field in &signature.inputs {
        if let Some(value) = object.remove(&field.name) {
            inputs.insert(field.name.clone(), value);
        }
    }
    match signature.validate_inputs(&inputs) {
        Ok(()) => Ok(Row { id, inputs }),
        Err(e) => Err(Rejected {
            id,
            error: RowError::new("validation", format!("line {line_no}: {e}")),
        }),
    }
}

fn input_names(signature: &Signature) -> String {
    let names: Vec<String> = signature
        .inputs
        .iter()
        .map(|f| format!("`{}`", f.name))
        .collect();
    names.join(", ")
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
    outputs: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RowError>,
}

/// The output line (without the newline) for row `index`.
pub fn render(index: u64, id: &Value, result: &Result<Map<String, Value>, RowError>) -> String {
    let line = match result {
        Ok(outputs) => OutputLine {
            index,
            id,
            outputs: Some(outputs),
            error: None,
        },
        Err(error) => OutputLine {
            index,
            id,
            outputs: None,
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

    fn sig() -> Signature {
        "question, context: list[str] -> answer".parse().unwrap()
    }

    #[test]
    fn takes_only_declared_inputs_and_keeps_the_id() {
        let row = parse(
            br#"{"id": "q1", "question": "why?", "context": ["a"], "label": "x"}"#,
            1,
            &sig(),
        )
        .unwrap();
        assert_eq!(row.id, json!("q1"));
        assert_eq!(
            Value::Object(row.inputs),
            json!({"question": "why?", "context": ["a"]})
        );
    }

    #[test]
    fn a_row_without_id_has_a_null_id() {
        let row = parse(br#"{"question": "q", "context": []}"#, 1, &sig()).unwrap();
        assert_eq!(row.id, Value::Null);
    }

    #[test]
    fn malformed_json_is_an_input_error_naming_the_line() {
        let rejected = parse(br#"{"question": "#, 7, &sig()).unwrap_err();
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
        let rejected = parse(b"[1, 2]", 3, &sig()).unwrap_err();
        assert_eq!(rejected.error.kind, "input");
        assert!(rejected.error.message.contains("got an array"));
        assert!(rejected.error.message.contains("`question`, `context`"));
    }

    #[test]
    fn invalid_utf8_is_an_input_error() {
        let rejected = parse(b"{\"question\": \"\xff\"}", 2, &sig()).unwrap_err();
        assert_eq!(rejected.error.kind, "input");
    }

    #[test]
    fn missing_and_mistyped_inputs_are_validation_errors_keeping_the_id() {
        let missing = parse(br#"{"id": 5, "context": []}"#, 4, &sig()).unwrap_err();
        assert_eq!(missing.error.kind, "validation");
        assert_eq!(missing.id, json!(5));
        assert!(missing.error.message.starts_with("line 4: `question`"));
        let mistyped = parse(br#"{"question": "q", "context": "a"}"#, 9, &sig()).unwrap_err();
        assert_eq!(mistyped.error.kind, "validation");
        assert!(mistyped.error.message.contains("`context`"));
    }

    #[test]
    fn output_lines_have_index_id_then_outputs_or_error() {
        let outputs = json!({"answer": "42"}).as_object().unwrap().clone();
        assert_eq!(
            render(3, &json!("a"), &Ok(outputs)),
            r#"{"index":3,"id":"a","outputs":{"answer":"42"}}"#
        );
        assert_eq!(
            render(0, &Value::Null, &Err(RowError::new("input", "line 1: bad"))),
            r#"{"index":0,"id":null,"error":{"kind":"input","message":"line 1: bad"}}"#
        );
    }
}
