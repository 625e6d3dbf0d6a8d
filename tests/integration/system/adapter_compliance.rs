//! The adapter compliance suite: one set of checks, written against `&dyn Adapter`, run
//! against all four adapters (seed: "layer_3 adapter behavior compliance").
//!
//! Each adapter gets a module of tests named after the seed's scenarios
//! (`mock::…`, `bridge_mock::…`, `python_port::…`, `python_pool::…`). The Python
//! adapters are cheap wrappers over one shared system each (one worker, and a pool of
//! two), started once per test binary on real DSPy with the `dummy` LM; every test wraps
//! its own adapter around that system and works in sessions of its own, so tests stay
//! isolated while only two sets of Python workers are ever started.

use std::collections::BTreeSet;
use std::time::Duration;

use dspex::testing::{
    fake_outputs, Adapter, AdapterFactory, AdapterKind, BridgeMock, LmSettings, Mock, PythonAdapter,
};
use dspex::{Config, Error, ModuleKind, Signature, System};
use serde_json::{json, Map, Value};
use tokio::sync::OnceCell;

fn obj(value: Value) -> Map<String, Value> {
    value.as_object().expect("an object literal").clone()
}

fn sig(text: &str) -> Signature {
    text.parse().expect("a valid signature")
}

/// The checks. Each names its adapter in every assertion message, and uses only
/// sessions whose ids start with `prefix`, so checks sharing a system never meet.
mod suite {
    use super::*;

    fn label(adapter: &dyn Adapter) -> String {
        adapter.kind().to_string()
    }

    fn session(prefix: &str, name: &str) -> String {
        format!("{prefix}-{name}")
    }

    pub async fn creates_programs_successfully(adapter: &dyn Adapter, prefix: &str) {
        let who = label(adapter);
        let s = session(prefix, "create");
        let qa = sig("question -> answer, confidence: float");
        let info = adapter
            .create_program(Some(&s), "qa", &qa, ModuleKind::Predict)
            .await
            .unwrap_or_else(|e| panic!("[{who}] create_program failed: {e}"));
        assert_eq!(info.program_id, "qa", "[{who}]");
        assert_eq!(info.session_id, s, "[{who}]");
        assert_eq!(info.module, ModuleKind::Predict, "[{who}]");
        assert_eq!(
            info.signature, "question -> answer, confidence: float",
            "[{who}]"
        );
        assert_eq!(
            info.output_schema["properties"]["confidence"]["type"], "number",
            "[{who}]"
        );
        let cot = adapter
            .create_program(Some(&s), "cot", &qa, ModuleKind::ChainOfThought)
            .await
            .unwrap_or_else(|e| panic!("[{who}] chain_of_thought create failed: {e}"));
        assert_eq!(cot.module, ModuleKind::ChainOfThought, "[{who}]");
        // What create reported is what the adapter keeps.
        let stored = adapter.get_program_info(Some(&s), "qa").await.unwrap();
        assert_eq!(
            stored, info,
            "[{who}] get_program_info differs from create's answer"
        );
    }

    pub async fn executes_programs_with_valid_inputs(adapter: &dyn Adapter, prefix: &str) {
        let who = label(adapter);
        let s = session(prefix, "execute");
        let qa = sig("question -> answer, confidence: float");
        adapter
            .create_program(Some(&s), "qa", &qa, ModuleKind::Predict)
            .await
            .unwrap();
        let out = adapter
            .execute_program(Some(&s), "qa", obj(json!({"question": "What is DSPy?"})))
            .await
            .unwrap_or_else(|e| panic!("[{who}] execute_program failed: {e}"));
        let answer = out["answer"]
            .as_str()
            .unwrap_or_else(|| panic!("[{who}] answer is not a string: {out:?}"));
        assert!(!answer.is_empty(), "[{who}] empty answer");
        assert!(
            out["confidence"].as_f64().is_some_and(f64::is_finite) && out["confidence"].is_f64(),
            "[{who}] confidence is not a float: {out:?}"
        );
        let keys: BTreeSet<&str> = out.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["answer", "confidence"]),
            "[{who}] {out:?}"
        );

        adapter
            .create_program(Some(&s), "cot", &qa, ModuleKind::ChainOfThought)
            .await
            .unwrap();
        let out = adapter
            .execute_program(Some(&s), "cot", obj(json!({"question": "Why?"})))
            .await
            .unwrap_or_else(|e| panic!("[{who}] chain_of_thought execute failed: {e}"));
        assert!(
            out["answer"].is_string() && out["confidence"].is_f64(),
            "[{who}] {out:?}"
        );
        assert!(
            out["reasoning"].is_string(),
            "[{who}] chain_of_thought gives its reasoning: {out:?}"
        );
    }

    pub async fn handles_complex_signatures(adapter: &dyn Adapter, prefix: &str) {
        let who = label(adapter);
        let s = session(prefix, "complex");
        let complex = sig(
            "input: str, context: list[str] -> result: str, reasoning: list[str], confidence: float",
        );
        let info = adapter
            .create_program(Some(&s), "complex", &complex, ModuleKind::Predict)
            .await
            .unwrap_or_else(|e| panic!("[{who}] create failed: {e}"));
        assert_eq!(
            info.input_schema["properties"]["context"]["type"], "array",
            "[{who}]"
        );
        assert_eq!(
            info.input_schema["required"],
            json!(["input", "context"]),
            "[{who}]"
        );
        let out = adapter
            .execute_program(
                Some(&s),
                "complex",
                obj(json!({"input": "Summarise", "context": ["DSPy compiles prompts.", "It is declarative."]})),
            )
            .await
            .unwrap_or_else(|e| panic!("[{who}] execute failed: {e}"));
        assert!(out["result"].is_string(), "[{who}] result: {out:?}");
        let reasoning = out["reasoning"]
            .as_array()
            .unwrap_or_else(|| panic!("[{who}] reasoning is not a list: {out:?}"));
        assert!(
            reasoning.iter().all(Value::is_string),
            "[{who}] reasoning items: {out:?}"
        );
        assert!(out["confidence"].is_f64(), "[{who}] confidence: {out:?}");
        assert_eq!(out.len(), 3, "[{who}] only declared outputs: {out:?}");
    }

    pub async fn lists_programs_correctly(adapter: &dyn Adapter, prefix: &str) {
        let who = label(adapter);
        let s = session(prefix, "list");
        let qa = sig("question -> answer");
        assert!(
            adapter.list_programs(Some(&s)).await.unwrap().is_empty(),
            "[{who}] fresh session"
        );
        for id in ["p3", "p1", "p2"] {
            adapter
                .create_program(Some(&s), id, &qa, ModuleKind::Predict)
                .await
                .unwrap_or_else(|e| panic!("[{who}] create {id} failed: {e}"));
        }
        assert_eq!(
            adapter.list_programs(Some(&s)).await.unwrap(),
            ["p1", "p2", "p3"],
            "[{who}]"
        );
        adapter.delete_program(Some(&s), "p2").await.unwrap();
        assert_eq!(
            adapter.list_programs(Some(&s)).await.unwrap(),
            ["p1", "p3"],
            "[{who}] after delete"
        );
        let err = adapter
            .execute_program(Some(&s), "p2", obj(json!({"question": "?"})))
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            "program_not_found",
            "[{who}] deleted program still runs: {err}"
        );
    }

    pub async fn returns_error_for_nonexistent_program(adapter: &dyn Adapter, prefix: &str) {
        let who = label(adapter);
        let s = session(prefix, "missing");
        let inputs = obj(json!({"question": "?"}));
        let err = adapter
            .execute_program(Some(&s), "ghost", inputs)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::ProgramNotFound { program_id, session } if program_id == "ghost" && *session == s),
            "[{who}] execute: {err:?}"
        );
        assert!(
            err.to_string().contains("ghost"),
            "[{who}] message names the program: {err}"
        );
        let err = adapter
            .get_program_info(Some(&s), "ghost")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "program_not_found", "[{who}] info: {err}");
        let err = adapter.delete_program(Some(&s), "ghost").await.unwrap_err();
        assert_eq!(err.kind(), "program_not_found", "[{who}] delete: {err}");
    }

    pub async fn duplicate_program_id_is_a_clear_error(adapter: &dyn Adapter, prefix: &str) {
        let who = label(adapter);
        let s = session(prefix, "dup");
        let first = sig("question -> answer");
        adapter
            .create_program(Some(&s), "dup", &first, ModuleKind::Predict)
            .await
            .unwrap();
        let err = adapter
            .create_program(
                Some(&s),
                "dup",
                &sig("text -> label"),
                ModuleKind::ChainOfThought,
            )
            .await
            .unwrap_err();
        match &err {
            Error::Validation(v) => {
                assert_eq!(v.field, "program_id", "[{who}] {err}");
                assert!(
                    v.message.contains("already exists") && v.message.contains("dup"),
                    "[{who}] {err}"
                );
            }
            other => panic!("[{who}] expected a validation error, got {other:?}"),
        }
        // Not a crash: the first program is intact and the adapter still serves.
        let info = adapter.get_program_info(Some(&s), "dup").await.unwrap();
        assert_eq!(
            info.signature, "question -> answer",
            "[{who}] the first definition is kept"
        );
        assert_eq!(
            adapter.list_programs(Some(&s)).await.unwrap(),
            ["dup"],
            "[{who}]"
        );
        let out = adapter
            .execute_program(Some(&s), "dup", obj(json!({"question": "still there?"})))
            .await
            .unwrap_or_else(|e| panic!("[{who}] the first program no longer runs: {e}"));
        assert!(out["answer"].is_string(), "[{who}] {out:?}");
        assert!(
            adapter.health_check().await.unwrap().is_serving(),
            "[{who}]"
        );
    }

    pub async fn session_b_cannot_list_execute_or_delete_session_a_programs(
        adapter: &dyn Adapter,
        prefix: &str,
    ) {
        let who = label(adapter);
        let (a, b) = (session(prefix, "A"), session(prefix, "B"));
        let qa = sig("question -> answer");
        adapter
            .create_program(Some(&a), "secret", &qa, ModuleKind::Predict)
            .await
            .unwrap();
        assert!(
            adapter.list_programs(Some(&b)).await.unwrap().is_empty(),
            "[{who}] B lists A's programs"
        );
        let inputs = obj(json!({"question": "?"}));
        let err = adapter
            .execute_program(Some(&b), "secret", inputs.clone())
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            "program_not_found",
            "[{who}] B executes A's program: {err}"
        );
        let err = adapter
            .get_program_info(Some(&b), "secret")
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            "program_not_found",
            "[{who}] B reads A's program: {err}"
        );
        let err = adapter
            .delete_program(Some(&b), "secret")
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            "program_not_found",
            "[{who}] B deletes A's program: {err}"
        );
        // The same id in B is B's own program and leaves A's alone.
        adapter
            .create_program(
                Some(&b),
                "secret",
                &sig("text -> label"),
                ModuleKind::Predict,
            )
            .await
            .unwrap_or_else(|e| panic!("[{who}] B cannot reuse the id: {e}"));
        let mine = adapter.get_program_info(Some(&a), "secret").await.unwrap();
        assert_eq!(
            mine.signature, "question -> answer",
            "[{who}] A's program changed"
        );
        assert_eq!(
            adapter.list_programs(Some(&a)).await.unwrap(),
            ["secret"],
            "[{who}]"
        );
        let out = adapter
            .execute_program(Some(&a), "secret", inputs)
            .await
            .unwrap();
        assert!(out["answer"].is_string(), "[{who}] {out:?}");
        // And the anonymous session is a scope of its own too.
        assert!(
            !adapter
                .list_programs(None)
                .await
                .unwrap()
                .contains(&"secret".to_owned()),
            "[{who}] the anonymous session sees a named session's program"
        );
    }

    pub async fn invalid_inputs_are_validation_errors(adapter: &dyn Adapter, prefix: &str) {
        let who = label(adapter);
        let s = session(prefix, "inputs");
        let typed = sig("question: str, n: int -> answer");
        adapter
            .create_program(Some(&s), "typed", &typed, ModuleKind::Predict)
            .await
            .unwrap();
        let cases = [
            (json!({"n": 1}), "question", "missing input"),
            (json!({"question": "?", "n": "three"}), "n", "wrong type"),
            (json!({"question": 7, "n": 1}), "question", "wrong type"),
            (
                json!({"question": "?", "n": 1, "extra": true}),
                "extra",
                "undeclared input",
            ),
        ];
        for (inputs, field, what) in cases {
            let err = adapter
                .execute_program(Some(&s), "typed", obj(inputs.clone()))
                .await
                .unwrap_err();
            match &err {
                Error::Validation(v) => {
                    assert_eq!(v.field, field, "[{who}] {what} {inputs}: {err}")
                }
                other => panic!("[{who}] {what} {inputs}: expected validation, got {other:?}"),
            }
        }
        let err = adapter
            .create_program(Some(&s), "  ", &typed, ModuleKind::Predict)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "validation", "[{who}] empty program id: {err}");
        // Valid inputs still work after the rejected ones.
        adapter
            .execute_program(Some(&s), "typed", obj(json!({"question": "?", "n": 3})))
            .await
            .unwrap_or_else(|e| panic!("[{who}] valid inputs rejected: {e}"));
    }

    pub async fn anonymous_session_is_the_adapters_own(adapter: &dyn Adapter, prefix: &str) {
        let who = label(adapter);
        let qa = sig("question -> answer");
        let info = adapter
            .create_program(None, "anon", &qa, ModuleKind::Predict)
            .await
            .unwrap_or_else(|e| panic!("[{who}] create in the anonymous session: {e}"));
        assert!(
            !info.session_id.is_empty(),
            "[{who}] the anonymous session has an id"
        );
        assert_eq!(
            adapter.list_programs(None).await.unwrap(),
            ["anon"],
            "[{who}]"
        );
        let out = adapter
            .execute_program(None, "anon", obj(json!({"question": "?"})))
            .await
            .unwrap();
        assert!(out["answer"].is_string(), "[{who}] {out:?}");
        assert!(
            adapter
                .list_programs(Some(&session(prefix, "named")))
                .await
                .unwrap()
                .is_empty(),
            "[{who}]"
        );
        // The anonymous session is one real session: it is addressable by its id.
        assert_eq!(
            adapter.list_programs(Some(&info.session_id)).await.unwrap(),
            ["anon"],
            "[{who}]"
        );
    }

    pub async fn configure_lm_applies_to_later_executions(adapter: &dyn Adapter, prefix: &str) {
        let who = label(adapter);
        let s = session(prefix, "lm");
        adapter
            .create_program(
                Some(&s),
                "qa",
                &sig("question -> answer"),
                ModuleKind::Predict,
            )
            .await
            .unwrap();
        let inputs = obj(json!({"question": "?"}));
        let mut bad = dspex::Config::default().lm;
        bad.max_tokens = 0;
        let err = adapter.configure_lm(bad).await.unwrap_err();
        assert_eq!(err.kind(), "validation", "[{who}] {err}");
        // A real model whose key variable is unset: a real LM call must fail fast with
        // `lm`; adapters that call no LM record the setting and keep answering.
        let unreachable = LmSettings {
            model: "openai/gpt-4o-mini".into(),
            api_key_env: Some("DSPEX_ADAPTER_TEST_UNSET_KEY".into()),
            max_tokens: 16,
            ..dspex::Config::default().lm
        };
        adapter.configure_lm(unreachable).await.unwrap();
        let result = adapter
            .execute_program(Some(&s), "qa", inputs.clone())
            .await;
        if adapter.capabilities().lm_calls {
            let err = result.expect_err("a model without its key cannot answer");
            assert_eq!(err.kind(), "lm", "[{who}] {err}");
            assert!(
                err.to_string().contains("DSPEX_ADAPTER_TEST_UNSET_KEY"),
                "[{who}] {err}"
            );
        } else {
            assert!(result.is_ok(), "[{who}] {result:?}");
        }
        adapter
            .configure_lm(dspex::Config::default().lm)
            .await
            .unwrap();
        let out = adapter.execute_program(Some(&s), "qa", inputs).await;
        assert!(
            out.is_ok_and(|o| o["answer"].is_string()),
            "[{who}] dummy after a failing model"
        );
    }

    pub async fn reports_health_stats_and_its_layer(adapter: &dyn Adapter, _prefix: &str) {
        let who = label(adapter);
        let kind = adapter.kind();
        assert!(
            adapter.supported_layers().contains(&kind.layer()),
            "[{who}]"
        );
        let caps = adapter.capabilities();
        assert!(caps.sessions, "[{who}]");
        assert_eq!(
            caps.real_dspy,
            kind.layer() == dspex::testing::TestLayer::Layer3,
            "[{who}]"
        );
        assert_eq!(caps.actors, kind != AdapterKind::Mock, "[{who}]");
        let health = adapter.health_check().await.unwrap();
        assert_eq!(health.status, "healthy", "[{who}] {health:?}");
        let stats = adapter.stats().await.unwrap();
        assert_eq!(stats["adapter"], kind.as_str(), "[{who}] {stats}");
    }
}

/// One shared Python system per pool size, started on first use in this binary. The
/// `System` handle works from any runtime, so tests in different runtimes share it; the
/// workers die with this process (`PR_SET_PDEATHSIG`).
async fn shared_python(cell: &'static OnceCell<System>, size: usize) -> System {
    cell.get_or_init(|| async move {
        crate::common::init_logs();
        let mut config = Config::test();
        config.pool.size = size;
        config.pool.startup_concurrency = size;
        // Tests queue on few workers while each worker imports DSPy on first use; a
        // short checkout wait would fail them on a busy machine for no real fault.
        config.pool.checkout_timeout = Duration::from_secs(180);
        config.pool.request_timeout = Duration::from_secs(180);
        System::builder(config)
            .wait_ready(size)
            .start()
            .await
            .expect("a real Python system starts (managed venv, python.executable = auto)")
    })
    .await
    .clone()
}

static PORT_SYSTEM: OnceCell<System> = OnceCell::const_new();
static POOL_SYSTEM: OnceCell<System> = OnceCell::const_new();

async fn mock() -> Box<dyn Adapter> {
    Box::new(Mock::new())
}

async fn bridge_mock() -> Box<dyn Adapter> {
    crate::common::init_logs();
    Box::new(
        BridgeMock::start(&Config::test())
            .await
            .expect("BridgeMock starts"),
    )
}

async fn python_port() -> Box<dyn Adapter> {
    AdapterFactory::for_system(shared_python(&PORT_SYSTEM, 1).await)
}

async fn python_pool() -> Box<dyn Adapter> {
    AdapterFactory::for_system(shared_python(&POOL_SYSTEM, 2).await)
}

/// A module of tests running every suite check against the adapter `$make()` builds.
macro_rules! compliance_tests {
    ($make:ident, $kind:expr) => {
        mod $make {
            use super::*;

            compliance_tests!(@one $make, $kind,
                layer_3_adapter_behavior_compliance_creates_programs_successfully,
                creates_programs_successfully);
            compliance_tests!(@one $make, $kind,
                layer_3_adapter_behavior_compliance_executes_programs_with_valid_inputs,
                executes_programs_with_valid_inputs);
            compliance_tests!(@one $make, $kind,
                layer_3_adapter_behavior_compliance_handles_complex_signatures,
                handles_complex_signatures);
            compliance_tests!(@one $make, $kind,
                layer_3_adapter_behavior_compliance_lists_programs_correctly,
                lists_programs_correctly);
            compliance_tests!(@one $make, $kind,
                layer_3_adapter_behavior_compliance_returns_error_for_nonexistent_program,
                returns_error_for_nonexistent_program);
            compliance_tests!(@one $make, $kind,
                layer_3_adapter_behavior_compliance_duplicate_program_id_is_a_clear_error,
                duplicate_program_id_is_a_clear_error);
            compliance_tests!(@one $make, $kind,
                session_isolation_session_b_cannot_list_execute_or_delete_session_a_programs,
                session_b_cannot_list_execute_or_delete_session_a_programs);
            compliance_tests!(@one $make, $kind,
                validation_missing_or_mistyped_inputs_are_validation_errors,
                invalid_inputs_are_validation_errors);
            compliance_tests!(@one $make, $kind,
                anonymous_session_is_the_adapters_own,
                anonymous_session_is_the_adapters_own);
            compliance_tests!(@one $make, $kind,
                configure_lm_applies_to_later_executions,
                configure_lm_applies_to_later_executions);
            compliance_tests!(@one $make, $kind,
                reports_health_stats_and_its_layer,
                reports_health_stats_and_its_layer);
        }
    };
    (@one $make:ident, $kind:expr, $name:ident, $check:ident) => {
        #[tokio::test]
        async fn $name() {
            let adapter = super::$make().await;
            assert_eq!(adapter.kind(), $kind);
            let prefix = concat!(stringify!($make), "-", stringify!($name));
            suite::$check(&*adapter, prefix).await;
            adapter.shutdown().await.expect("the adapter shuts down");
        }
    };
}

compliance_tests!(mock, AdapterKind::Mock);
compliance_tests!(bridge_mock, AdapterKind::BridgeMock);
compliance_tests!(python_port, AdapterKind::PythonPort);
compliance_tests!(python_pool, AdapterKind::PythonPool);

#[tokio::test]
async fn mock_and_bridge_mock_give_identical_outputs_for_the_same_program_and_inputs() {
    let mock = Mock::new();
    let bridge = BridgeMock::start(&Config::test()).await.unwrap();
    let complex = sig(
        "input: str, context: list[str] -> result: str, tags: dict[str, int], \
                       label: Literal['yes', 'no'], maybe: Optional[float]",
    );
    let inputs = obj(json!({"input": "x", "context": ["a", "b"]}));
    for module in ModuleKind::ALL {
        let id = format!("p-{module}");
        mock.create_program(Some("s"), &id, &complex, module)
            .await
            .unwrap();
        bridge
            .create_program(Some("s"), &id, &complex, module)
            .await
            .unwrap();
        let from_mock = mock
            .execute_program(Some("s"), &id, inputs.clone())
            .await
            .unwrap();
        let from_bridge = bridge
            .execute_program(Some("s"), &id, inputs.clone())
            .await
            .unwrap();
        assert_eq!(from_mock, from_bridge, "{module}");
        let mut generated = fake_outputs(&id, &complex, &inputs);
        if module == ModuleKind::ChainOfThought {
            assert!(from_mock["reasoning"].is_string());
            generated.insert("reasoning".into(), from_mock["reasoning"].clone());
        }
        assert_eq!(from_mock, generated, "{module}");
    }
    bridge.shutdown().await.unwrap();
}

#[tokio::test]
async fn bridge_mock_rejects_invalid_inputs_before_any_request_reaches_a_worker() {
    let adapter = BridgeMock::start(&Config::test()).await.unwrap();
    adapter
        .create_program(
            Some("s"),
            "typed",
            &sig("question: str, n: int -> answer"),
            ModuleKind::Predict,
        )
        .await
        .unwrap();
    let executions = || {
        adapter
            .launcher()
            .requests()
            .iter()
            .filter(|(_, r)| r.command == "execute_program")
            .count()
    };
    for inputs in [json!({"n": 1}), json!({"question": "?", "n": 1.5})] {
        let err = adapter
            .execute_program(Some("s"), "typed", obj(inputs))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "validation", "{err}");
    }
    assert_eq!(executions(), 0, "an invalid execution reached a worker");
    adapter
        .execute_program(Some("s"), "typed", obj(json!({"question": "?", "n": 1})))
        .await
        .unwrap();
    assert_eq!(executions(), 1);
    // The request carried the definition and the session, as the real bridge needs.
    let (_, request) = adapter
        .launcher()
        .requests()
        .into_iter()
        .find(|(_, r)| r.command == "execute_program")
        .unwrap();
    assert_eq!(request.args["session_id"], "s");
    assert_eq!(request.args["definition"]["program_id"], "typed");
    adapter.shutdown().await.unwrap();
}

#[tokio::test]
async fn bridge_mock_shutdown_stops_its_own_system_and_refuses_later_calls() {
    let adapter = BridgeMock::start(&Config::test()).await.unwrap();
    assert_eq!(adapter.launcher().launches(), 1);
    adapter.shutdown().await.unwrap();
    assert!(adapter.system().is_stopped());
    assert_eq!(adapter.health_check().await.unwrap().status, "stopped");
    let err = adapter.list_programs(None).await.unwrap_err();
    assert_eq!(err.kind(), "shutting_down", "{err}");
    adapter.shutdown().await.unwrap();
}

#[tokio::test]
async fn python_adapter_over_a_given_system_leaves_it_running_on_shutdown() {
    let system = shared_python(&PORT_SYSTEM, 1).await;
    let adapter = PythonAdapter::new(system.clone());
    adapter
        .create_program(None, "qa", &sig("question -> answer"), ModuleKind::Predict)
        .await
        .unwrap();
    let anonymous = adapter
        .get_program_info(None, "qa")
        .await
        .unwrap()
        .session_id;
    adapter.shutdown().await.unwrap();
    assert!(!system.is_stopped());
    assert_eq!(system.status().await.unwrap().health.as_str(), "healthy");
    // Its anonymous session was ended, so nothing of it is left in the shared system.
    assert_eq!(
        system.session(&anonymous).await.unwrap_err().kind(),
        "session_not_found"
    );
    let err = adapter.list_programs(None).await.unwrap_err();
    assert_eq!(err.kind(), "shutting_down", "{err}");
}
