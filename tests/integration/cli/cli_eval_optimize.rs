//! Layer 3 through the binary: users' own programs with `run --program/--state/--command`,
//! `eval` and `optimize`, real workers, real DSPy, the `dummy` LM (whose trace shows every
//! prompt), compared with the same code called directly in Python; and the example of
//! `examples/programs/` run exactly as its README says.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::prelude::*;
use crate::common::alike_failure_notes;
use crate::programs_common::*;
use serde_json::{json, Map, Value};

const FACTORY: &str = "dspex_test_programs:build";
const METRIC: &str = "dspex_test_programs:mentions_topic";

/// A temporary directory with a config (fixtures on python.path, a `dummy` trace) and the
/// trace's path.
fn workspace(workers: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    config_file(dir.path(), workers, &trace);
    (dir, trace)
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn is_answer_step(messages: &Value) -> bool {
    let last = messages.as_array().unwrap().last().unwrap();
    last["content"]
        .as_str()
        .unwrap()
        .contains("[[ ## reasoning ## ]]")
}

#[test]
fn run_program_over_200_rows_on_2_workers_equals_the_module_called_in_python() {
    let (dir, trace) = workspace(2);
    let data = rows(200);
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &data);
    let out = dspex(dir.path())
        .args(["run", "--program", FACTORY, "--input"])
        .arg(&input)
        .assert()
        .code(0)
        .get_output()
        .clone();
    let got = stdout_lines(&out);
    assert_eq!(got.len(), 200);
    let expected = reference(json!({"mode": "run", "factory": FACTORY, "rows": questions(&data)}));
    for (i, line) in got.iter().enumerate() {
        assert_eq!(line["index"], i);
        assert_eq!(line["id"], format!("r{i}"));
        assert_eq!(line["outputs"], expected[i], "row {i}");
        assert_eq!(line["usage"]["calls"], 2);
    }
    // Two LM calls per row (query, then answer). (That both workers serve is shown by
    // the library test of the same name: `run` starts serving from its first ready
    // worker, so how many a short run uses depends on start-up timing.)
    assert_eq!(json_lines_in(&trace).len(), 400);
}

#[test]
fn a_state_saved_by_dspy_loads_through_state_and_its_demos_reach_the_prompt() {
    let (dir, trace) = workspace(1);
    let state = dir.path().join("saved.json");
    reference(json!({
        "mode": "save", "factory": FACTORY, "out": state,
        "demos": {
            "make_query": [{"question": "Why do geese fly in a V?", "query": "geese V formation drag"}],
            "answer.predict": [{
                "question": "Why do geese fly in a V?", "query": "geese V formation drag",
                "reasoning": "Drafting saves energy.", "answer": "To save energy", "confidence": 0.9
            }],
        },
    }));
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &rows(3));
    let plain = dspex(dir.path())
        .args(["run", "--program", FACTORY, "--input"])
        .arg(&input)
        .assert()
        .code(0)
        .get_output()
        .clone();
    let plain_calls = json_lines_in(&trace).len();
    assert_eq!(plain_calls, 6);
    assert!(json_lines_in(&trace)
        .iter()
        .all(|c| !prompt_text(&c["messages"]).contains("geese")));
    let loaded = dspex(dir.path())
        .args(["run", "--program", FACTORY, "--state"])
        .arg(&state)
        .arg("--input")
        .arg(&input)
        .assert()
        .code(0)
        .get_output()
        .clone();
    let calls = &json_lines_in(&trace)[plain_calls..];
    assert_eq!(calls.len(), 6);
    for call in calls {
        let text = prompt_text(&call["messages"]);
        // Each step's prompt carries its own demo.
        if is_answer_step(&call["messages"]) {
            assert!(text.contains("To save energy"), "{text}");
        } else {
            assert!(text.contains("geese V formation drag"), "{text}");
            assert!(!text.contains("To save energy"), "{text}");
        }
    }
    // The demos change the prompts, so the (deterministic) answers differ; and they are
    // what DSPy gives with that state loaded.
    let plain = stdout_lines(&plain);
    let loaded = stdout_lines(&loaded);
    assert_ne!(plain[0]["outputs"], loaded[0]["outputs"]);
    let expected = reference(json!({
        "mode": "run", "factory": FACTORY, "state": state, "rows": questions(&rows(3)),
    }));
    let got: Vec<Value> = loaded.iter().map(|l| l["outputs"].clone()).collect();
    assert_eq!(Value::Array(got), expected);
}

#[test]
fn optimize_writes_a_state_and_run_with_it_differs_from_the_plain_run_exactly_by_its_demos() {
    let (dir, trace) = workspace(2);
    let train = dir.path().join("train.jsonl");
    write_jsonl(&train, &rows(9));
    let state = dir.path().join("optimized.json");
    let out = dspex(dir.path())
        .args([
            "optimize",
            "--optimizer",
            "bootstrap_fewshot",
            "--program",
            FACTORY,
        ])
        .args(["--metric", METRIC, "--trainset"])
        .arg(&train)
        .arg("--out")
        .arg(&state)
        .args([
            "--param",
            "max_bootstrapped_demos=2",
            "--param",
            "max_labeled_demos=0",
        ])
        .assert()
        .code(0)
        .get_output()
        .clone();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["demos"], 4, "{report}");
    assert_eq!(report["state_path"], json!(state));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("[metric] metric call 1"), "{stderr}");
    assert!(stderr.contains("[done] saved"), "{stderr}");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let demos = |predictor: &str| saved[predictor]["demos"].as_array().unwrap().clone();
    assert_eq!(
        (demos("make_query").len(), demos("answer.predict").len()),
        (2, 2)
    );

    let input = dir.path().join("in.jsonl");
    let questions_rows: Vec<Map<String, Value>> = (0..6)
        .map(|i| obj(json!({"question": format!("New question {i} about hail?")})))
        .collect();
    write_jsonl(&input, &questions_rows);
    let before = json_lines_in(&trace).len();
    dspex(dir.path())
        .args(["run", "--program", FACTORY, "--input"])
        .arg(&input)
        .assert()
        .code(0);
    let plain: Vec<Value> = json_lines_in(&trace)[before..].to_vec();
    let before = json_lines_in(&trace).len();
    let optimized_out = dspex(dir.path())
        .args(["run", "--program", FACTORY, "--state"])
        .arg(&state)
        .arg("--input")
        .arg(&input)
        .assert()
        .code(0)
        .get_output()
        .clone();
    let optimized: Vec<Value> = json_lines_in(&trace)[before..].to_vec();
    assert_eq!((plain.len(), optimized.len()), (12, 12));

    // Query step: the same question gives the same final message; the optimized prompt is
    // the plain one with the two demos inserted as user/assistant turns, and nothing else.
    let by_last = |calls: &[Value]| -> BTreeMap<String, Vec<Value>> {
        calls
            .iter()
            .filter(|c| !is_answer_step(&c["messages"]))
            .map(|c| {
                let messages = c["messages"].as_array().unwrap().clone();
                (messages.last().unwrap()["content"].to_string(), messages)
            })
            .collect()
    };
    let (plain_q, optimized_q) = (by_last(&plain), by_last(&optimized));
    assert_eq!(plain_q.len(), 6);
    assert_eq!(
        plain_q.keys().collect::<Vec<_>>(),
        optimized_q.keys().collect::<Vec<_>>()
    );
    for (key, base) in &plain_q {
        let with = &optimized_q[key];
        assert_eq!(base.len(), 2, "system + question");
        assert_eq!(
            with.len(),
            2 + 2 * 2,
            "two demos, each a user and an assistant turn"
        );
        assert_eq!(with[0], base[0], "the instructions do not change");
        assert_eq!(with.last(), base.last());
        for (demo, turns) in demos("make_query").iter().zip(with[1..5].chunks(2)) {
            assert_eq!(turns[0]["role"], "user");
            assert_eq!(turns[1]["role"], "assistant");
            let question = demo["question"].as_str().unwrap();
            let query = demo["query"].as_str().unwrap();
            assert!(turns[0]["content"].as_str().unwrap().contains(question));
            assert!(turns[1]["content"].as_str().unwrap().contains(query));
        }
    }
    // Answer step: the same shape, its own demos.
    for call in optimized.iter().filter(|c| is_answer_step(&c["messages"])) {
        let messages = call["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 6);
        for demo in demos("answer.predict") {
            let answer = demo["answer"].as_str().unwrap();
            assert!(prompt_text(&call["messages"]).contains(answer));
        }
    }
    // And the outputs are what DSPy gives with that state.
    let expected = reference(json!({
        "mode": "run", "factory": FACTORY, "state": state,
        "rows": questions_rows.iter().map(|r| Value::Object(r.clone())).collect::<Vec<_>>(),
    }));
    let got: Vec<Value> = stdout_lines(&optimized_out)
        .iter()
        .map(|l| l["outputs"].clone())
        .collect();
    assert_eq!(Value::Array(got), expected);
}

#[test]
fn eval_reports_dspy_evaluates_score_and_a_line_per_row() {
    let (dir, _trace) = workspace(2);
    let data = rows(20);
    let devset = dir.path().join("dev.jsonl");
    write_jsonl(&devset, &data);
    for (metric, code) in [
        ("dspex_test_programs:topic_overlap", 0),
        ("dspex_test_programs:raises_on_even", 1),
    ] {
        let output = dir.path().join("scores.jsonl");
        let out = dspex(dir.path())
            .args(["eval", "--program", FACTORY, "--metric", metric, "--devset"])
            .arg(&devset)
            .arg("--output")
            .arg(&output)
            .assert()
            .code(code)
            .get_output()
            .clone();
        let expected = reference(json!({
            "mode": "evaluate", "factory": FACTORY, "metric": metric, "devset": examples(&data),
        }));
        let score = expected["score"].as_f64().unwrap();
        let stderr = stderr_of(&out);
        assert!(
            stderr.contains(&format!("dspex eval: score {score} over 20 rows")),
            "{metric}: expected {score}: {stderr}"
        );
        let scored = json_lines(&std::fs::read_to_string(&output).unwrap());
        assert_eq!(scored.len(), 20);
        let mut sum = 0.0;
        for (i, line) in scored.iter().enumerate() {
            assert_eq!(
                (line["index"].clone(), line["id"].clone()),
                (json!(i), json!(format!("r{i}")))
            );
            match line.get("score") {
                Some(s) => {
                    sum += s.as_f64().unwrap();
                    assert!(line["outputs"]["answer"].is_string());
                }
                None => assert_eq!(line["error"]["kind"], "python", "{line}"),
            }
        }
        assert_eq!(
            (100.0 * sum / 20.0 * 100.0).round() / 100.0,
            score,
            "{metric}"
        );
        if code == 1 {
            let failed = scored.iter().filter(|l| l.get("error").is_some()).count();
            assert!(stderr.contains(&format!("; {failed} failed;")), "{stderr}");
            assert!(failed > 0);
        }
    }
}

#[test]
fn bad_input_exits_2_before_any_row_runs_and_writes_nothing() {
    let (dir, trace) = workspace(1);
    let data = dir.path().join("rows.jsonl");
    write_jsonl(&data, &rows(3));
    let not_json = dir.path().join("broken.json");
    std::fs::write(&not_json, "{not json").unwrap();
    let pickle = dir.path().join("state.pkl");
    std::fs::write(&pickle, b"\x80\x04N.").unwrap();
    let missing = dir.path().join("missing.json");
    let output = dir.path().join("out.jsonl");
    let data_s = data.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "--program", "no_such_module:build", "--input", data_s],
            "module 'no_such_module' was not found",
        ),
        (
            vec!["eval", "--program", "no_such_module:build", "--devset", data_s, "--metric", METRIC],
            "module 'no_such_module' was not found",
        ),
        (
            vec!["run", "--program", FACTORY, "--state", missing.to_str().unwrap(), "--input", data_s],
            "cannot read state file",
        ),
        (
            vec!["eval", "--program", FACTORY, "--state", not_json.to_str().unwrap(), "--devset", data_s, "--metric", METRIC],
            "is not JSON",
        ),
        (
            vec!["run", "--program", FACTORY, "--state", pickle.to_str().unwrap(), "--input", data_s],
            "is a pickle, which runs code when loaded",
        ),
        (
            vec!["eval", "--program", FACTORY, "--devset", data_s, "--metric", "dspex_test_programs:NOT_CALLABLE"],
            "is a int, not a callable",
        ),
        (
            vec!["eval", "--program", FACTORY, "--devset", data_s, "--metric", "dspex_test_programs:no_such_metric"],
            "has no attribute 'no_such_metric'",
        ),
        (
            vec!["optimize", "--optimizer", "bootstrap_fewshot", "--program", FACTORY, "--trainset", data_s,
                 "--metric", "dspex_test_programs:NOT_CALLABLE", "--out", "o.json"],
            "is a int, not a callable",
        ),
        (
            vec!["optimize", "--optimizer", "gepa", "--program", FACTORY, "--trainset", data_s,
                 "--metric", METRIC, "--out", "o.json"],
            "--optimizer `gepa` is not one dspex runs; use one of bootstrap_fewshot, bootstrap_random, mipro_v2",
        ),
        (
            vec!["optimize", "--optimizer", "bootstrap_fewshot", "--program", FACTORY, "--trainset", data_s,
                 "--metric", METRIC, "--out", "o.json", "--param", "no_such_param=1"],
            "BootstrapFewShot takes no parameter(s) 'no_such_param'",
        ),
    ];
    for (args, message) in cases {
        let mut cmd = dspex(dir.path());
        cmd.args(&args);
        if args[0] != "optimize" {
            cmd.arg("--output").arg(&output);
        }
        let out = cmd.assert().code(2).get_output().clone();
        let stderr = stderr_of(&out);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(stdout_is_empty(&out), "{args:?}");
        assert!(!output.exists(), "{args:?}: nothing written");
        assert!(!dir.path().join("o.json").exists());
        assert!(
            json_lines_in(&trace).is_empty(),
            "{args:?}: no LM call before the error"
        );
    }
    // A pickle is accepted when asked for; the program then loads it (and fails to, as
    // this one is not a program state: still before any row).
    let out = dspex(dir.path())
        .args(["run", "--program", FACTORY, "--allow-pickle", "--state"])
        .arg(&pickle)
        .arg("--input")
        .arg(&data)
        .assert()
        .code(2)
        .get_output()
        .clone();
    assert!(
        !stderr_of(&out).contains("is a pickle"),
        "{}",
        stderr_of(&out)
    );
    assert!(json_lines_in(&trace).is_empty());
}

/// Each line's `error.kind`, `null` where the line is an answer.
fn error_kinds(lines: &[Value]) -> Vec<Value> {
    lines.iter().map(|l| l["error"]["kind"].clone()).collect()
}

fn stdout_is_empty(out: &std::process::Output) -> bool {
    out.stdout.is_empty()
}

#[test]
fn a_row_at_fault_fails_alone_in_run_and_eval() {
    let (dir, _trace) = workspace(1);
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        [
            json!({"question": "About bees?", "topic": "bees"}),
            json!({"question": "please explode now", "topic": "x"}),
            json!({"topic": "no question"}),
            json!({"question": "About owls?", "topic": "owls"}),
        ]
        .iter()
        .map(|v| format!("{v}\n"))
        .collect::<String>()
            + "not json\n",
    )
    .unwrap();
    let program = "dspex_test_programs:Fragile";
    let out = dspex(dir.path())
        .args(["run", "--program", program, "--input"])
        .arg(&input)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let run = stdout_lines(&out);
    assert_eq!(
        error_kinds(&run),
        [
            Value::Null,
            json!("python"),
            json!("validation"),
            Value::Null,
            json!("input")
        ]
    );
    assert!(run[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cannot answer"));
    let out = dspex(dir.path())
        .args(["eval", "--program", program, "--metric", METRIC, "--devset"])
        .arg(&input)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let scored = stdout_lines(&out);
    assert_eq!(
        error_kinds(&scored),
        [
            Value::Null,
            json!("python"),
            json!("validation"),
            Value::Null,
            json!("input")
        ]
    );
    assert_eq!(
        (scored[0]["score"].clone(), scored[3]["score"].clone()),
        (json!(1.0), json!(1.0))
    );
    // Two of five rows scored 1, three failed and count 0.
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("score 40 over 5 rows") && stderr.contains("3 failed"),
        "{stderr}"
    );
}

#[test]
fn rows_failing_alike_are_told_once_in_run_and_eval_and_every_row_is_still_written() {
    let (dir, _trace) = workspace(1);
    let input = dir.path().join("in.jsonl");
    // Nine alike, one ok (the count starts again there), then ten alike with a row missing
    // its input among them: that row is rejected before it runs and neither counts nor
    // breaks the count. In whatever order rows complete, ten that ran fail alike in a row
    // (19 around one ok row), and the note comes once.
    let explode = || json!({"question": "please explode now", "topic": "x"});
    let rows: Vec<Value> = (0..9)
        .map(|_| explode())
        .chain([json!({"question": "About bees?", "topic": "bees"})])
        .chain((0..5).map(|_| explode()))
        .chain([json!({"topic": "no question"})])
        .chain((0..5).map(|_| explode()))
        .collect();
    std::fs::write(
        &input,
        rows.iter().map(|v| format!("{v}\n")).collect::<String>(),
    )
    .unwrap();
    let program = "dspex_test_programs:Fragile";
    for (args, advice) in [
        (vec!["run", "--program", program], "--resume --retry-failed"),
        (
            vec!["eval", "--program", program, "--metric", METRIC, "--devset"],
            "fix the cause first",
        ),
    ] {
        let mut command = dspex(dir.path());
        command.args(&args);
        if args[0] == "run" {
            command.arg("--input");
        }
        let out = command.arg(&input).assert().code(1).get_output().clone();
        let lines = stdout_lines(&out);
        assert_eq!(lines.len(), 21, "{args:?}");
        assert_eq!(lines[9]["error"], Value::Null, "{args:?}");
        assert_eq!(lines[15]["error"]["kind"], "validation", "{args:?}");
        let stderr = stderr_of(&out);
        let told = alike_failure_notes(&stderr);
        assert_eq!(told.len(), 1, "{args:?}: {stderr}");
        assert!(
            told[0].contains("the last 10 rows all failed the same way (python: ")
                && told[0].contains("cannot answer 'please explode now'")
                && told[0].contains(advice),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn run_command_drives_a_user_command_with_each_row_as_its_args() {
    let dir = tempfile::tempdir().unwrap();
    let handlers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/handlers");
    let config = dir.path().join("handlers.toml");
    std::fs::write(
        &config,
        format!(
            "[python]\npath = [{:?}]\nhandlers = [\"dspex_test_handlers\"]\n",
            handlers.to_string_lossy()
        ),
    )
    .unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"id\": \"a\", \"message\": \"no\"}\n{\"id\": \"b\"}\n",
    )
    .unwrap();
    let out = dspex(dir.path())
        .args(["run", "--command", "fail", "--config"])
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let got = stdout_lines(&out);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["id"], "a");
    assert_eq!(got[0]["error"]["kind"], "python");
    assert!(got[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("ValueError: no"));
    assert!(got[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("failed on purpose"));
    std::fs::write(&input, "{\"value\": 1}\n{\"value\": [2, 3]}\n").unwrap();
    let out = dspex(dir.path())
        .args(["run", "--command", "noisy", "--config"])
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .assert()
        .code(0)
        .get_output()
        .clone();
    let got = stdout_lines(&out);
    assert_eq!(got[0]["outputs"], json!({"value": 1}));
    assert_eq!(got[1]["outputs"], json!({"value": [2, 3]}));
}

/// The shell commands of a README's ```sh blocks: continuation lines joined, comments and
/// `cd` left out, words split with double quotes honoured.
fn readme_commands(readme: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut current = String::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_block = line.trim() == "```sh";
            continue;
        }
        let line = line.trim();
        if !in_block || line.starts_with('#') || line.is_empty() || line.starts_with("cd ") {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                commands.push(split_words(&current));
                current.clear();
            }
        }
    }
    commands
}

fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

#[test]
fn the_example_runs_as_its_readme_says() {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/programs");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&example).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let readme = std::fs::read_to_string(example.join("README.md")).unwrap();
    let commands = readme_commands(&readme);
    let names: Vec<&str> = commands.iter().map(|c| c[1].as_str()).collect();
    assert_eq!(names, ["optimize", "eval", "eval", "run"]);
    let mut stderr = Vec::new();
    for command in &commands {
        assert_eq!(command[0], "dspex");
        let out = dspex(dir.path())
            .args(&command[1..])
            .assert()
            .code(0)
            .get_output()
            .clone();
        stderr.push(stderr_of(&out));
        if command[1] == "optimize" {
            let report: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(report["optimizer"], "bootstrap_fewshot");
            assert_eq!(report["demos"], 4);
            assert!(readme.contains(r#""optimizer":"bootstrap_fewshot","demos":4"#));
        }
    }
    // What the README says to expect.
    assert!(readme.contains("dspex eval: score 50 over 8 rows"));
    for eval in &stderr[1..3] {
        assert!(eval.contains("dspex eval: score 50 over 8 rows"), "{eval}");
    }
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("optimized.json")).unwrap())
            .unwrap();
    for step in ["write_query", "answer.predict"] {
        assert_eq!(state[step]["demos"].as_array().unwrap().len(), 2, "{step}");
    }
    for scores in ["baseline.jsonl", "scores.jsonl"] {
        let scored = json_lines(&std::fs::read_to_string(dir.path().join(scores)).unwrap());
        assert_eq!(scored.len(), 8);
        assert_eq!(scored.iter().filter(|l| l["score"] == 1.0).count(), 4);
    }
    let answers = json_lines(&std::fs::read_to_string(dir.path().join("answers.jsonl")).unwrap());
    assert_eq!(answers.len(), 3);
    for answer in &answers {
        let outputs = answer["outputs"].as_object().unwrap();
        assert_eq!(outputs.keys().collect::<Vec<_>>(), ["answer", "query"]);
    }
}
