//! The adapter factory (seed: "Factory creates correct adapters for test layers"):
//! explicit choice, else `DSPEX_TEST_LAYER`, else configuration; and `create` really
//! builds adapters of the resolved kinds, the layer-3 ones on real Python through the
//! managed venv.

use std::sync::Arc;
use std::time::Duration;

use dspex::testing::{AdapterFactory, AdapterKind, TestLayer, TEST_LAYER_ENV};
use dspex::{Config, Error, ModuleKind, Signature, System};
use dspex_actors::testing::InMemoryLauncher;
use serde_json::json;

fn config(size: usize) -> Config {
    let mut config = Config::test();
    config.pool.size = size;
    config.pool.startup_concurrency = size;
    config
}

fn resolve(explicit: Option<AdapterKind>, env: Option<&str>, size: usize) -> AdapterKind {
    AdapterFactory::resolve(explicit, env, &config(size))
        .unwrap_or_else(|e| panic!("resolve({explicit:?}, {env:?}, pool.size {size}): {e}"))
}

#[tokio::test]
async fn factory_pattern_compliance_creates_correct_adapters_for_test_layers() {
    crate::common::init_logs();
    use AdapterKind::*;

    // The layer names.
    for size in [1, 2] {
        assert_eq!(resolve(None, Some("layer_1"), size), Mock);
        assert_eq!(resolve(None, Some("layer_2"), size), BridgeMock);
    }
    assert_eq!(resolve(None, Some("layer_3"), 1), PythonPort);
    assert_eq!(resolve(None, Some("layer_3"), 2), PythonPool);
    assert_eq!(resolve(None, Some("layer_3"), 8), PythonPool);
    // Explicit beats the environment, whatever the pool size.
    for kind in AdapterKind::ALL {
        assert_eq!(resolve(Some(kind), Some("layer_1"), 2), kind);
        assert_eq!(resolve(Some(kind), Some("not a layer"), 1), kind);
        assert_eq!(resolve(Some(kind), None, 1), kind);
    }
    // Neither: the configuration says real Python, port or pool by size.
    assert_eq!(resolve(None, None, 1), PythonPort);
    assert_eq!(resolve(None, None, 3), PythonPool);
    // A bad layer is a configuration error that says what to write.
    let err = AdapterFactory::resolve(None, Some("layer_4"), &config(1)).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    let message = err.to_string();
    for needle in [TEST_LAYER_ENV, "layer_4", "layer_1", "layer_2", "layer_3"] {
        assert!(
            message.contains(needle),
            "`{needle}` missing from: {message}"
        );
    }

    // `create` builds what `resolve` picked, for every layer; the Python ones on the
    // managed venv (`python.executable = "auto"` in Config::test()).
    let qa: Signature = "question -> answer, confidence: float".parse().unwrap();
    // An explicit PythonPort runs one worker even when pool.size asks for more.
    let cases = [
        (None, "layer_1", 1, Mock, 0),
        (None, "layer_2", 2, BridgeMock, 2),
        (Some(PythonPort), "layer_3", 2, PythonPort, 1),
        (None, "layer_3", 2, PythonPool, 2),
    ];
    for (explicit, layer, size, expected, workers) in cases {
        let config = config(size);
        let kind = AdapterFactory::resolve(explicit, Some(layer), &config).unwrap();
        assert_eq!(kind, expected, "{layer} with pool.size {size}");
        let adapter = AdapterFactory::create(kind, &config)
            .await
            .unwrap_or_else(|e| panic!("create({kind}): {e}"));
        assert_eq!(adapter.kind(), expected);
        assert_eq!(adapter.supported_layers(), [expected.layer()], "{kind}");
        assert_eq!(expected.layer().as_str(), layer);
        let caps = adapter.capabilities();
        assert_eq!(
            caps.real_dspy,
            expected.layer() == TestLayer::Layer3,
            "{kind}"
        );
        assert_eq!(
            caps.processes,
            expected.layer() == TestLayer::Layer3,
            "{kind}"
        );
        let health = adapter.health_check().await.unwrap();
        assert_eq!(health.status, "healthy", "{kind}: {health:?}");
        if workers > 0 {
            let pool = &health.details["pool"];
            assert_eq!(pool["ready"], json!(workers), "{kind}: {health:?}");
            assert_eq!(
                pool["workers"].as_array().map(Vec::len),
                Some(workers),
                "{kind}"
            );
        }
        // And it works.
        adapter
            .create_program(Some("factory"), "qa", &qa, ModuleKind::Predict)
            .await
            .unwrap_or_else(|e| panic!("{kind}: create_program: {e}"));
        let inputs = json!({"question": "Which adapter?"})
            .as_object()
            .unwrap()
            .clone();
        let out = adapter
            .execute_program(Some("factory"), "qa", inputs)
            .await
            .unwrap_or_else(|e| panic!("{kind}: execute_program: {e}"));
        assert!(
            out["answer"].is_string() && out["confidence"].is_f64(),
            "{kind}: {out:?}"
        );
        adapter.shutdown().await.unwrap();
        assert_eq!(
            adapter.health_check().await.unwrap().status,
            "stopped",
            "{kind}"
        );
    }
}

#[tokio::test]
async fn python_pool_with_a_pool_size_of_one_is_a_config_error_naming_pool_size() {
    // Refused before anything starts: no Python is involved.
    let err = AdapterFactory::create(AdapterKind::PythonPool, &config(1))
        .await
        .err()
        .expect("a pool of one is refused");
    match &err {
        Error::Config(c) => {
            assert_eq!(c.key.as_deref(), Some("pool.size"), "{err}");
            assert!(c.message.contains("python_port"), "{err}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test]
async fn for_system_picks_port_or_pool_by_size_and_leaves_the_system_running() {
    crate::common::init_logs();
    for (size, kind) in [(1, AdapterKind::PythonPort), (2, AdapterKind::PythonPool)] {
        // Only the binding is under test here, so in-memory workers will do.
        let system = System::builder(config(size))
            .launcher(Arc::new(InMemoryLauncher::new()))
            .wait_ready(size)
            .start()
            .await
            .unwrap();
        let adapter = AdapterFactory::for_system(system.clone());
        assert_eq!(adapter.kind(), kind);
        adapter.shutdown().await.unwrap();
        assert!(
            !system.is_stopped(),
            "the adapter stopped a system it was given"
        );
        assert_eq!(system.status().await.unwrap().health.as_str(), "healthy");
        system.shutdown(Duration::from_secs(1)).await.unwrap();
    }
}
