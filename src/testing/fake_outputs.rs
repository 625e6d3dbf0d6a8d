//! Deterministic fake outputs for the Mock and the BridgeMock's fake worker.
//!
//! Both fake layers answer from this one generator so that a scenario behaves the same
//! on layer 1 and layer 2, and so that "same inputs → same outputs" holds across
//! workers, runs and machines: every value is derived from a SHA-256 of the program id,
//! the inputs in a canonical JSON form (keys sorted, so map order cannot matter) and
//! the path of the value inside the outputs.

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use crate::signature::{FieldType, Signature};

/// Outputs for every declared output of `signature`, typed as declared.
///
/// Strings read `mock <path> <8 hex digits>` (`mock answer 3f2a9c1e`), integers are in
/// `0..1000`, floats in `[0, 1)`, lists hold 2 or 3 items, dicts 2 entries (`key_0`,
/// `key_1`), an `Optional[T]` is always a `T`, and a `Literal[...]` one of its values.
///
/// # Examples
///
/// ```
/// use dspex::testing::fake_outputs;
/// use dspex::Signature;
///
/// let sig: Signature = "question -> answer, confidence: float".parse().unwrap();
/// let inputs = serde_json::json!({"question": "why?"});
/// let a = fake_outputs("qa", &sig, inputs.as_object().unwrap());
/// assert!(a["answer"].as_str().unwrap().starts_with("mock answer "));
/// assert_eq!(a, fake_outputs("qa", &sig, inputs.as_object().unwrap()));
/// ```
pub fn fake_outputs(
    program_id: &str,
    signature: &Signature,
    inputs: &Map<String, Value>,
) -> Map<String, Value> {
    let mut canonical = String::new();
    canonical_json(&Value::Object(inputs.clone()), &mut canonical);
    let seed = Seed {
        program_id,
        inputs: &canonical,
    };
    signature
        .outputs
        .iter()
        .map(|field| (field.name.clone(), seed.value(&field.name, &field.ty)))
        .collect()
}

/// The fake text for a field DSPy adds on its own (`reasoning` of chain-of-thought).
pub(crate) fn fake_text(program_id: &str, inputs: &Map<String, Value>, name: &str) -> Value {
    let mut canonical = String::new();
    canonical_json(&Value::Object(inputs.clone()), &mut canonical);
    Seed {
        program_id,
        inputs: &canonical,
    }
    .value(name, &FieldType::Str)
}

struct Seed<'a> {
    program_id: &'a str,
    inputs: &'a str,
}

impl Seed<'_> {
    fn digest(&self, path: &str) -> [u8; 32] {
        let mut hash = Sha256::new();
        // NUL separators keep ("ab", "c") and ("a", "bc") apart.
        hash.update(self.program_id.as_bytes());
        hash.update([0]);
        hash.update(self.inputs.as_bytes());
        hash.update([0]);
        hash.update(path.as_bytes());
        hash.finalize().into()
    }

    fn value(&self, path: &str, ty: &FieldType) -> Value {
        let digest = self.digest(path);
        let word = u64::from_be_bytes(digest[..8].try_into().expect("8 of 32 bytes"));
        match ty {
            FieldType::Str => {
                let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
                Value::String(format!("mock {path} {hex}"))
            }
            FieldType::Int => Value::from(word % 1000),
            FieldType::Float => {
                // The top 53 bits give every double in [0, 1) on a 2^-53 grid.
                let unit = (word >> 11) as f64 / (1u64 << 53) as f64;
                Number::from_f64(unit).map_or(Value::Null, Value::Number)
            }
            FieldType::Bool => Value::Bool(word & 1 == 1),
            FieldType::List(inner) => {
                let len = 2 + (word % 2) as usize;
                (0..len)
                    .map(|i| self.value(&format!("{path}[{i}]"), inner))
                    .collect()
            }
            FieldType::Dict(inner) => (0..2)
                .map(|i| {
                    let key = format!("key_{i}");
                    let value = self.value(&format!("{path}.{key}"), inner);
                    (key, value)
                })
                .collect::<Map<_, _>>()
                .into(),
            FieldType::Optional(inner) => self.value(path, inner),
            FieldType::Literal(options) => options
                .get((word % options.len().max(1) as u64) as usize)
                .map_or(Value::Null, |option| option.to_json()),
        }
    }
}

/// Compact JSON with object keys sorted at every level, whatever order the map keeps.
fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical_json(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::signature::LiteralValue;

    fn inputs(value: Value) -> Map<String, Value> {
        value.as_object().expect("an object").clone()
    }

    #[test]
    fn every_declared_output_gets_a_value_of_its_type() {
        let sig: Signature = "q -> s, i: int, f: float, b: bool, l: list[int], \
                              d: dict[str, bool], o: Optional[str], lit: Literal['x', 'y', 3]"
            .parse()
            .unwrap();
        let out = fake_outputs("p", &sig, &inputs(json!({"q": "hi"})));
        assert_eq!(out.len(), 8);
        assert!(out["s"].as_str().unwrap().starts_with("mock s "));
        assert!(out["i"].as_u64().unwrap() < 1000);
        let f = out["f"].as_f64().unwrap();
        assert!(out["f"].is_f64() && (0.0..1.0).contains(&f), "{f}");
        assert!(out["b"].is_boolean());
        let list = out["l"].as_array().unwrap();
        assert!((2..=3).contains(&list.len()) && list.iter().all(Value::is_u64));
        let dict = out["d"].as_object().unwrap();
        assert_eq!(dict.keys().collect::<Vec<_>>(), ["key_0", "key_1"]);
        assert!(dict.values().all(Value::is_boolean));
        assert!(out["o"].as_str().unwrap().starts_with("mock o "));
        assert!([json!("x"), json!("y"), json!(3)].contains(&out["lit"]));
        // What the generator makes always passes the signature's own output check.
        assert_eq!(
            sig.decode_outputs(&Value::Object(out.clone())).unwrap(),
            out
        );
    }

    #[test]
    fn same_program_and_inputs_give_the_same_outputs_whatever_the_key_order() {
        let sig: Signature = "a, b -> answer, score: float".parse().unwrap();
        let mut forward = Map::new();
        forward.insert("a".into(), json!({"x": 1, "y": [1, 2]}));
        forward.insert("b".into(), json!("two"));
        let mut backward = Map::new();
        backward.insert("b".into(), json!("two"));
        backward.insert("a".into(), json!({"y": [1, 2], "x": 1}));
        assert_eq!(
            fake_outputs("p", &sig, &forward),
            fake_outputs("p", &sig, &backward)
        );
    }

    #[test]
    fn program_id_inputs_and_field_each_change_the_value() {
        let sig: Signature = "q -> answer, other".parse().unwrap();
        let base = fake_outputs("p", &sig, &inputs(json!({"q": "1"})));
        let other_program = fake_outputs("p2", &sig, &inputs(json!({"q": "1"})));
        let other_inputs = fake_outputs("p", &sig, &inputs(json!({"q": "2"})));
        assert_ne!(base["answer"], other_program["answer"]);
        assert_ne!(base["answer"], other_inputs["answer"]);
        let hex = |v: &Value| v.as_str().unwrap().rsplit(' ').next().unwrap().to_owned();
        assert_ne!(hex(&base["answer"]), hex(&base["other"]));
    }

    #[test]
    fn literal_values_are_spread_over_the_options() {
        let sig = Signature::new(
            vec![crate::signature::Field::new("q", FieldType::Int)],
            vec![crate::signature::Field::new(
                "label",
                FieldType::Literal(vec![
                    LiteralValue::Str("a".into()),
                    LiteralValue::Str("b".into()),
                ]),
            )],
        )
        .unwrap();
        let seen: std::collections::HashSet<String> = (0..32)
            .map(|q| fake_outputs("p", &sig, &inputs(json!({"q": q})))["label"].to_string())
            .collect();
        assert_eq!(seen.len(), 2, "{seen:?}");
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let mut out = String::new();
        canonical_json(&json!({"b": [{"d": 1, "c": null}], "a": "x\"y"}), &mut out);
        assert_eq!(out, r#"{"a":"x\"y","b":[{"c":null,"d":1}]}"#);
    }
}
