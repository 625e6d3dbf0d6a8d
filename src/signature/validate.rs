//! Checking values against a signature: inputs before they are sent to Python (strict,
//! nothing converted) and outputs when they come back (lossless conversions only).
//! Errors carry a path to the offending value so a user can find it in a large row.

use serde_json::{Map, Value};

use super::{FieldType, LiteralValue, Signature};
use crate::config::closest;

/// A value that does not fit the signature.
///
/// `Display` is `` `field`: message ``; the message says what was expected, what was
/// found, and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.field, .message))]
#[non_exhaustive]
pub struct ValidationError {
    /// Path of the offending value: `question`, `context[2]`, `meta.source`,
    /// `meta["a key"]`; empty when the whole object is wrong.
    pub field: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

fn render(field: &str, message: &str) -> String {
    if field.is_empty() {
        message.to_owned()
    } else {
        format!("`{field}`: {message}")
    }
}

impl ValidationError {
    /// An error about the value at `field` (a path; empty for the whole object).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Which way the value travels; it decides what advice an error gives.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Input,
    Output,
}

pub(super) fn validate_inputs(
    signature: &Signature,
    inputs: &Map<String, Value>,
) -> Result<(), ValidationError> {
    let declared = || names(signature.inputs.iter().map(|f| f.name.as_str()));
    if let Some(unknown) = inputs.keys().find(|k| signature.input(k).is_none()) {
        let hint = closest(unknown, signature.inputs.iter().map(|f| f.name.as_str()))
            .map(|name| format!(" (did you mean `{name}`?)"))
            .unwrap_or_default();
        return Err(ValidationError::new(
            unknown.as_str(),
            format!(
                "not an input of this signature{hint}; remove it or use one of: {}",
                declared()
            ),
        ));
    }
    for field in &signature.inputs {
        match inputs.get(&field.name) {
            Some(value) => check(&field.ty, value, &field.name)?,
            None if field.ty.is_optional() => {}
            None => {
                return Err(ValidationError::new(
                    field.name.as_str(),
                    format!(
                        "required input is missing; add it as {} (the inputs are: {})",
                        expected(&field.ty),
                        declared()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Strict type check: JSON kinds must match exactly, except that `float` takes any
/// number.
fn check(ty: &FieldType, value: &Value, path: &str) -> Result<(), ValidationError> {
    match (ty, value) {
        (FieldType::Str, Value::String(_))
        | (FieldType::Float, Value::Number(_))
        | (FieldType::Bool, Value::Bool(_))
        | (FieldType::Optional(_), Value::Null) => Ok(()),
        (FieldType::Int, Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(()),
        (FieldType::List(inner), Value::Array(items)) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| check(inner, item, &index_path(path, i))),
        (FieldType::Dict(inner), Value::Object(entries)) => entries
            .iter()
            .try_for_each(|(key, item)| check(inner, item, &key_path(path, key))),
        (FieldType::Optional(inner), _) => check(inner, value, path).map_err(|e| {
            // A mismatch of the value itself should mention that null is also fine;
            // one deeper inside keeps its own, more precise, message.
            if e.field == path {
                mismatch(ty, value, path, Side::Input)
            } else {
                e
            }
        }),
        (FieldType::Literal(options), _) if options.iter().any(|o| o.to_json() == *value) => Ok(()),
        _ => Err(mismatch(ty, value, path, Side::Input)),
    }
}

pub(super) fn decode_outputs(
    signature: &Signature,
    outputs: &Value,
) -> Result<Map<String, Value>, ValidationError> {
    let Value::Object(outputs) = outputs else {
        return Err(ValidationError::new(
            "",
            format!(
                "the program returned {} instead of an object of outputs; this is a bug in the \
                 bridge or a user command, please report it",
                describe(outputs)
            ),
        ));
    };
    let mut decoded = Map::new();
    for field in &signature.outputs {
        let value = match outputs.get(&field.name) {
            Some(value) => coerce(&field.ty, value, &field.name)?,
            None if field.ty.is_optional() => Value::Null,
            None => {
                return Err(ValidationError::new(
                    field.name.as_str(),
                    format!(
                        "the program returned no value for this output (it returned: {}); \
                         check the LM's answer, or declare the output Optional",
                        names(outputs.keys().map(String::as_str))
                    ),
                ));
            }
        };
        decoded.insert(field.name.clone(), value);
    }
    let dropped: Vec<&str> = outputs
        .keys()
        .filter(|k| signature.output(k).is_none())
        .map(String::as_str)
        .collect();
    if !dropped.is_empty() {
        log::debug!("dropping undeclared outputs: {}", dropped.join(", "));
    }
    Ok(decoded)
}

/// Converts `value` to `ty` where no information is lost, or explains why not.
fn coerce(ty: &FieldType, value: &Value, path: &str) -> Result<Value, ValidationError> {
    let fail = || mismatch(ty, value, path, Side::Output);
    match (ty, value) {
        (FieldType::Str, Value::String(_)) => Ok(value.clone()),
        (FieldType::Str, Value::Number(n)) => Ok(Value::String(n.to_string())),
        (FieldType::Str, Value::Bool(b)) => Ok(Value::String(b.to_string())),
        (FieldType::Int, Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(value.clone()),
        (FieldType::Int, Value::Number(n)) => n.as_f64().and_then(integral).ok_or_else(fail),
        (FieldType::Int, Value::String(s)) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .map(Value::from)
                .or_else(|| s.parse::<f64>().ok().and_then(integral))
                .ok_or_else(fail)
        }
        (FieldType::Float, Value::Number(n)) => n.as_f64().map(Value::from).ok_or_else(fail),
        (FieldType::Float, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::from)
            .ok_or_else(fail),
        (FieldType::Bool, Value::Bool(_)) => Ok(value.clone()),
        (FieldType::Bool, Value::String(s)) => match s.trim() {
            "true" | "True" => Ok(Value::Bool(true)),
            "false" | "False" => Ok(Value::Bool(false)),
            _ => Err(fail()),
        },
        (FieldType::List(inner), Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| coerce(inner, item, &index_path(path, i)))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        (FieldType::Dict(inner), Value::Object(entries)) => entries
            .iter()
            .map(|(key, item)| Ok((key.clone(), coerce(inner, item, &key_path(path, key))?)))
            .collect::<Result<Map<_, _>, _>>()
            .map(Value::Object),
        (FieldType::Optional(_), Value::Null) => Ok(Value::Null),
        (FieldType::Optional(inner), _) => {
            coerce(inner, value, path).map_err(|e| if e.field == path { fail() } else { e })
        }
        (FieldType::Literal(options), _) if options.iter().any(|o| o.to_json() == *value) => {
            Ok(value.clone())
        }
        (FieldType::Literal(options), _) => options
            .iter()
            .find_map(|option| {
                // Each option converts the value to its own scalar type, so `"2"`
                // matches `Literal[2]` and `1.0` matches `Literal[1]`.
                let scalar = match option {
                    LiteralValue::Str(_) => FieldType::Str,
                    LiteralValue::Int(_) => FieldType::Int,
                    LiteralValue::Bool(_) => FieldType::Bool,
                };
                coerce(&scalar, value, path)
                    .ok()
                    .filter(|converted| *converted == option.to_json())
            })
            .ok_or_else(fail),
        _ => Err(fail()),
    }
}

/// `f` as a JSON integer if it has no fractional part and fits in an `i64`.
fn integral(f: f64) -> Option<Value> {
    // 2^63 is exactly representable; anything at or above it does not fit.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f)).then(|| Value::from(f as i64))
}

fn mismatch(ty: &FieldType, value: &Value, path: &str, side: Side) -> ValidationError {
    let advice = match side {
        Side::Output => {
            "; the LM's answer does not fit the signature: check the output's type, or make it \
             Optional if the answer may be missing"
                .to_owned()
        }
        Side::Input => input_advice(ty, value),
    };
    ValidationError::new(
        path,
        format!("expected {}, got {}{advice}", expected(ty), describe(value)),
    )
}

/// A concrete fix for the common input mistakes.
fn input_advice(ty: &FieldType, value: &Value) -> String {
    let ty = match ty {
        FieldType::Optional(inner) => inner,
        other => other,
    };
    let advice = match (ty, value) {
        (FieldType::Int, Value::Number(_)) => "write it without a fractional part",
        (FieldType::Str, Value::Number(_) | Value::Bool(_)) => {
            "put it in quotes to pass it as text"
        }
        (FieldType::Int | FieldType::Float, Value::String(_)) => "write the number without quotes",
        (FieldType::Bool, Value::String(_)) => "write true or false without quotes",
        (FieldType::List(_), Value::String(_) | Value::Number(_) | Value::Bool(_)) => {
            "wrap it in [...] to pass a list"
        }
        (_, Value::Null) => "give a value, or declare the input Optional",
        _ => "change the value or the signature's type",
    };
    format!("; {advice}")
}

/// What a value of `ty` looks like in JSON, for "expected ..." messages.
fn expected(ty: &FieldType) -> String {
    match ty {
        FieldType::Str => "a string".to_owned(),
        FieldType::Int => "an integer".to_owned(),
        FieldType::Float => "a number".to_owned(),
        FieldType::Bool => "true or false".to_owned(),
        FieldType::List(_) => format!("a list ({ty})"),
        FieldType::Dict(_) => format!("an object ({ty})"),
        FieldType::Optional(inner) => format!("{} or null", expected(inner)),
        FieldType::Literal(options) => format!(
            "one of {}",
            options
                .iter()
                .map(|o| o.to_json().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A short description of a JSON value for messages; long strings are cut.
fn describe(value: &Value) -> String {
    const MAX_CHARS: usize = 40;
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.chars().count() > MAX_CHARS => {
            let cut: String = s.chars().take(MAX_CHARS).collect();
            format!("the string {}...", Value::String(cut))
        }
        Value::String(s) => format!("the string {}", Value::String(s.clone())),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

fn index_path(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

fn key_path(path: &str, key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        format!("{path}.{key}")
    } else {
        format!("{path}[{}]", Value::String(key.to_owned()))
    }
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let list: Vec<&str> = names.collect();
    if list.is_empty() {
        "nothing".to_owned()
    } else {
        list.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sig(source: &str) -> Signature {
        Signature::parse(source).unwrap()
    }

    fn inputs(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("test inputs must be an object"),
        }
    }

    fn input_err(source: &str, value: Value) -> ValidationError {
        sig(source).validate_inputs(&inputs(value)).unwrap_err()
    }

    fn output_err(source: &str, value: Value) -> ValidationError {
        sig(source).decode_outputs(&value).unwrap_err()
    }

    fn decoded(source: &str, value: Value) -> Value {
        Value::Object(sig(source).decode_outputs(&value).unwrap())
    }

    #[test]
    fn valid_inputs_of_every_type_pass() {
        let s = sig(
            r#"a: str, b: int, c: float, d: bool, e: list[int], f: dict[str, bool], g: Optional[str], h: Literal["x", 2, True] -> out"#,
        );
        let ok = |v: Value| s.validate_inputs(&inputs(v));
        ok(json!({"a": "x", "b": -3, "c": 1, "d": false, "e": [], "f": {"k": true}, "g": null, "h": "x"}))
            .unwrap();
        ok(json!({"a": "", "b": u64::MAX, "c": 0.5, "d": true, "e": [1, 2], "f": {}, "g": "y", "h": 2}))
            .unwrap();
        // An optional input may be left out entirely.
        ok(json!({"a": "", "b": 0, "c": 0.0, "d": true, "e": [], "f": {}, "h": true})).unwrap();
    }

    #[test]
    fn missing_required_input_names_the_field_and_the_inputs() {
        let e = input_err(
            "context: list[str], question -> answer",
            json!({"context": []}),
        );
        assert_eq!(e.field, "question");
        assert_eq!(
            e.to_string(),
            "`question`: required input is missing; add it as a string (the inputs are: context, question)"
        );
    }

    #[test]
    fn unknown_input_is_reported_before_the_missing_one_it_replaces() {
        let e = input_err(
            "context, question -> answer",
            json!({"context": "", "qestion": "?"}),
        );
        assert_eq!(e.field, "qestion");
        assert_eq!(
            e.message,
            "not an input of this signature (did you mean `question`?); remove it or use one of: context, question"
        );
        let e = input_err("q -> a", json!({"q": "", "zzzzzz": 1}));
        assert!(!e.message.contains("did you mean"), "{e}");
    }

    #[test]
    fn int_accepts_json_integers_only() {
        let e = input_err("n: int -> a", json!({"n": 3.0}));
        assert_eq!(e.field, "n");
        assert_eq!(
            e.message,
            "expected an integer, got the number 3.0; write it without a fractional part"
        );
        let e = input_err("n: int -> a", json!({"n": "3"}));
        assert!(
            e.message.ends_with("write the number without quotes"),
            "{e}"
        );
    }

    #[test]
    fn scalar_mismatches_explain_the_fix() {
        for (source, value, expected) in [
            (
                "x: str -> a",
                json!(5),
                "expected a string, got the number 5; put it in quotes",
            ),
            (
                "x: float -> a",
                json!("0.5"),
                "expected a number, got the string \"0.5\"",
            ),
            (
                "x: bool -> a",
                json!("yes"),
                "expected true or false, got the string \"yes\"; write true or false",
            ),
            (
                "x: list[str] -> a",
                json!("one"),
                "expected a list (list[str]), got the string \"one\"; wrap it in [...]",
            ),
            (
                "x: dict[str, int] -> a",
                json!([1]),
                "expected an object (dict[str, int]), got a list",
            ),
            (
                "x: str -> a",
                json!(null),
                "expected a string, got null; give a value, or declare the input Optional",
            ),
        ] {
            let e = input_err(source, json!({ "x": value }));
            assert_eq!(e.field, "x");
            assert!(e.message.starts_with(expected), "{source}: {e}");
        }
    }

    #[test]
    fn optional_accepts_null_and_mentions_it_on_mismatch() {
        sig("x: Optional[int] -> a")
            .validate_inputs(&inputs(json!({"x": null})))
            .unwrap();
        let e = input_err("x: Optional[int] -> a", json!({"x": 1.5}));
        assert_eq!(
            e.message,
            "expected an integer or null, got the number 1.5; write it without a fractional part"
        );
    }

    #[test]
    fn literal_must_match_one_option_exactly() {
        let e = input_err(r#"x: Literal["a", 1, False] -> y"#, json!({"x": "b"}));
        assert!(
            e.message
                .starts_with(r#"expected one of "a", 1, false, got the string "b""#),
            "{e}"
        );
        // `1` as a string is not the integer option.
        input_err(r#"x: Literal["a", 1] -> y"#, json!({"x": "1"}));
    }

    #[test]
    fn nested_values_are_checked_with_a_path() {
        let e = input_err("context: list[str] -> a", json!({"context": ["a", "b", 3]}));
        assert_eq!(e.field, "context[2]");
        assert!(e
            .to_string()
            .starts_with("`context[2]`: expected a string, got the number 3"));
        let e = input_err(
            "meta: dict[str, list[Optional[int]]] -> a",
            json!({"meta": {"ok": [1, null], "bad key": [1, "x"]}}),
        );
        assert_eq!(e.field, r#"meta["bad key"][1]"#);
        let e = input_err(
            "meta: Optional[dict[str, int]] -> a",
            json!({"meta": {"n": 0.5}}),
        );
        assert_eq!(e.field, "meta.n");
        assert!(e.message.starts_with("expected an integer, got"), "{e}");
    }

    #[test]
    fn long_strings_are_cut_in_messages() {
        let e = input_err("n: int -> a", json!({ "n": "x".repeat(100) }));
        assert!(
            e.message.contains(&format!("\"{}\"...", "x".repeat(40))),
            "{e}"
        );
    }

    #[test]
    fn decode_keeps_only_declared_outputs() {
        assert_eq!(
            decoded(
                "q -> answer",
                json!({"answer": "4", "reasoning": "because"})
            ),
            json!({"answer": "4"})
        );
    }

    #[test]
    fn decode_converts_lossless_cases() {
        assert_eq!(
            decoded(
                "q -> a: int, b: int, c: float, d: float, e: bool, f: str, g: str, h: int",
                json!({"a": 3.0, "b": " 42 ", "c": 1, "d": "0.5", "e": "True", "f": 2.5, "g": false, "h": "7.0"}),
            ),
            json!({"a": 3, "b": 42, "c": 1.0, "d": 0.5, "e": true, "f": "2.5", "g": "false", "h": 7})
        );
    }

    #[test]
    fn decode_refuses_lossy_conversions() {
        for (ty, value) in [
            ("int", json!(2.5)),
            ("int", json!("2.5")),
            ("int", json!(1e19)),
            ("float", json!("NaN")),
            ("float", json!("inf")),
            ("float", json!(true)),
            ("bool", json!(1)),
            ("bool", json!("yes")),
            ("str", json!(["a"])),
            ("list[int]", json!("[1]")),
        ] {
            let e = output_err(&format!("q -> x: {ty}"), json!({ "x": value }));
            assert_eq!(e.field, "x", "{ty} {value}");
            assert!(e.message.contains("the LM's answer does not fit"), "{e}");
        }
    }

    #[test]
    fn decode_checks_nested_values_and_literals() {
        assert_eq!(
            decoded(
                r#"q -> tags: list[Literal["a", 2]], scores: dict[str, float], note: Optional[int]"#,
                json!({"tags": ["a", "2", 2.0], "scores": {"x": "1.5"}, "note": null}),
            ),
            json!({"tags": ["a", 2, 2], "scores": {"x": 1.5}, "note": null})
        );
        let e = output_err("q -> tags: list[int]", json!({"tags": [1, "x"]}));
        assert_eq!(e.field, "tags[1]");
    }

    #[test]
    fn decode_prefers_an_exact_literal_match_over_a_conversion() {
        let source = r#"q -> x: Literal[1, "1", "true", True]"#;
        assert_eq!(decoded(source, json!({"x": "1"})), json!({"x": "1"}));
        assert_eq!(decoded(source, json!({"x": true})), json!({"x": true}));
        assert_eq!(decoded(source, json!({"x": 1.0})), json!({"x": 1}));
    }

    #[test]
    fn decode_fills_missing_optional_outputs_with_null() {
        assert_eq!(
            decoded("q -> a, b: Optional[str]", json!({"a": "x"})),
            json!({"a": "x", "b": null})
        );
    }

    #[test]
    fn decode_reports_a_missing_output_and_what_came_back() {
        let e = output_err(
            "q -> answer, confidence: float",
            json!({"answer": "x", "conf": 0.5}),
        );
        assert_eq!(e.field, "confidence");
        assert!(e.message.contains("(it returned: answer, conf)"), "{e}");
    }

    #[test]
    fn decode_rejects_a_non_object() {
        let e = output_err("q -> a", json!(["a"]));
        assert_eq!(e.field, "");
        assert!(e
            .to_string()
            .starts_with("the program returned a list instead of an object"));
    }
}
