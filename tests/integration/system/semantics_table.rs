//! What the Rust side and the Python bridge must agree on, checked against the bridge
//! itself so neither can drift:
//!
//! * the program semantics the fakes copy (which definitions are refused, what the outputs
//!   look like): one table of cases, `tests/fixtures/semantics/cases.json`, run against the
//!   `Mock`, the `FakeBridge` (directly and behind the real actors as `BridgeMock`) and a
//!   real worker running real DSPy;
//! * the error types and what they mean, the input names DSPy reserves and how deep types
//!   may nest, read from the bridge's own sources.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use dspex::error::{bridge_error, ErrorKind, Fault, BRIDGE_ERRORS};
use dspex::signature::{MAX_TYPE_DEPTH, RESERVED_INPUT_NAMES};
use dspex::testing::{Adapter, BridgeMock, FakeBridge, Mock, PythonAdapter};
use dspex::{Call, Config, ProgramDef, Signature, System};
use dspex_actors::protocol::Request;
use dspex_actors::testing::FakeAction;
use serde_json::{json, Map, Value};

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

/// What one implementation did with a case.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Error(String),
    Outputs(Map<String, Value>),
}

impl Outcome {
    fn expected(expect: &Value) -> Outcome {
        match (expect.get("error"), expect.get("outputs")) {
            (Some(kind), None) => Outcome::Error(kind.as_str().unwrap().to_owned()),
            (None, Some(Value::Object(types))) => Outcome::Outputs(types.clone()),
            _ => panic!("an expectation is an error kind or output types: {expect}"),
        }
    }

    fn of_outputs(outputs: &Value) -> Outcome {
        let types = outputs
            .as_object()
            .unwrap_or_else(|| panic!("outputs are an object: {outputs}"))
            .iter()
            .map(|(name, value)| (name.clone(), json!(type_name(value))))
            .collect();
        Outcome::Outputs(types)
    }

    fn of_error(error_type: &str) -> Outcome {
        Outcome::Error(bridge_error(error_type).0.as_str().to_owned())
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "str",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::Bool(_) => "bool",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
        Value::Null => "null",
    }
}

struct Case {
    name: String,
    /// The wire definition with `program_id` "p", or `None` for "no definition".
    definition: Option<Value>,
    inputs: Value,
    wire: bool,
    api: bool,
    expect: Outcome,
    fakes: Outcome,
}

fn cases() -> Vec<Case> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/semantics/cases.json");
    let table: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    table["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let definition = match &case["definition"] {
                Value::Null => None,
                Value::Object(object) => {
                    let mut definition = object.clone();
                    definition.insert("program_id".into(), json!("p"));
                    if let Some(Value::String(text)) = definition.get("signature") {
                        let signature: Signature = text.parse().unwrap();
                        definition.insert("signature".into(), signature.to_wire());
                    }
                    Some(Value::Object(definition))
                }
                other => panic!("a definition is an object or null: {other}"),
            };
            let levels: Vec<&str> = case["levels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap())
                .collect();
            let expect = Outcome::expected(&case["expect"]);
            Case {
                name: case["name"].as_str().unwrap().to_owned(),
                definition,
                inputs: case["inputs"].clone(),
                wire: levels.contains(&"wire"),
                api: levels.contains(&"api"),
                fakes: case.get("fakes").map_or(expect.clone(), Outcome::expected),
                expect,
            }
        })
        .collect()
}

/// `create_program` (when there is a definition), then `execute_program`, as raw
/// requests: `send` answers each with a result or an error type.
async fn on_the_wire<F, Fut>(case: &Case, session: &str, mut send: F) -> Outcome
where
    F: FnMut(&'static str, Value) -> Fut,
    Fut: std::future::Future<Output = Result<Value, String>>,
{
    let mut run = json!({"session_id": session, "inputs": case.inputs});
    match &case.definition {
        Some(definition) => {
            let create =
                json!({"session_id": session, "program_id": "p", "definition": definition});
            if let Err(error_type) = send("create_program", create).await {
                return Outcome::of_error(&error_type);
            }
            run["program_id"] = json!("p");
            run["definition"] = definition.clone();
        }
        None => run["program_id"] = json!("ghost"),
    }
    match send("execute_program", run).await {
        Ok(result) => Outcome::of_outputs(&result["outputs"]),
        Err(error_type) => Outcome::of_error(&error_type),
    }
}

/// Creates and runs the case's program through the Adapter API.
async fn through(adapter: &dyn Adapter, case: &Case, session: &str) -> Outcome {
    let definition = case
        .definition
        .as_ref()
        .expect("api cases have a definition");
    let spec = ProgramDef::from_wire(definition)
        .unwrap_or_else(|e| panic!("{}: an api case must read as a ProgramSpec: {e}", case.name))
        .spec;
    if let Err(e) = adapter.create(Some(session), "p", spec).await {
        return Outcome::Error(e.kind().to_owned());
    }
    let inputs = case
        .inputs
        .as_object()
        .expect("api inputs are an object")
        .clone();
    match adapter.execute_program(Some(session), "p", inputs).await {
        Ok(outputs) => Outcome::of_outputs(&Value::Object(outputs)),
        Err(e) => Outcome::Error(e.kind().to_owned()),
    }
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/programs")
}

#[tokio::test]
async fn the_mock_the_fake_bridge_and_a_real_worker_agree_on_every_case() {
    crate::common::init_logs();
    let mut config = Config::test();
    config.python.path = vec![fixtures()];
    let system = System::builder(config.clone()).start().await.unwrap();
    let real = PythonAdapter::new(system.clone());
    let mock = Mock::new();
    let bridge_mock = BridgeMock::start(&config).await.unwrap();
    let fake = FakeBridge::new();
    let cases = cases();
    assert!(cases.len() >= 15, "{}", cases.len());
    let mut disagreements = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let session = format!("case-{index}");
        let mut outcomes: Vec<(&str, Outcome, &Outcome)> = Vec::new();
        if case.wire {
            let by_fake = on_the_wire(case, &session, |command, args| {
                let answer = fake.handle("w", &Request::new(1, command, args));
                async move {
                    match answer {
                        FakeAction::Reply(result) => Ok(result),
                        FakeAction::Fail { error_type, .. } => Err(error_type),
                        other => panic!("unexpected fake action {other:?}"),
                    }
                }
            })
            .await;
            outcomes.push(("FakeBridge", by_fake, &case.fakes));
            let by_worker = on_the_wire(case, &session, |command, args| {
                let system = system.clone();
                async move {
                    match system.execute(Call::new(command, args)).await {
                        Ok(result) => Ok(result),
                        Err(dspex::Error::Python { error_type, .. })
                        | Err(dspex::Error::Refused { error_type, .. }) => Err(error_type),
                        Err(dspex::Error::Lm(_)) => Err("LMError".into()),
                        Err(other) => panic!("a worker answers every case: {other}"),
                    }
                }
            })
            .await;
            outcomes.push(("real worker", by_worker, &case.expect));
        }
        if case.api {
            let api_session = format!("api-{session}");
            outcomes.push((
                "Mock",
                through(&mock, case, &api_session).await,
                &case.fakes,
            ));
            outcomes.push((
                "BridgeMock",
                through(&bridge_mock, case, &api_session).await,
                &case.fakes,
            ));
            outcomes.push((
                "real worker (api)",
                through(&real, case, &api_session).await,
                &case.expect,
            ));
        }
        for (who, got, expected) in outcomes {
            if &got != expected {
                disagreements.push(format!(
                    "{:?}: {who} gave {got:?}, the table says {expected:?}",
                    case.name
                ));
            }
        }
    }
    bridge_mock.shutdown().await.unwrap();
    system.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
