//! The bridge's program semantics, as the fakes copy them.
//!
//! Most of what makes a program definition valid is checked in Rust before anything is
//! sent ([`ProgramSpec::resolve`], the signature parser), and the fakes share that code.
//! What only the Python bridge checks (`dspex_bridge/definitions.py`) is copied here,
//! once, for the [`Mock`](super::Mock) (from a [`ProgramSpec`]) and the
//! [`FakeBridge`](super::FakeBridge) (from the raw wire definition). The semantics table
//! (`tests/semantics_table.rs`) runs the same cases against these copies and the real
//! bridge, so a change on either side that is not made on the other fails a test.

use serde_json::{Map, Value};

use crate::program::{ModuleKind, ProgramSpec};
use crate::signature::Signature;

/// Keys a wire definition may carry (`DEFINITION_KEYS`).
const DEFINITION_KEYS: &[&str] = &[
    "program_id",
    "module",
    "signature",
    "demos",
    "instructions",
    "factory",
    "state",
    "allow_pickle",
];

/// Demo keys DSPy writes that are not signature fields (`DEMO_EXTRA_KEYS`).
const DEMO_EXTRA_KEYS: &[&str] = &["augmented"];

/// Demos must be non-empty objects of the signature's fields (a chain of thought's
/// `reasoning` too), as the bridge's `_demos` requires.
pub(crate) fn check_demos(
    module: ModuleKind,
    signature: Option<&Signature>,
    demos: &[Map<String, Value>],
) -> Result<(), String> {
    if demos.is_empty() {
        return Ok(());
    }
    if module == ModuleKind::Python {
        return Err("demos apply to predict/chain_of_thought programs; a python program's demos come from its state file".into());
    }
    let mut known: Vec<&str> = signature
        .iter()
        .flat_map(|s| s.inputs.iter().chain(&s.outputs))
        .map(|f| f.name.as_str())
        .collect();
    if module == ModuleKind::ChainOfThought {
        known.push("reasoning");
    }
    for (index, demo) in demos.iter().enumerate() {
        if demo.is_empty() {
            return Err(format!(
                "demo #{index} must be a non-empty object of field values"
            ));
        }
        let mut unknown: Vec<&str> = demo
            .keys()
            .map(String::as_str)
            .filter(|k| !known.contains(k) && !DEMO_EXTRA_KEYS.contains(k))
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            return Err(format!(
                "demo #{index} has field(s) {} that the signature does not declare (fields: {})",
                unknown.join(", "),
                known.join(", ")
            ));
        }
    }
    Ok(())
}

/// What the bridge checks of a spec beyond [`ProgramSpec::resolve`].
pub(crate) fn check_spec(spec: &ProgramSpec) -> Result<(), String> {
    check_demos(spec.module, spec.signature.as_ref(), &spec.demos)
}

/// The wire-level checks of `parse_program` that the Rust parse of a definition
/// ([`ProgramDef::from_wire`](crate::ProgramDef::from_wire)) does not make: the shape of
/// the object, its keys and their types.
pub(crate) fn check_wire(definition: &Value) -> Result<(), String> {
    let Value::Object(object) = definition else {
        return Err(format!(
            "program definition must be an object, got {}",
            json_kind(definition)
        ));
    };
    let mut unknown: Vec<&str> = object
        .keys()
        .map(String::as_str)
        .filter(|k| !DEFINITION_KEYS.contains(k))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(format!(
            "program definition has unknown key(s) {}",
            unknown.join(", ")
        ));
    }
    let module = match object.get("module") {
        None | Some(Value::Null) => "predict",
        Some(Value::String(m))
            if ["predict", "chain_of_thought", "python"].contains(&m.as_str()) =>
        {
            m
        }
        Some(other) => return Err(format!("unknown module kind {other}")),
    };
    let python = module == "python";
    match object.get("signature") {
        None | Some(Value::Null) if python => {}
        Some(Value::Object(_)) => {}
        _ => {
            return Err(format!(
                "a {module} program needs a structured 'signature' object"
            ))
        }
    }
    match object.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(_)) if python => {
            return Err("instructions apply to predict/chain_of_thought programs".into())
        }
        Some(Value::String(_)) => {}
        Some(_) => return Err("instructions must be a string or null".into()),
    }
    match (python, object.get("factory")) {
        (true, Some(Value::String(_))) | (false, None | Some(Value::Null)) => {}
        (true, _) => {
            return Err("a python program needs 'factory' as \"package.module:attribute\"".into())
        }
        (false, Some(_)) => {
            return Err(format!(
                "'factory' belongs to python programs, not {module}"
            ))
        }
    }
    match object.get("demos") {
        None | Some(Value::Null) => {}
        Some(Value::Array(demos)) if demos.iter().all(Value::is_object) => {}
        Some(_) => return Err("demos must be a list of objects".into()),
    }
    match object.get("allow_pickle") {
        None | Some(Value::Null | Value::Bool(_)) => {}
        Some(other) => return Err(format!("allow_pickle must be true or false, got {other}")),
    }
    let allow_pickle = object
        .get("allow_pickle")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match object.get("state") {
        None | Some(Value::Null) => {}
        Some(Value::Object(state)) => {
            let Some(path) = state
                .get("path")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
            else {
                return Err("state.path must be a non-empty string".into());
            };
            if path.ends_with(".pkl") && !allow_pickle {
                return Err(format!(
                    "state file {path:?} is a pickle; set allow_pickle if you trust it"
                ));
            }
            if !path.ends_with(".pkl") && !path.ends_with(".json") {
                return Err(format!(
                    "state file {path:?} must be a .json file saved by program.save"
                ));
            }
        }
        Some(_) => return Err("state must be an object {path, digest} or null".into()),
    }
    Ok(())
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "a number",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn demos_may_use_the_signature_fields_and_a_chain_of_thoughts_reasoning() {
        let sig: Signature = "question -> answer".parse().unwrap();
        let demo = |v: Value| vec![v.as_object().unwrap().clone()];
        let ok = demo(json!({"question": "q", "answer": "a", "augmented": true}));
        assert!(check_demos(ModuleKind::Predict, Some(&sig), &ok).is_ok());
        let cot = demo(json!({"question": "q", "reasoning": "r", "answer": "a"}));
        assert!(check_demos(ModuleKind::ChainOfThought, Some(&sig), &cot).is_ok());
        let e = check_demos(ModuleKind::Predict, Some(&sig), &cot).unwrap_err();
        assert!(e.contains("reasoning"), "{e}");
        let e = check_demos(ModuleKind::Predict, Some(&sig), &demo(json!({}))).unwrap_err();
        assert!(e.contains("non-empty"), "{e}");
    }

    #[test]
    fn wire_definitions_are_checked_like_parse_program() {
        let sig = json!({"inputs": [{"name": "q"}], "outputs": [{"name": "a"}]});
        assert!(check_wire(&json!({"module": "predict", "signature": sig})).is_ok());
        for (bad, why) in [
            (json!([1]), "must be an object"),
            (
                json!({"signature": sig, "bogus": 1}),
                "unknown key(s) bogus",
            ),
            (
                json!({"module": "react", "signature": sig}),
                "unknown module kind",
            ),
            (
                json!({"module": "predict"}),
                "needs a structured 'signature'",
            ),
            (
                json!({"module": "python", "factory": "m:f", "instructions": "x"}),
                "instructions apply",
            ),
            (
                json!({"module": "predict", "signature": sig, "factory": "m:f"}),
                "belongs to python",
            ),
            (json!({"module": "python"}), "needs 'factory'"),
            (
                json!({"signature": sig, "state": {"path": "/s.pkl"}}),
                "is a pickle",
            ),
            (
                json!({"signature": sig, "state": {"path": "/s.txt"}}),
                "must be a .json",
            ),
            (
                json!({"signature": sig, "allow_pickle": "yes"}),
                "allow_pickle must be",
            ),
        ] {
            let e = check_wire(&bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
