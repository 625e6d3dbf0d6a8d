//! The JSON faces of a signature: the structured form users may write, the wire form the
//! Python bridge builds programs from, and JSON Schemas for tools that want one. They
//! live together because the wire form is also accepted as structured input, so the two
//! must stay inverse of each other.

use serde_json::{json, Map, Value};

use super::{
    parse, Field, FieldType, LiteralValue, Signature, SignatureError, MAX_TYPE_DEPTH, TOO_DEEP,
};

const SIGNATURE_KEYS: &[&str] = &["name", "instructions", "inputs", "outputs"];
const FIELD_KEYS: &[&str] = &["name", "type", "description"];

pub(super) fn from_json(value: &Value) -> Result<Signature, SignatureError> {
    let object = match value {
        Value::String(text) => return Signature::parse(text),
        Value::Object(object) => object,
        other => {
            return Err(SignatureError::new(format!(
                "a signature must be a string like \"question -> answer\" or an object with \
                 \"inputs\" and \"outputs\", got {}",
                kind(other)
            )));
        }
    };
    reject_unknown_keys(object, SIGNATURE_KEYS, "the signature")?;
    let name = optional_string(object, "name", "the signature's `name`")?;
    if let Some(name) = &name {
        check_class_name(name)?;
    }
    let signature = Signature {
        name,
        instructions: optional_string(object, "instructions", "the signature's `instructions`")?,
        inputs: fields(object, "inputs")?,
        outputs: fields(object, "outputs")?,
    };
    signature.check_fields()?;
    Ok(signature)
}

/// The Python side turns the name into a class name, so it must be an identifier.
fn check_class_name(name: &str) -> Result<(), SignatureError> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(SignatureError::new(format!(
            "signature name {name:?} must be an identifier (letters, digits, '_'), like \"QuestionAnswer\""
        )))
    }
}

fn fields(object: &Map<String, Value>, side: &str) -> Result<Vec<Field>, SignatureError> {
    let list = match object.get(side) {
        Some(Value::Array(list)) => list,
        None => {
            return Err(SignatureError::new(format!(
                "the signature has no \"{side}\"; give a list of fields like [{{\"name\": \"question\"}}]"
            )));
        }
        Some(other) => {
            return Err(SignatureError::new(format!(
                "\"{side}\" must be a list of fields, got {}",
                kind(other)
            )));
        }
    };
    list.iter()
        .enumerate()
        .map(|(index, item)| field(item, &format!("{side}[{index}]")))
        .collect()
}

fn field(item: &Value, location: &str) -> Result<Field, SignatureError> {
    let Value::Object(object) = item else {
        return Err(SignatureError::new(format!(
            "{location} must be an object like {{\"name\": \"question\", \"type\": \"str\"}}, got {}",
            kind(item)
        )));
    };
    reject_unknown_keys(object, FIELD_KEYS, location)?;
    let name = match object.get("name") {
        Some(Value::String(name)) => name.clone(),
        None => {
            return Err(SignatureError::new(format!("{location} has no \"name\"")));
        }
        Some(other) => {
            return Err(SignatureError::new(format!(
                "{location}.name must be a string, got {}",
                kind(other)
            )));
        }
    };
    let ty = match object.get("type") {
        None | Some(Value::Null) => FieldType::Str,
        Some(ty) => wire_type(ty, &format!("{location}.type"), 0)?,
    };
    Ok(Field {
        name,
        ty,
        description: optional_string(object, "description", &format!("{location}.description"))?,
    })
}

/// A type in the string syntax or in the wire form, `depth` containers down. Refuses
/// the level past [`MAX_TYPE_DEPTH`] before descending into it, so the recursion stays
/// bounded however deep the JSON value is.
fn wire_type(value: &Value, location: &str, depth: usize) -> Result<FieldType, SignatureError> {
    let object = match value {
        Value::String(text) => {
            let ty = parse::parse_type(text).map_err(|mut e| {
                e.message = format!("{location}: {}", e.message);
                e
            })?;
            if depth + ty.depth() > MAX_TYPE_DEPTH {
                return Err(SignatureError::new(format!("{location}: {TOO_DEEP}")));
            }
            return Ok(ty);
        }
        Value::Object(object) if object.len() == 1 => object,
        other => {
            return Err(SignatureError::new(format!(
                "{location} must be a type such as \"list[str]\" or {{\"list\": \"str\"}}, got {}",
                kind(other)
            )));
        }
    };
    let (key, inner) = object.iter().next().expect("object has one entry");
    if matches!(key.as_str(), "list" | "dict" | "optional") && depth >= MAX_TYPE_DEPTH {
        return Err(SignatureError::new(format!("{location}: {TOO_DEEP}")));
    }
    let nested = |k: &str| wire_type(inner, &format!("{location}.{k}"), depth + 1);
    match key.as_str() {
        "list" => Ok(FieldType::list(nested("list")?)),
        "dict" => Ok(FieldType::dict(nested("dict")?)),
        "optional" => Ok(FieldType::optional(nested("optional")?)),
        "literal" => {
            let Value::Array(values) = inner else {
                return Err(SignatureError::new(format!(
                    "{location}.literal must be a list of values, got {}",
                    kind(inner)
                )));
            };
            if values.is_empty() {
                return Err(SignatureError::new(format!(
                    "{location}.literal needs at least one value"
                )));
            }
            values
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(LiteralValue::Str(s.clone())),
                    Value::Bool(b) => Ok(LiteralValue::Bool(*b)),
                    Value::Number(n) if n.is_i64() => Ok(LiteralValue::Int(n.as_i64().unwrap_or_default())),
                    other => Err(SignatureError::new(format!(
                        "{location}.literal: only strings, integers that fit in 64 bits and booleans are allowed, got {other}"
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(FieldType::Literal)
        }
        other => Err(SignatureError::new(format!(
            "{location}: unknown type key \"{other}\"; expected \"list\", \"dict\", \"optional\" or \"literal\""
        ))),
    }
}

fn optional_string(
    object: &Map<String, Value>,
    key: &str,
    location: &str,
) -> Result<Option<String>, SignatureError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(SignatureError::new(format!(
            "{location} must be a string, got {}",
            kind(other)
        ))),
    }
}

fn reject_unknown_keys(
    object: &Map<String, Value>,
    known: &[&str],
    location: &str,
) -> Result<(), SignatureError> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(SignatureError::new(format!(
            "unknown key \"{unknown}\" in {location}; expected {}",
            known
                .iter()
                .map(|k| format!("\"{k}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        None => Ok(()),
    }
}

/// How a JSON value is named in messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

pub(super) fn to_wire(signature: &Signature) -> Value {
    let side = |fields: &[Field]| -> Value {
        fields
            .iter()
            .map(|f| {
                json!({
                    "name": f.name,
                    "type": wire_type_of(&f.ty),
                    "description": f.description,
                })
            })
            .collect()
    };
    json!({
        "name": signature.name,
        "instructions": signature.instructions,
        "inputs": side(&signature.inputs),
        "outputs": side(&signature.outputs),
    })
}

fn wire_type_of(ty: &FieldType) -> Value {
    match ty {
        FieldType::Str => json!("str"),
        FieldType::Int => json!("int"),
        FieldType::Float => json!("float"),
        FieldType::Bool => json!("bool"),
        FieldType::List(inner) => json!({ "list": wire_type_of(inner) }),
        FieldType::Dict(inner) => json!({ "dict": wire_type_of(inner) }),
        FieldType::Optional(inner) => json!({ "optional": wire_type_of(inner) }),
        FieldType::Literal(values) => {
            json!({ "literal": values.iter().map(LiteralValue::to_json).collect::<Vec<_>>() })
        }
    }
}

/// A JSON Schema for an object holding `fields` (one side of `signature`).
pub(super) fn object_schema(signature: &Signature, fields: &[Field], side: &str) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for field in fields {
        let mut schema = type_schema(&field.ty);
        if let (Some(description), Value::Object(schema)) = (&field.description, &mut schema) {
            schema.insert("description".into(), json!(description));
        }
        properties.insert(field.name.clone(), schema);
        if !field.ty.is_optional() {
            required.push(json!(field.name));
        }
    }
    let mut schema = Map::new();
    schema.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    if let Some(name) = &signature.name {
        schema.insert("title".into(), json!(format!("{name} {side}")));
    }
    if let Some(instructions) = &signature.instructions {
        schema.insert("description".into(), json!(instructions));
    }
    schema.insert("type".into(), json!("object"));
    schema.insert("properties".into(), Value::Object(properties));
    schema.insert("required".into(), Value::Array(required));
    schema.insert("additionalProperties".into(), json!(false));
    Value::Object(schema)
}

fn type_schema(ty: &FieldType) -> Value {
    match ty {
        FieldType::Str => json!({ "type": "string" }),
        FieldType::Int => json!({ "type": "integer" }),
        FieldType::Float => json!({ "type": "number" }),
        FieldType::Bool => json!({ "type": "boolean" }),
        FieldType::List(inner) => json!({ "type": "array", "items": type_schema(inner) }),
        FieldType::Dict(inner) => {
            json!({ "type": "object", "additionalProperties": type_schema(inner) })
        }
        FieldType::Optional(inner) => {
            json!({ "anyOf": [type_schema(inner), { "type": "null" }] })
        }
        FieldType::Literal(values) => {
            json!({ "enum": values.iter().map(LiteralValue::to_json).collect::<Vec<_>>() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(value: Value) -> SignatureError {
        Signature::from_json(&value).unwrap_err()
    }

    #[test]
    fn structured_form_reads_every_key() {
        let sig = Signature::from_json(&json!({
            "name": "QA",
            "instructions": "Answer briefly.",
            "inputs": [
                {"name": "context", "type": "list[str]", "description": "passages"},
                {"name": "question"},
            ],
            "outputs": [{"name": "answer", "type": null, "description": null}],
        }))
        .unwrap();
        assert_eq!(sig.name.as_deref(), Some("QA"));
        assert_eq!(sig.instructions.as_deref(), Some("Answer briefly."));
        assert_eq!(
            sig.inputs,
            vec![
                Field::new("context", FieldType::list(FieldType::Str)).with_description("passages"),
                Field::new("question", FieldType::Str),
            ]
        );
        assert_eq!(sig.outputs, vec![Field::new("answer", FieldType::Str)]);
    }

    #[test]
    fn json_string_holds_the_string_form() {
        let sig = Signature::from_json(&json!("q: int -> a")).unwrap();
        assert_eq!(sig, Signature::parse("q: int -> a").unwrap());
    }

    #[test]
    fn wire_form_reads_back_to_the_same_signature() {
        let sig = Signature::parse(
            r#"a: dict[str, Optional[list[int]]], b: Literal["x", 2, False] -> c: float, d: bool"#,
        )
        .unwrap()
        .with_name("Sig")
        .with_instructions("Do it.");
        let mut sig = sig;
        sig.outputs[0].description = Some("a score".into());
        assert_eq!(Signature::from_json(&sig.to_wire()).unwrap(), sig);
    }

    #[test]
    fn to_wire_writes_nulls_and_nested_types() {
        let sig =
            Signature::parse(r#"a: Optional[dict[str, list[bool]]] -> b: Literal["x", 1, True]"#)
                .unwrap();
        assert_eq!(
            sig.to_wire(),
            json!({
                "name": null,
                "instructions": null,
                "inputs": [{"name": "a", "type": {"optional": {"dict": {"list": "bool"}}}, "description": null}],
                "outputs": [{"name": "b", "type": {"literal": ["x", 1, true]}, "description": null}],
            })
        );
    }

    #[test]
    fn type_errors_name_the_location_and_keep_the_caret_source() {
        let e = err(
            json!({"inputs": [{"name": "q"}, {"name": "c", "type": "list[strr]"}], "outputs": [{"name": "a"}]}),
        );
        assert!(
            e.message.starts_with("inputs[1].type: unknown type `strr`"),
            "{e}"
        );
        assert_eq!(e.source, "list[strr]");
        assert_eq!(e.position, Some(5));
    }

    #[test]
    fn structural_errors_are_named() {
        for (value, expected) in [
            (json!(3), "got a number"),
            (json!({"inputs": [{"name": "q"}]}), "has no \"outputs\""),
            (
                json!({"inputs": "q", "outputs": []}),
                "\"inputs\" must be a list",
            ),
            (
                json!({"input": [], "outputs": []}),
                "unknown key \"input\" in the signature",
            ),
            (
                json!({"inputs": [{"name": "q", "typ": "int"}], "outputs": [{"name": "a"}]}),
                "unknown key \"typ\" in inputs[0]",
            ),
            (
                json!({"inputs": ["q"], "outputs": [{"name": "a"}]}),
                "inputs[0] must be an object",
            ),
            (
                json!({"inputs": [{"type": "int"}], "outputs": [{"name": "a"}]}),
                "inputs[0] has no \"name\"",
            ),
            (
                json!({"inputs": [{"name": 1}], "outputs": [{"name": "a"}]}),
                "inputs[0].name must be a string",
            ),
            (
                json!({"inputs": [{"name": "q", "description": 5}], "outputs": [{"name": "a"}]}),
                "inputs[0].description must be a string",
            ),
            (
                json!({"inputs": [], "outputs": [{"name": "a"}]}),
                "at least one input",
            ),
            (
                json!({"inputs": [{"name": "a"}], "outputs": [{"name": "a"}]}),
                "`a` is used twice",
            ),
            (
                json!({"inputs": [{"name": "a b"}], "outputs": [{"name": "c"}]}),
                "not a valid field name",
            ),
            (
                json!({"name": "my sig", "inputs": [{"name": "q"}], "outputs": [{"name": "a"}]}),
                "must be an identifier",
            ),
            (
                json!({"instructions": ["x"], "inputs": [{"name": "q"}], "outputs": [{"name": "a"}]}),
                "`instructions` must be a string",
            ),
            (
                json!({"inputs": [{"name": "q", "type": {"tuple": "int"}}], "outputs": [{"name": "a"}]}),
                "inputs[0].type: unknown type key \"tuple\"",
            ),
            (
                json!({"inputs": [{"name": "q", "type": {"list": 3}}], "outputs": [{"name": "a"}]}),
                "inputs[0].type.list must be a type",
            ),
            (
                json!({"inputs": [{"name": "q", "type": {"literal": []}}], "outputs": [{"name": "a"}]}),
                "needs at least one value",
            ),
            (
                json!({"inputs": [{"name": "q", "type": {"literal": [1.5]}}], "outputs": [{"name": "a"}]}),
                "only strings, integers",
            ),
        ] {
            let e = err(value.clone());
            assert!(e.message.contains(expected), "{value}: {e}");
        }
    }

    #[test]
    fn input_schema_lists_properties_required_and_descriptions() {
        let mut sig = Signature::parse(
            r#"context: list[str], hint: Optional[str], mode: Literal["a", 1], meta: dict[str, float], n: int, flag: bool -> answer"#,
        )
        .unwrap()
        .with_name("QA")
        .with_instructions("Answer.");
        sig.inputs[0].description = Some("passages".into());
        sig.inputs[1].description = Some("optional hint".into());
        assert_eq!(
            sig.input_schema(),
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "QA inputs",
                "description": "Answer.",
                "type": "object",
                "properties": {
                    "context": {"type": "array", "items": {"type": "string"}, "description": "passages"},
                    "hint": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "optional hint"},
                    "mode": {"enum": ["a", 1]},
                    "meta": {"type": "object", "additionalProperties": {"type": "number"}},
                    "n": {"type": "integer"},
                    "flag": {"type": "boolean"},
                },
                "required": ["context", "mode", "meta", "n", "flag"],
                "additionalProperties": false,
            })
        );
    }

    #[test]
    fn output_schema_covers_only_outputs() {
        let sig = Signature::parse("q -> answer, score: Optional[float]").unwrap();
        let schema = sig.output_schema();
        assert_eq!(schema["required"], json!(["answer"]));
        assert_eq!(
            schema["properties"],
            json!({
                "answer": {"type": "string"},
                "score": {"anyOf": [{"type": "number"}, {"type": "null"}]},
            })
        );
        assert!(schema.get("title").is_none());
    }
}
