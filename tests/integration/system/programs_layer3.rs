//! Layer 3: users' own DSPy programs through the library API (`Program::evaluate`,
//! `Program::optimize`, python programs with state), real workers, real DSPy, the `dummy`
//! LM; compared with what the same code gives when called directly in Python.

use std::time::Duration;

use crate::common::{eventually, init_logs, kill, pid_alive};
use crate::programs_common::*;
use dspex::program::{OptimizeRequest, Optimizer};
use dspex::{ProgramSpec, System};
use futures::StreamExt;
use serde_json::{json, Value};

const FACTORY: &str = "dspex_test_programs:build";

async fn start(size: usize, trace: &std::path::Path) -> System {
    init_logs();
    System::builder(config(size, trace))
        .wait_ready(size)
        .start()
        .await
        .expect("DSPy system starts")
}

#[tokio::test]
async fn a_custom_module_over_200_rows_on_2_workers_equals_the_module_called_in_python() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let system = start(2, &trace).await;
    let session = system.open_session(None).await.unwrap();
    session
        .create("p", ProgramSpec::python(FACTORY))
        .await
        .unwrap();
    let program = session.program("p").await.unwrap().for_batch();
    let data = rows(200);
    // More rows in flight than one worker has slots, so the scheduler uses both.
    let window = 4 * system.config().pool.worker_concurrency;
    let outputs: Vec<Value> = futures::stream::iter(data.clone())
        .map(|row| {
            let program = program.clone();
            async move {
                let (inputs, _) = program.split_row(row).unwrap();
                Value::Object(program.predict(inputs).await.unwrap().outputs)
            }
        })
        .buffered(window)
        .collect()
        .await;
    let expected = reference(json!({"mode": "run", "factory": FACTORY, "rows": questions(&data)}));
    assert_eq!(Value::Array(outputs), expected);
    let calls: Vec<Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(calls.len(), 400, "two LM calls per row");
    let pids: std::collections::BTreeSet<String> =
        calls.iter().map(|c| c["pid"].to_string()).collect();
    assert_eq!(pids.len(), 2, "both workers ran rows");
    let served: Vec<u64> = system
        .status()
        .await
        .unwrap()
        .pool
        .unwrap()
        .workers
        .iter()
        .map(|w| w.stats.requests)
        .collect();
    assert!(served.iter().all(|&n| n > 0), "{served:?}");
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn evaluate_gives_dspy_evaluates_score_for_every_metric_failed_rows_counting_zero() {
    let dir = tempfile::tempdir().unwrap();
    let system = start(2, &dir.path().join("trace.jsonl")).await;
    let session = system.open_session(None).await.unwrap();
    let devset = rows(24);
    for metric in [
        "dspex_test_programs:mentions_topic",
        "dspex_test_programs:topic_overlap",
        "dspex_test_programs:raises_on_even",
    ] {
        let id = metric.split(':').nth(1).unwrap();
        session
            .create_checked(id, ProgramSpec::python(FACTORY), Some(metric))
            .await
            .unwrap();
        let program = session.program(id).await.unwrap();
        let report = program.evaluate(devset.clone(), metric, 8).await.unwrap();
        let expected = reference(json!({
            "mode": "evaluate", "factory": FACTORY, "metric": metric, "devset": examples(&devset),
        }));
        assert_eq!(json!(report.score), expected["score"], "{metric}");
        assert_eq!(report.rows.len(), 24);
        assert!(report.rows.iter().enumerate().all(|(i, r)| r.index == i));
        let sum: f64 = report.rows.iter().map(|r| r.score()).sum();
        assert_eq!(report.mean, sum / 24.0, "{metric}");
        if metric.ends_with("raises_on_even") {
            // The metric raised on some rows: those rows failed (as python errors) and
            // count 0, as in dspy.Evaluate.
            assert!(report.failed > 0 && report.failed < 24, "{}", report.failed);
            let failed = report.rows.iter().find(|r| r.result.is_err()).unwrap();
            assert_eq!(failed.result.as_ref().unwrap_err().kind(), "python");
        } else {
            assert_eq!(report.failed, 0);
            assert!(
                report.score > 0.0 && report.score < 100.0,
                "{metric}: a score that tells rows apart, got {}",
                report.score
            );
        }
        // Two LM calls per row (query, then answer).
        assert_eq!(report.usage.total().calls, 2 * (24 - report.failed) as u64);
    }
    let empty = session
        .program("mentions_topic")
        .await
        .unwrap()
        .evaluate(Vec::new(), "dspex_test_programs:mentions_topic", 1)
        .await
        .unwrap_err();
    assert_eq!(empty.kind(), "validation");
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_row_whose_inputs_do_not_fit_fails_alone_and_a_bad_metric_fails_before_any_row() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let system = start(1, &trace).await;
    let session = system.open_session(None).await.unwrap();
    let err = session
        .create_checked(
            "p",
            ProgramSpec::python(FACTORY),
            Some("dspex_test_programs:NOT_CALLABLE"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "validation", "{err}");
    assert!(err.to_string().contains("not a callable"), "{err}");
    assert!(trace_calls(&trace).is_empty(), "no LM call was made");
    session
        .create_checked("p", ProgramSpec::python(FACTORY), None)
        .await
        .unwrap();
    let mut devset = rows(3);
    devset[1].remove("question");
    let report = session
        .program("p")
        .await
        .unwrap()
        .evaluate(devset, "dspex_test_programs:mentions_topic", 2)
        .await
        .unwrap();
    assert_eq!(report.failed, 1);
    let err = report.rows[1].result.as_ref().unwrap_err();
    assert_eq!(err.kind(), "validation");
    assert!(err.to_string().contains("question"), "{err}");
    assert!(report.rows[0].result.is_ok() && report.rows[2].result.is_ok());
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn optimize_forwards_progress_while_it_runs_and_its_state_puts_demos_in_every_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    // The metric holds the optimizer until `go` exists.
    let go = dir.path().join("go");
    let mut config = config(1, &trace);
    config
        .python
        .env
        .insert("DSPEX_TEST_GO".into(), go.to_string_lossy().into_owned());
    init_logs();
    let system = System::builder(config).start().await.unwrap();
    let session = system.open_session(None).await.unwrap();
    session
        .create("student", ProgramSpec::python(FACTORY))
        .await
        .unwrap();
    let program = session.program("student").await.unwrap();
    let train = rows(9);
    let trainset = program.examples(train.clone(), "trainset").unwrap();
    assert_eq!(
        trainset[0].labels,
        obj(json!({"topic": "bees"})),
        "id is not a label"
    );
    let out = dir.path().join("optimized.json");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut request = OptimizeRequest::new(
        Optimizer::BootstrapFewShot,
        trainset,
        "dspex_test_programs:waits_for_go",
        &out,
    );
    request
        .params
        .insert("max_bootstrapped_demos".into(), json!(2));
    // No raw training rows beside the bootstrapped traces: every demo is a trace.
    request.params.insert("max_labeled_demos".into(), json!(0));
    request.progress = Some(tx);
    let run = program.optimize(request);
    tokio::pin!(run);
    // The first event arrives while the optimizer is held in its first metric call: the
    // request cannot have finished, so progress is forwarded as it happens.
    let first = tokio::select! {
        biased;
        Some(event) = rx.recv() => event,
        report = &mut run => panic!("finished before any progress: {report:?}"),
    };
    assert_eq!(first["stage"], "start", "{first}");
    assert!(futures::poll!(&mut run).is_pending());
    std::fs::write(&go, "").unwrap();
    let report = run.await.unwrap();
    let mut stages = vec!["start".to_owned()];
    while let Ok(event) = rx.try_recv() {
        stages.push(event["stage"].as_str().unwrap_or_default().to_owned());
    }
    assert!(stages.iter().any(|s| s == "metric"), "{stages:?}");
    assert_eq!(
        stages.last().map(String::as_str),
        Some("done"),
        "{stages:?}"
    );

    assert_eq!(report.optimizer, Optimizer::BootstrapFewShot);
    assert_eq!(report.state_path, out);
    let bytes = std::fs::read(&out).unwrap();
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(report.digest, digest);
    // Two predictors, two demos each: traces of rows where mentions_topic held.
    assert_eq!(report.demos, 4);
    assert!(report.usage.total().calls > 0);
    let state: Value = serde_json::from_slice(&bytes).unwrap();
    let demo_questions: Vec<String> = state["answer.predict"]["demos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["question"].as_str().unwrap().to_owned())
        .collect();
    assert!(!demo_questions.is_empty(), "{state}");

    // The optimized program: every answer prompt carries the demos.
    session
        .create("optimized", ProgramSpec::python(FACTORY).with_state(&out))
        .await
        .unwrap();
    let optimized = session.program("optimized").await.unwrap();
    let calls_before = trace_calls(&trace).len();
    let inputs = optimized
        .validate(obj(json!({"question": "Where do owls live?"})))
        .unwrap();
    optimized.predict(inputs).await.unwrap();
    let calls = &trace_calls(&trace)[calls_before..];
    assert_eq!(calls.len(), 2, "query, then answer");
    let answer_prompt = prompt_text(&calls[1]);
    for question in &demo_questions {
        assert!(
            answer_prompt.contains(question.as_str()),
            "demo {question:?} not in {answer_prompt}"
        );
    }
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_killed_worker_is_replaced_and_the_rebuilt_program_gives_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    // A state file DSPy saved, with a demo on the query step.
    let state = dir.path().join("state.json");
    reference(json!({
        "mode": "save", "factory": FACTORY, "out": state,
        "demos": {"make_query": [{"question": "Why is the sky blue?", "query": "sky colour physics"}]},
    }));
    let system = start(2, &trace).await;
    let session = system.open_session(Some("survivor")).await.unwrap();
    session
        .create("p", ProgramSpec::python(FACTORY).with_state(&state))
        .await
        .unwrap();
    let program = session.program("p").await.unwrap();
    let run_all = |program: dspex::Program| async move {
        futures::stream::iter(rows(12))
            .map(|row| {
                let program = program.clone();
                async move {
                    let (inputs, _) = program.split_row(row).unwrap();
                    program.predict(inputs).await.unwrap().outputs
                }
            })
            .buffered(4)
            .collect::<Vec<_>>()
            .await
    };
    let first = run_all(program.clone()).await;
    let pool = system.status().await.unwrap().pool.unwrap();
    let warm = pool
        .workers
        .iter()
        .find(|w| w.session.as_deref() == Some("survivor"))
        .and_then(|w| w.pid)
        .unwrap();
    kill(warm, libc::SIGKILL);
    assert!(eventually(Duration::from_secs(10), || !pid_alive(warm)).await);
    let second = run_all(program).await;
    assert_eq!(first, second, "the rebuilt program answers the same");
    // The second run was served by other processes, which rebuilt the program from its
    // definition, state included: their query prompts carry the demo too.
    let calls: Vec<Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let later = &calls[calls.len() - 24..];
    assert!(later.iter().all(|c| c["pid"] != json!(warm)));
    let query_prompts = later
        .iter()
        .filter(|c| !prompt_text(&c["messages"]).contains("[[ ## reasoning ## ]]"))
        .count();
    assert_eq!(query_prompts, 12);
    assert!(later
        .iter()
        .filter(|c| !prompt_text(&c["messages"]).contains("[[ ## reasoning ## ]]"))
        .all(|c| prompt_text(&c["messages"]).contains("sky colour physics")));
    // And it is what DSPy itself gives for the same program and state.
    let expected = reference(json!({
        "mode": "run", "factory": FACTORY, "state": state, "rows": questions(&rows(12)),
    }));
    let got: Vec<Value> = second.into_iter().map(Value::Object).collect();
    assert_eq!(Value::Array(got), expected);
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}
