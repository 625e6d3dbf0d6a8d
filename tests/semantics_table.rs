//! What the Rust side and the Python bridge must agree on, checked against the bridge's
//! own sources so neither can drift: the error types and what they mean, the input names
//! DSPy reserves, and how deep types may nest.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use dspex::error::{bridge_error, ErrorKind, Fault, BRIDGE_ERRORS};
use dspex::signature::{MAX_TYPE_DEPTH, RESERVED_INPUT_NAMES};
use serde_json::Value;

fn bridge_source(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python/dspex_bridge")
        .join(file)
}

/// Facts read from the bridge's sources with Python's `ast` (nothing is imported, so this
/// needs neither DSPy nor the venv).
fn python_facts() -> Value {
    const SCRIPT: &str = r#"
import ast, json, sys
errors = ast.parse(open(sys.argv[1]).read())
bases = {c.name: [b.id for b in c.bases if isinstance(b, ast.Name)]
         for c in errors.body if isinstance(c, ast.ClassDef)}
def is_bridge_error(name):
    return name == "BridgeError" or any(is_bridge_error(b) for b in bases.get(name, []))
classes = sorted(n for n in bases if n != "BridgeError" and is_bridge_error(n))
definitions = ast.parse(open(sys.argv[2]).read())
constants = {}
for node in definitions.body:
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        name = node.targets[0].id
        value = node.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "frozenset":
            value = value.args[0]
        try:
            constants[name] = ast.literal_eval(value)
        except ValueError:
            pass
print(json.dumps({
    "errors": classes,
    "reserved_inputs": sorted(constants["RESERVED_INPUT_NAMES"]),
    "max_type_depth": constants["MAX_TYPE_DEPTH"],
}))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(bridge_source("errors.py"))
        .arg(bridge_source("definitions.py"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_error_type_of_the_bridge_has_a_row_in_the_rust_table_and_no_row_is_stale() {
    let facts = python_facts();
    let python: BTreeSet<&str> = facts["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // Python's own MemoryError is the one type the bridge reports without defining it.
    let rust: BTreeSet<&str> = BRIDGE_ERRORS
        .iter()
        .map(|row| row.name)
        .filter(|name| *name != "MemoryError")
        .collect();
    assert_eq!(rust, python, "dspex::error::BRIDGE_ERRORS vs errors.py");
    assert!(python.len() >= 7, "{python:?}");
}

#[test]
fn the_bridge_error_table_says_what_the_contract_says() {
    // contract.md §5: caller mistakes never count against a worker; a 429 slows the pool;
    // running out of memory recycles the worker; anything else is the worker's fault.
    let expect = [
        ("InvalidRequest", ErrorKind::Validation, Fault::Caller),
        ("UnknownCommand", ErrorKind::Validation, Fault::Caller),
        ("ProgramExists", ErrorKind::Validation, Fault::Caller),
        ("ProgramNotFound", ErrorKind::ProgramNotFound, Fault::Caller),
        ("LMError", ErrorKind::Lm, Fault::Caller),
        ("RateLimited", ErrorKind::RateLimited, Fault::RateLimited),
        ("MemoryError", ErrorKind::Python, Fault::Recycle),
        ("KeyError", ErrorKind::Python, Fault::Worker),
    ];
    for (error_type, kind, fault) in expect {
        assert_eq!(bridge_error(error_type), (kind, fault), "{error_type}");
    }
}

#[test]
fn reserved_input_names_and_the_nesting_limit_agree_with_the_bridge() {
    let facts = python_facts();
    let python: BTreeSet<&str> = facts["reserved_inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let rust: BTreeSet<&str> = RESERVED_INPUT_NAMES.iter().copied().collect();
    assert_eq!(
        rust, python,
        "RESERVED_INPUT_NAMES in Rust vs definitions.py"
    );
    assert_eq!(facts["max_type_depth"], MAX_TYPE_DEPTH as u64);
    // And the Rust parser really refuses each name as an input (and only as an input).
    for name in RESERVED_INPUT_NAMES {
        let err = format!("{name} -> answer")
            .parse::<dspex::Signature>()
            .unwrap_err();
        assert!(err.position == Some(0), "{name}: {err}");
        if *name != "signature" {
            assert!(format!("question -> {name}")
                .parse::<dspex::Signature>()
                .is_ok());
        }
    }
}
