//! Helpers for the tests of users' own programs (`python` programs, eval, optimize):
//! where the fixture module lives, the Python reference, and the `dummy` LM's trace.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use dspex::Config;
use serde_json::{json, Map, Value};

/// `tests/fixtures/programs`: the `dspex_test_programs` module and `reference.py`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/programs")
}

/// The test configuration with the fixtures on `python.path` and every `dummy` LM call
/// traced to `trace`.
pub fn config(size: usize, trace: &Path) -> Config {
    let mut config = Config::test();
    config.pool.size = size;
    config.pool.startup_concurrency = size;
    config.python.path = vec![fixtures()];
    config.python.env.insert(
        "DSPEX_DUMMY_TRACE".into(),
        trace.to_string_lossy().into_owned(),
    );
    config
}

/// The same configuration as a TOML file for the CLI, in `dir`.
pub fn config_file(dir: &Path, size: usize, trace: &Path) -> PathBuf {
    let path = dir.join("dspex.toml");
    let text = format!(
        "[pool]\nsize = {size}\nstartup_concurrency = {size}\n\n[python]\npath = [{:?}]\nenv = {{ DSPEX_DUMMY_TRACE = {:?} }}\n",
        fixtures().to_string_lossy(),
        trace.to_string_lossy()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `reference.py` with the managed venv's interpreter (the same DSPy the workers
/// run) and returns its answer.
pub fn reference(request: Value) -> Value {
    let config = Config::test();
    let setup = dspex::launch::python_setup(&config, true);
    let env = dspex::python_env::ensure(&setup, &mut |_| {}).expect("the managed venv");
    let path = std::env::join_paths([env.bridge_path.clone(), fixtures()]).unwrap();
    let mut child = Command::new(&env.python)
        .arg(fixtures().join("reference.py"))
        .env("PYTHONPATH", path)
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "reference.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `dummy` LM's calls so far: each call's messages.
pub fn trace_calls(trace: &Path) -> Vec<Value> {
    crate::common::json_lines_in(trace)
        .into_iter()
        .map(|call| call["messages"].clone())
        .collect()
}

/// The text of every message of a call, joined.
pub fn prompt_text(messages: &Value) -> String {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn obj(value: Value) -> Map<String, Value> {
    value.as_object().expect("an object").clone()
}

/// `n` questions; every third mentions its topic early (so the metric holds), the
/// others bury it past what the dummy echoes.
pub fn rows(n: usize) -> Vec<Map<String, Value>> {
    (0..n)
        .map(|i| {
            let topic = ["bees", "rain", "owls", "wheat", "snow"][i % 5];
            let question = if i % 3 == 0 {
                format!("About {topic}: what is fact number {i}?")
            } else {
                format!("Question number {i} asks something long-winded, finally about {topic}?")
            };
            obj(json!({"id": format!("r{i}"), "question": question, "topic": topic}))
        })
        .collect()
}

/// The inputs of `rows` (their questions).
pub fn questions(rows: &[Map<String, Value>]) -> Vec<Value> {
    rows.iter()
        .map(|row| json!({"question": row["question"]}))
        .collect()
}

/// `rows` as the bridge's and the reference's `{inputs, labels}`.
pub fn examples(rows: &[Map<String, Value>]) -> Vec<Value> {
    rows.iter()
        .map(|row| json!({"inputs": {"question": row["question"]}, "labels": {"topic": row["topic"]}}))
        .collect()
}

/// Writes rows as JSONL.
pub fn write_jsonl(path: &Path, rows: &[Map<String, Value>]) {
    let text: String = rows
        .iter()
        .map(|row| format!("{}\n", Value::Object(row.clone())))
        .collect();
    std::fs::write(path, text).unwrap();
}
