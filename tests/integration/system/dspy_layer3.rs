//! Layer 3: real Python workers running real DSPy with the offline `dummy` LM, through
//! the managed venv (created on first use under a file lock).

use std::time::Duration;

use crate::common::*;
use dspex::{Config, ModuleKind, Signature, System, SystemHealth};
use serde_json::{json, Map, Value};

async fn start_dspy(size: usize) -> System {
    init_logs();
    let mut config = Config::test();
    config.pool.size = size;
    config.pool.startup_concurrency = size;
    System::builder(config)
        .wait_ready(size)
        .start()
        .await
        .expect("DSPy system starts")
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

async fn submitted(system: &System) -> u64 {
    system
        .status()
        .await
        .unwrap()
        .pool
        .unwrap()
        .totals
        .submitted
}

#[tokio::test]
async fn complete_bridge_system_bridge_system_starts_and_reports_healthy_status() {
    let system = start_dspy(2).await;
    let status = system.status().await.unwrap();
    assert_eq!(status.health, SystemHealth::Healthy);
    let pool = status.pool.unwrap();
    assert_eq!(pool.ready, 2);
    assert!(pool
        .workers
        .iter()
        .all(|w| w.health.as_str() == "ready" && w.pid.is_some_and(pid_alive)));
    // And it really runs DSPy.
    let session = system.open_session(None).await.unwrap();
    let sig: Signature = "question -> answer, confidence: float".parse().unwrap();
    session
        .create_program("qa", &sig, ModuleKind::Predict)
        .await
        .unwrap();
    let out = session
        .execute("qa", obj(json!({"question": "What is DSPy?"})))
        .await
        .unwrap();
    assert!(
        out["answer"].is_string() && !out["answer"].as_str().unwrap().is_empty(),
        "{out:?}"
    );
    assert!(out["confidence"].is_f64(), "{out:?}");
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn program_created_on_one_worker_runs_after_that_worker_is_killed_with_identical_outputs() {
    let system = start_dspy(2).await;
    let session = system.open_session(Some("survivor")).await.unwrap();
    let sig: Signature =
        "input: str, context: list[str] -> result: str, reasoning: list[str], confidence: float"
            .parse()
            .unwrap();
    let cot = session
        .create_program("p", &sig, ModuleKind::ChainOfThought)
        .await
        .unwrap_err();
    assert_eq!(
        cot.kind(),
        "validation",
        "CoT's own `reasoning` clashes: {cot}"
    );
    session
        .create_program("p", &sig, ModuleKind::Predict)
        .await
        .unwrap();
    let inputs = obj(json!({"input": "x", "context": ["a", "b"]}));
    let first = session.execute("p", inputs.clone()).await.unwrap();
    assert!(
        first["reasoning"].is_array() && first["confidence"].is_f64(),
        "{first:?}"
    );
    assert!(first["result"].is_string(), "{first:?}");
    // Kill the worker that built and ran it (the session's affine worker).
    let pool = system.status().await.unwrap().pool.unwrap();
    let warm = pool
        .workers
        .iter()
        .find(|w| w.session.as_deref() == Some("survivor"))
        .unwrap();
    let victim = warm.pid.unwrap();
    kill(victim, libc::SIGKILL);
    assert!(eventually(Duration::from_secs(5), || !pid_alive(victim)).await);
    // The definition lives in the registry: another worker rebuilds and runs it, and the
    // dummy LM answers identically on a different process.
    let second = session.execute("p", inputs).await.unwrap();
    assert_eq!(first, second);
    let pool = system.status().await.unwrap().pool.unwrap();
    let ran_on = pool
        .workers
        .iter()
        .find(|w| w.session.as_deref() == Some("survivor"))
        .unwrap();
    assert_ne!(ran_on.pid, Some(victim));
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn session_isolation_session_b_cannot_list_execute_or_delete_session_a_programs() {
    let system = start_dspy(1).await;
    let a = system.open_session(Some("A")).await.unwrap();
    let b = system.open_session(Some("B")).await.unwrap();
    let sig: Signature = "question -> answer".parse().unwrap();
    a.create_program("secret", &sig, ModuleKind::Predict)
        .await
        .unwrap();
    assert_eq!(a.list_programs().await.unwrap(), ["secret"]);
    assert!(b.list_programs().await.unwrap().is_empty());
    let err = b
        .execute("secret", obj(json!({"question": "q"})))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "program_not_found");
    assert_eq!(
        b.delete_program("secret").await.unwrap_err().kind(),
        "program_not_found"
    );
    // Python's own scoping agrees: B's scope on the worker is empty too.
    let listed = system
        .execute(dspex::Call::new("list_programs", json!({})).session("B"))
        .await
        .unwrap();
    assert_eq!(listed["programs"], json!([]));
    // Ending A drops its programs.
    a.end().await.unwrap();
    let again = system.open_session(Some("A")).await.unwrap();
    assert!(again.list_programs().await.unwrap().is_empty());
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn validation_errors_are_typed_and_nothing_reaches_a_worker() {
    let system = start_dspy(1).await;
    let session = system.open_session(None).await.unwrap();
    let sig: Signature = "question: str, k: int -> answer".parse().unwrap();
    session
        .create_program("v", &sig, ModuleKind::Predict)
        .await
        .unwrap();
    let before = submitted(&system).await;

    let missing = session
        .execute("v", obj(json!({"question": "q"})))
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), "validation");
    assert!(missing.to_string().contains('k'), "{missing}");
    let wrong = session
        .execute("v", obj(json!({"question": "q", "k": "three"})))
        .await
        .unwrap_err();
    assert_eq!(wrong.kind(), "validation");
    assert!(wrong.to_string().contains('k'), "{wrong}");
    let malformed = "question: -> answer".parse::<Signature>().unwrap_err();
    assert_eq!(dspex::Error::from(malformed).kind(), "signature");
    let module = "tree_of_thought".parse::<ModuleKind>().unwrap_err();
    assert_eq!(module.kind(), "validation");
    assert!(module.to_string().contains("tree_of_thought"));
    let dup = session
        .create_program("v", &sig, ModuleKind::Predict)
        .await
        .unwrap_err();
    assert_eq!(dup.kind(), "validation");
    assert!(dup.to_string().contains("already exists"), "{dup}");

    assert_eq!(
        submitted(&system).await,
        before,
        "no request reached the pool"
    );
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_real_lm_without_its_key_fails_start_up_naming_the_variable() {
    init_logs();
    let mut config = Config::test();
    config.lm.model = "openai/gpt-4o-mini".into();
    config.lm.api_key_env = Some("DSPEX_TEST_KEY_THAT_IS_NOT_SET".into());
    // Workers build their LM before they answer the handshake: a missing key stops the
    // start, before any row is read, instead of failing every row.
    let err = System::builder(config).start().await.unwrap_err();
    assert_eq!(err.kind(), "environment", "{err}");
    assert!(
        err.to_string().contains("DSPEX_TEST_KEY_THAT_IS_NOT_SET"),
        "{err}"
    );
    assert!(!err.to_string().contains("python.handlers"), "{err}");
}

#[tokio::test]
async fn chain_of_thought_runs_real_dspy_and_returns_its_reasoning() {
    let system = start_dspy(1).await;
    let session = system.open_session(None).await.unwrap();
    let sig: Signature =
        "question -> answer: str, score: int, tags: list[str], verdict: Literal[\"yes\", \"no\"]"
            .parse()
            .unwrap();
    session
        .create_program("cot", &sig, ModuleKind::ChainOfThought)
        .await
        .unwrap();
    let out = session
        .execute("cot", obj(json!({"question": "Is water wet?"})))
        .await
        .unwrap();
    assert!(out["reasoning"].is_string(), "{out:?}");
    assert!(out["score"].is_i64(), "{out:?}");
    assert!(out["tags"].is_array(), "{out:?}");
    assert!(
        ["yes", "no"].contains(&out["verdict"].as_str().unwrap()),
        "{out:?}"
    );
    let info = session.program_info("cot").await.unwrap();
    assert_eq!(info.module, ModuleKind::ChainOfThought);
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}
